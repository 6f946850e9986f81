"""``steadylm human export|import|judge``: a blinded rating page, joining its ratings, an LLM judge."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import SteadyError
from ..fsutil import to_json
from .options import Parser, add_bootstrap_arg, add_endpoint_args, add_output_args, endpoint_options


def _add_selection_args(p: argparse.ArgumentParser) -> None:
    """Which outputs of each eval generation folder are rated (by people or by the judge)."""
    p.add_argument("--per-prompt", type=int, default=1, help="outputs per prompt and folder (default: 1)")
    p.add_argument("--max-prompts", type=int, default=None, help="only the first N prompts of each folder (default: all)")


def add_human(sub: Any) -> None:
    hu = sub.add_parser("human", help="human ratings: a blinded rating page, joining the ratings, an LLM judge")
    husub = hu.add_subparsers(dest="human_command", metavar="HUMAN", parser_class=Parser)
    husub.required = True
    ex = husub.add_parser("export", help="write a static, offline rating page (blinded, shuffled) and its key file")
    ex.add_argument("results", nargs="+", metavar="RESULTS_DIR", help="eval generation folders (one per model or setting)")
    _add_selection_args(ex)
    ex.add_argument("--seed", type=int, default=0, help="shuffling seed (default: 0)")
    ex.add_argument("--title", default=None, help="page title")
    add_output_args(ex, "the page to write (default: ratings.html; the key goes beside it as ratings.key.json)",
                    default="ratings.html", short=True)
    ex.set_defaults(func=cmd_export)

    im = husub.add_parser("import", help="join ratings files: means with CIs per model/setting, Krippendorff's alpha")
    im.add_argument("files", nargs="+", metavar="RATINGS.json", help="files saved from the rating page")
    im.add_argument("--key", required=True, metavar="KEY.json", help="the .key.json written beside the rating page")
    add_bootstrap_arg(im)
    add_output_args(im, "where to write the joined ratings (default: human.json)", default="human.json", short=True,
                    json="print human.json on stdout too")
    im.set_defaults(func=cmd_import)

    jd = husub.add_parser("judge", help="the same rubric through an LLM judge on an OpenAI-compatible endpoint")
    jd.add_argument("results", nargs="+", metavar="RESULTS_DIR", help="eval generation folders")
    _add_selection_args(jd)
    add_bootstrap_arg(jd)
    g = jd.add_argument_group("judge")
    g.add_argument("--judge", required=True, metavar="openai:URL#MODEL", help="the judge endpoint and model")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens the judge may answer with (default: 64)")
    add_endpoint_args(jd, concurrency=4)
    add_output_args(jd, "where to write the ratings (default: human.json)", default="human.json", short=True)
    jd.set_defaults(func=cmd_judge)


def cmd_export(args: argparse.Namespace) -> int:
    from ..report import human

    res = human.export_ratings(args.results, args.out, per_prompt=args.per_prompt, seed=args.seed,
                               max_prompts=args.max_prompts, title=args.title)
    print(f"{res['html']}: {res['items']} outputs from {len(res['systems'])} model(s)/setting(s), blinded and "
          f"shuffled (export {res['export_id']}); key: {res['key']}")
    return 0


def _check_bootstrap(n: int) -> None:
    if n < 100:
        raise SteadyError(f"--bootstrap must be >= 100 resamples, got {n}")


def cmd_import(args: argparse.Namespace) -> int:
    from ..report import human

    _check_bootstrap(args.bootstrap)
    doc = human.import_ratings(args.files, args.key, out=args.out, bootstrap=args.bootstrap)
    if args.json:
        print(to_json(doc))
        return 0
    _print_ratings(doc, args.out)
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from ..evaluate import judge

    _check_bootstrap(args.bootstrap)
    doc = judge.judge_outputs(args.results, args.judge, out=args.out, per_prompt=args.per_prompt,
                              max_prompts=args.max_prompts, max_new_tokens=args.max_new_tokens, bootstrap=args.bootstrap,
                              backend_options=endpoint_options(args))
    _print_ratings(doc, args.out)
    return 0


def _print_ratings(doc: dict[str, Any], out: str) -> None:
    """Means per system, the agreement, and (for a judge) its missing ratings, then the file written."""
    from ..report.human import CRITERIA

    for name, s in doc["systems"].items():
        vals = "  ".join(f"{c} {s[c]['mean']:.2f}" if s[c]["mean"] is not None else f"{c} -"
                         for c in CRITERIA + ("overall",))
        print(f"{name}: {vals}  ({s['items']} items)")
    ag = doc["agreement"]
    if ag.get("measured") is False:
        print(f"agreement: not measured ({ag['reason']})")
    else:
        print("Krippendorff's alpha (ordinal): " + "  ".join(
            f"{c} {a['ordinal']:.3f}" if a.get("ordinal") is not None else f"{c} -" for c, a in ag.items()))
    if doc["kind"] == "llm-judge":
        print(f"rater: {doc['raters'][0]['name']} (LLM judge, not human); missing (unparsable) ratings: "
              + ", ".join(f"{c} {n}" for c, n in doc["judge"]["missing"].items()))
    print(out)
