"""The ``steadylm`` command: parse arguments, call the library, map `SteadyError` to exit 2.

Thin on purpose: every command is a library call (`steadylm.train.loop.train`,
`steadylm.evaluate.perplexity.evaluate_perplexity`, `steadylm.demo.run_demo`). Heavy imports
(torch, transformers) happen inside the commands, so ``steadylm --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
import typing
from typing import Any, Sequence

from . import __version__
from .config import Option, TrainConfig, field_types, help_of, load_config_file, merge, train_options
from .errors import ConfigError, SteadyError
from .fsutil import to_json
from .runtime import check_threads, launch_ranks


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``steadylm: error: ...`` and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"steadylm: error: {self.prog.removeprefix('steadylm').strip() + ': ' if self.prog != 'steadylm' else ''}{message}\n")
        sys.exit(2)


def _timeout(text: str) -> float:
    """``--timeout``: checked as the endpoint backend checks it, when the flag is parsed, so every
    command refuses ``inf``, ``nan`` or 0 even where no endpoint is opened."""
    from .evaluate.backends.openai import check_timeout

    try:
        return check_timeout(text)
    except SteadyError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--timeout ")) from None  # argparse names the flag


def _threads(text: str) -> int:
    """The type of every ``--threads``: an integer from 1 to this machine's CPU count (`check_threads`)."""
    try:
        return check_threads(int(text) if text.strip().lstrip("+-").isdigit() else text, what="")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None  # argparse names the flag


#: flags whose text is checked as it is parsed, as every command's flag of that name is
_ARG_TYPES = {"--threads": _threads}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _flag_kwargs(o: Option) -> dict[str, Any]:
    """argparse's keywords for the flag of one config field: the type from its annotation
    (``int | None`` -> int, ``list[str]`` -> repeatable), a boolean storing the opposite of its
    default, default None so the dataclass default applies. Choices show as the metavar but are
    checked by the config, so a flag and a --config file get the same one-line message."""
    meta, hint = o.field.metadata, field_types(o.cls)[o.field.name]
    kw: dict[str, Any] = {"dest": _dest(o.flag), "default": None, "help": help_of(o.cls, o.field.name)}
    if hint is bool:
        return {**kw, "action": "store_const", "const": not o.field.default}
    if typing.get_origin(hint) is list:
        kw.update(action="append", type=typing.get_args(hint)[0])
    else:
        (typ,) = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        kw["type"] = _ARG_TYPES.get(o.flag, typ)
    if meta["choices"]:
        kw["metavar"] = "{" + ",".join(meta["choices"]) + "}"
    if meta["metavar"]:
        kw["metavar"] = meta["metavar"]
    return kw


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """One flag per field of `TrainConfig` and its sections (`steadylm.config.train_options`),
    grouped by section as a --config file is, each group described by its dataclass's docstring."""
    groups: dict[str | None, Any] = {}
    for o in train_options():
        if o.section not in groups:
            title = f"[{o.section}]" if o.section else "training"
            groups[o.section] = p.add_argument_group(title, (o.cls.__doc__ or "").strip().splitlines()[0].replace("`", ""))
        groups[o.section].add_argument(o.flag, **_flag_kwargs(o))
    p.add_argument("--config", metavar="FILE.toml", help="a TOML (or JSON) file with any of these settings; flags override it")


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The fields the flags given set, as a --config table."""
    d: dict[str, Any] = {}
    for o in train_options():
        v = getattr(args, _dest(o.flag))
        if v is not None:
            (d.setdefault(o.section, {}) if o.section else d)[o.field.name] = v
    if getattr(args, "out", None) is not None:
        d["out"] = args.out
    return d


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="steadylm", description="Keep large language models steady, and prove it with numbers.")
    p.add_argument("--version", action="version", version=f"steadylm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    demo = sub.add_parser("demo", help="train a tiny model on the built-in corpus with the stabilizers on, then evaluate it")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo; a previous demo there is replaced)")
    demo.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the demo's)")

    tr = sub.add_parser("train", help="train or fine-tune a causal LM with stabilizers and kill-proof checkpoints")
    tr.add_argument("--out", default=None, help="run folder to write (required unless --resume)")
    tr.add_argument("--resume", metavar="DIR", default=None, help="continue the run in DIR from its newest complete checkpoint")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing run folder given with --out")
    tr.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    tr.add_argument("--no-plots", action="store_true", help="do not write RUN_DIR/plots/*.png at the end")
    _add_train_args(tr)

    ev = sub.add_parser("eval", help="evaluate a model")
    evsub = ev.add_subparsers(dest="eval_command", metavar="EVAL", parser_class=_Parser)
    evsub.required = True
    ppl = evsub.add_parser("perplexity", help="corpus-level perplexity, matching lm-eval-harness's loglikelihood_rolling")
    ppl.add_argument("--model", required=True, help="a local Hugging Face causal-LM folder")
    ppl.add_argument("--data", required=True, help="builtin:pydoc, builtin:stdlib-code, a .txt file, a folder of .txt files, or a .jsonl file with 'text'")
    ppl.add_argument("--window", type=int, default=None, help="tokens per window (default: the model's context)")
    ppl.add_argument("--stride", type=int, default=None, help="new tokens scored per window (default: the window; smaller gives a sliding window)")
    ppl.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")
    ppl.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute dtype (default: float32)")
    ppl.add_argument("--threads", type=_threads, default=None, help="torch CPU threads (default: torch's choice)")
    ppl.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")
    ppl.add_argument("--add-special-tokens", action="store_true",
                     help="encode documents with the tokenizer's special tokens, as lm-eval-harness >= 0.4.10 does "
                          "(differs only for tokenizers that add BOS/EOS themselves)")
    ppl.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    gen = evsub.add_parser("generation", help="consistency, contradiction, repetition, relevance, BLEU/chrF/TER and "
                                             "determinism of generated answers")
    gen.add_argument("--model", required=True, help="a local HF causal-LM folder, openai:http://HOST:PORT/v1#MODEL_NAME, or "
                                                "ensemble:DIR1,DIR2[#logprob] (token-level average of local folders)")
    gen.add_argument("--prompts", default="builtin", help="a JSONL prompt file, or 'builtin' (held-out built-in corpus; default)")
    gen.add_argument("--builtin-prompts", type=int, default=32, help="how many prompts 'builtin' draws (default: 32)")
    gen.add_argument("--samples", type=int, default=4, help="K samples per prompt and seed (default: 4; 1 gives reference metrics only)")
    gen.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: 1.0)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1.0 = off)")
    gen.add_argument("--top-k", type=int, default=0, help="top-k sampling (default: 0 = off)")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per sample (default: 64)")
    gen.add_argument("--out", default=None, help="results folder (default: runs/eval-generation); the same --out resumes")
    gen.add_argument("--json", action="store_true", help="print results.json's summary as one JSON object on stdout")
    gen.add_argument("--nli-model", default=None, help="a local NLI sequence-classification folder: measures contradiction")
    gen.add_argument("--batch-size", type=int, default=64, help="local models: rows per generate call (default: 64)")
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="local models (default: float32)")
    gen.add_argument("--threads", type=_threads, default=None, help="torch CPU threads (default: torch's choice)")
    gen.add_argument("--truncate-left", action="store_true", help="cut prompts longer than the context from the left instead of refusing")
    gen.add_argument("--concurrency", type=int, default=8, help="endpoint: requests in flight (default: 8)")
    gen.add_argument("--api-key-env", default="OPENAI_API_KEY", help="endpoint: environment variable holding the key (default: OPENAI_API_KEY; local servers need none)")
    gen.add_argument("--timeout", type=_timeout, default=60.0, help="endpoint: seconds one request may take in all (connect, headers, body) before it is retried (default: 60)")
    gen.add_argument("--max-retries", type=int, default=6, help="endpoint: retries on 429/5xx/timeouts/garbage (default: 6)")
    gen.add_argument("--no-determinism", action="store_true", help="skip the determinism and batch-invariance checks")
    gen.add_argument("--no-environments", action="store_true", help="skip float32-vs-bfloat16 and thread-count checks")
    gen.add_argument("--determinism-prompts", type=int, default=8, help="prompts the determinism checks use (default: 8)")
    gen.add_argument("--determinism-runs", type=int, default=5, help="repeated greedy runs per prompt (default: 5)")
    gen.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for confidence intervals (default: 1000)")
    gen.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")

    rob = evsub.add_parser("robustness", help="outputs under perturbed prompts (similarity, accuracy, PDR, worst case, "
                                              "perplexity shift), a greedy adversarial search, and domain shift (--ood)")
    rob.add_argument("--model", required=True, help="a local HF causal-LM folder, or openai:http://HOST:PORT/v1#MODEL_NAME")
    rob.add_argument("--prompts", default="builtin", help="a JSONL prompt file, 'builtin' or builtin:SOURCE (default: builtin)")
    rob.add_argument("--builtin-prompts", type=int, default=32, help="how many prompts a built-in source draws (default: 32)")
    rob.add_argument("--kinds", default=None, metavar="NAME[,NAME...]",
                     help="perturbation kinds, each evaluated on its own (see steadylm perturb --list; default: "
                          "typo,swap,delete,ocr,upper,whitespace,punctuation,filler,word-order,distractor)")
    rob.add_argument("--rate", type=float, default=None, help="one rate in [0, 1] for every kind (default: each kind's own)")
    rob.add_argument("--seed", type=int, default=0, help="seed of the perturbations and of sampling (default: 0)")
    rob.add_argument("--samples", type=int, default=1, help="K outputs per prompt and variant (default: 1)")
    rob.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: 0)")
    rob.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1.0 = off)")
    rob.add_argument("--top-k", type=int, default=0, help="top-k sampling (default: 0 = off)")
    rob.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per output (default: 64)")
    rob.add_argument("--budget", type=int, default=3, help="adversarial search: edits per prompt (default: 3)")
    rob.add_argument("--queries", type=int, default=12,
                     help="adversarial search: model queries per item for each search, greedy and random (default: 12)")
    rob.add_argument("--adv-items", type=int, default=4, help="adversarial search: how many of the first items (default: 4; 0 = off)")
    rob.add_argument("--ood", default=None, metavar="SRC",
                     help="an out-of-domain prompt source (builtin:stdlib-code or a JSONL file) to compare clean metrics with")
    rob.add_argument("--out", default=None, help="results folder (default: runs/eval-robustness); the same --out resumes")
    rob.add_argument("--json", action="store_true", help="print results.json's summary as one JSON object on stdout")
    rob.add_argument("--batch-size", type=int, default=64, help="local models: rows per generate call (default: 64)")
    rob.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="local models (default: float32)")
    rob.add_argument("--threads", type=_threads, default=None, help="torch CPU threads (default: torch's choice)")
    rob.add_argument("--truncate-left", action="store_true", help="cut prompts longer than the context from the left instead of refusing")
    rob.add_argument("--concurrency", type=int, default=8, help="endpoint: requests in flight (default: 8)")
    rob.add_argument("--api-key-env", default="OPENAI_API_KEY", help="endpoint: environment variable holding the key (default: OPENAI_API_KEY)")
    rob.add_argument("--timeout", type=_timeout, default=60.0, help="endpoint: seconds one request may take in all (connect, headers, body) before it is retried (default: 60)")
    rob.add_argument("--max-retries", type=int, default=6, help="endpoint: retries on 429/5xx/timeouts/garbage (default: 6)")
    rob.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for confidence intervals (default: 1000)")
    rob.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")

    cmp_ = sub.add_parser("compare", help="line up two eval-generation runs (e.g. two machines): outputs and metrics")
    cmp_.add_argument("run_a", metavar="RESULTS_A", help="a folder written by steadylm eval generation")
    cmp_.add_argument("run_b", metavar="RESULTS_B", help="another one")
    cmp_.add_argument("--json", action="store_true", help="print the comparison as one JSON object")

    pl = sub.add_parser("plot", help="write PNGs of a run's loss, grad norm with threshold, learning rate and incidents")
    pl.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by steadylm train")
    pl.add_argument("-o", "--out", default=None, help="folder for the PNGs (default: RUN_DIR/plots)")

    pt = sub.add_parser("perturb", help="apply seeded text perturbations (typos, OCR noise, synonyms ...) to each line of a file")
    pt.add_argument("file", metavar="FILE", nargs="?", default=None, help="UTF-8 text, one prompt a line; - reads stdin")
    pt.add_argument("--kind", action="append", default=None, metavar="NAME[,NAME...]",
                    help="perturbations to apply, in order (see --list)")
    pt.add_argument("--rate", type=float, default=None,
                    help="probability per eligible character/word, in [0, 1] (default: each kind's own, see --list)")
    pt.add_argument("--seed", type=int, default=0, help="seed (default: 0); line i is perturbed as text index i")
    pt.add_argument("--list", action="store_true", help="list the perturbations with their default rates and descriptions")

    sp = sub.add_parser("soup", help="average model weights: a run's newest K checkpoints (LAWA) or several model folders")
    sp.add_argument("sources", metavar="RUN_DIR|FOLDER", nargs="+",
                    help="one run folder with --last K, or model folders (e.g. RUN/model, RUN/model-ema, fine-tunes)")
    sp.add_argument("--last", type=int, default=None, metavar="K", help="average the run's newest K checkpoints")
    sp.add_argument("-o", "--out", required=True, help="model folder to write (a new folder, or an earlier soup)")

    ens = sub.add_parser("ensemble", help="output-level ensembles: pick one output per prompt by vote or MBR")
    enssub = ens.add_subparsers(dest="ensemble_command", metavar="ENSEMBLE", parser_class=_Parser)
    enssub.required = True
    sel = enssub.add_parser("select", help="choose one output per item by majority vote of short answers or by MBR")
    sel.add_argument("--candidates", required=True, metavar="FILE.jsonl",
                     help='lines {"id": ..., "candidates": [...]}, or a generations.jsonl from eval generation')
    sel.add_argument("--method", default="vote", choices=["vote", "mbr"],
                     help="vote: most frequent short answer (self-consistency); mbr: minimum Bayes risk (default: vote)")
    sel.add_argument("--utility", default="chrf", choices=["chrf", "bleu"], help="MBR utility (default: chrf)")
    sel.add_argument("-o", "--out", default=None, metavar="FILE.jsonl", help="write the chosen outputs here (default: stdout)")

    _add_report_args(sub)
    _add_sweep_args(sub)
    sub.add_parser("presets", help="list the model presets")
    return p


def _add_report_args(sub: Any) -> None:
    """``steadylm report`` and ``steadylm human export|import|judge``."""
    rp = sub.add_parser("report", help="one self-contained HTML report (and a Markdown summary) over runs and results")
    rp.add_argument("inputs", nargs="+", metavar="RUN_OR_RESULT",
                    help="training run folders, demo folders, eval results folders or results.json, sweep.json, human.json, "
                         "eval perplexity --json output")
    rp.add_argument("-o", "--out", default="report.html", help="the HTML file to write (default: report.html)")
    rp.add_argument("--md", default=None, metavar="FILE.md", help="also write a Markdown summary for pull requests")
    rp.add_argument("--title", default=None, help="page title (default: steadylm report)")

    hu = sub.add_parser("human", help="human ratings: a blinded rating page, joining the ratings, an LLM judge")
    husub = hu.add_subparsers(dest="human_command", metavar="HUMAN", parser_class=_Parser)
    husub.required = True
    ex = husub.add_parser("export", help="write a static, offline rating page (blinded, shuffled) and its key file")
    ex.add_argument("results", nargs="+", metavar="RESULTS_DIR", help="eval generation folders (one per model or setting)")
    ex.add_argument("-o", "--out", default="ratings.html", help="the page to write (default: ratings.html; the key goes "
                                                                "beside it as ratings.key.json)")
    ex.add_argument("--per-prompt", type=int, default=1, help="outputs per prompt and folder (default: 1)")
    ex.add_argument("--max-prompts", type=int, default=None, help="only the first N prompts of each folder (default: all)")
    ex.add_argument("--seed", type=int, default=0, help="shuffling seed (default: 0)")
    ex.add_argument("--title", default=None, help="page title")
    im = husub.add_parser("import", help="join ratings files: means with CIs per model/setting, Krippendorff's alpha")
    im.add_argument("files", nargs="+", metavar="RATINGS.json", help="files saved from the rating page")
    im.add_argument("--key", required=True, metavar="KEY.json", help="the .key.json written beside the rating page")
    im.add_argument("-o", "--out", default="human.json", help="where to write the joined ratings (default: human.json)")
    im.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default: 1000)")
    im.add_argument("--json", action="store_true", help="print human.json on stdout too")
    jd = husub.add_parser("judge", help="the same rubric through an LLM judge on an OpenAI-compatible endpoint")
    jd.add_argument("results", nargs="+", metavar="RESULTS_DIR", help="eval generation folders")
    jd.add_argument("--judge", required=True, metavar="openai:URL#MODEL", help="the judge endpoint and model")
    jd.add_argument("-o", "--out", default="human.json", help="where to write the ratings (default: human.json)")
    jd.add_argument("--per-prompt", type=int, default=1, help="outputs per prompt and folder (default: 1)")
    jd.add_argument("--max-prompts", type=int, default=None, help="only the first N prompts of each folder (default: all)")
    jd.add_argument("--max-new-tokens", type=int, default=64, help="tokens the judge may answer with (default: 64)")
    jd.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default: 1000)")
    jd.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: 4)")
    jd.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key (default: OPENAI_API_KEY)")
    jd.add_argument("--timeout", type=_timeout, default=60.0, help="seconds one request may take in all (connect, headers, body) before it is retried (default: 60)")
    jd.add_argument("--max-retries", type=int, default=6, help="retries on 429/5xx/timeouts (default: 6)")


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.loop import TrainingRun

    if args.resume is not None:
        given = [o.flag for o in train_options() if getattr(args, _dest(o.flag)) is not None]
        given += [f for f in ("--out", "--config") if getattr(args, _dest(f)) is not None]
        if args.overwrite:
            given.append("--overwrite")
        if given:
            raise SteadyError(f"--resume continues a run with its saved settings; drop {', '.join(given)}")
        run = TrainingRun.resume(args.resume)
    else:
        if args.out is None:
            raise SteadyError("train needs --out DIR (or --resume DIR)")
        base = load_config_file(args.config) if args.config else {}
        cfg = TrainConfig.from_dict(merge(base, _train_overrides(args)), origin="flags")  # the file was checked as it was read
        run = TrainingRun(cfg, overwrite=args.overwrite)
    summary = run.run()
    if not run.dp.main:  # data-parallel: rank 0 reports for everyone
        return 0
    if not args.no_plots:
        from .report.plots import plot_run

        summary["plots"] = [str(p) for p in plot_run(run.out)]
    _print_summary(summary, as_json=args.json, title=f"run {run.out}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report.plots import plot_run

    if not Path(args.run_dir).is_dir():
        raise SteadyError(f"{args.run_dir}: no such run folder")
    for p in plot_run(args.run_dir, args.out):
        print(p)
    return 0


def _print_summary(d: dict[str, Any], *, as_json: bool, title: str) -> None:
    if as_json:
        print(to_json(d))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in d.items():
        t.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    Console().print(t)


def _cmd_eval_perplexity(args: argparse.Namespace) -> int:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from .evaluate.perplexity import evaluate_perplexity

    res = evaluate_perplexity(args.model, args.data, window=args.window, stride=args.stride, batch_size=args.batch_size,
                              dtype=args.dtype, trust_remote_code=args.trust_remote_code, progress=not args.json,
                              add_special_tokens=args.add_special_tokens)
    d = res.to_dict()
    if args.json:
        print(to_json(d))
    else:
        d.pop("settings")
        _print_summary(d, as_json=False, title=f"perplexity of {args.model} on {args.data}")
    return 0


def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SteadyError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise SteadyError("--seeds needs at least one seed")
    return seeds


def _cmd_eval_generation(args: argparse.Namespace) -> int:
    from .evaluate.backends import DecodingSettings, open_backend
    from .evaluate.generation import GenerationEval, GenerationEvalConfig
    from .evaluate.prompts import load_prompts
    from .evaluate.summary import print_generation_summary

    rank, world, _ = launch_ranks()  # before the model loads: a bad RANK is one line, at once
    cfg = GenerationEvalConfig(
        prompts=args.prompts, samples=args.samples, seeds=_parse_seeds(args.seeds), n_builtin=args.builtin_prompts,
        decoding=DecodingSettings(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                  max_new_tokens=args.max_new_tokens),
        nli_model=args.nli_model, determinism=not args.no_determinism, environments=not args.no_environments,
        determinism_prompts=args.determinism_prompts, determinism_runs=args.determinism_runs, bootstrap=args.bootstrap)
    items = load_prompts(args.prompts, n_builtin=args.builtin_prompts)
    if args.model.startswith("openai:"):
        backend = open_backend(args.model, api_key_env=args.api_key_env, concurrency=args.concurrency,
                               timeout=args.timeout, max_retries=args.max_retries)
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        backend = open_backend(args.model, dtype=args.dtype, batch_size=args.batch_size, threads=args.threads,
                               trust_remote_code=args.trust_remote_code, truncate_left=args.truncate_left)
    ev = GenerationEval(backend, items, cfg, args.out or "runs/eval-generation", progress=not args.json,
                        rank=rank, world_size=world)
    try:
        results = ev.run()
    finally:
        ev.close()
        backend.close()
    if rank != 0:
        sys.stderr.write(f"rank {rank}/{world}: {results['generated']} generations in {ev.out}; rank 0 writes the results\n")
        return 0
    if args.json:
        print(to_json({k: v for k, v in results.items() if k != "per_prompt"}))
    else:
        print_generation_summary(results, ev.out)
    return 0


def _cmd_eval_robustness(args: argparse.Namespace) -> int:
    from .evaluate.backends import DecodingSettings, open_backend
    from .evaluate.prompts import load_prompts
    from .evaluate.robustness import DEFAULT_KINDS, RobustnessConfig, RobustnessEval, print_robustness_summary

    cfg = RobustnessConfig(
        prompts=args.prompts, kinds=tuple(args.kinds.split(",")) if args.kinds is not None else DEFAULT_KINDS,
        rate=args.rate, seed=args.seed, samples=args.samples, n_builtin=args.builtin_prompts,
        decoding=DecodingSettings(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                  max_new_tokens=args.max_new_tokens),
        budget=args.budget, queries=args.queries, adv_items=args.adv_items, ood=args.ood, bootstrap=args.bootstrap)
    items = load_prompts(args.prompts, n_builtin=args.builtin_prompts)
    ood = load_prompts(args.ood, n_builtin=args.builtin_prompts) if args.ood is not None else None
    if args.model.startswith("openai:"):
        backend = open_backend(args.model, api_key_env=args.api_key_env, concurrency=args.concurrency,
                               timeout=args.timeout, max_retries=args.max_retries)
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        backend = open_backend(args.model, dtype=args.dtype, batch_size=args.batch_size, threads=args.threads,
                               trust_remote_code=args.trust_remote_code, truncate_left=args.truncate_left)
    ev = RobustnessEval(backend, items, cfg, args.out or "runs/eval-robustness", ood_items=ood, progress=not args.json)
    try:
        results = ev.run()
    finally:
        ev.close()
        backend.close()
    if args.json:
        print(to_json({k: v for k, v in results.items() if k != "per_prompt"}))
    else:
        print_robustness_summary(results, ev.out)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .evaluate.compare import compare_runs
    from .evaluate.summary import print_comparison

    res = compare_runs(args.run_a, args.run_b)
    if args.json:
        print(to_json(res))
    else:
        print_comparison(res)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, steps=args.steps)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from .models.presets import PRESETS

    for name, (cls, _, desc) in PRESETS.items():
        print(f"{name:10s} {cls:14s} {desc}")
    return 0


def _cmd_perturb(args: argparse.Namespace) -> int:
    from .evaluate.perturb import PERTURBATIONS, check_rate, compose

    if args.list:
        for name, p in PERTURBATIONS.items():
            print(f"{name:12s} {p.default_rate:<5g} per {p.unit:9s} {p.description}")
        return 0
    if not args.kind:
        raise SteadyError("perturb needs --kind NAME[,NAME...] (see steadylm perturb --list)")
    if args.file is None:
        raise SteadyError("perturb needs a FILE to read (or - for stdin)")
    if args.rate is not None:
        check_rate(args.rate, "--rate")
    f = compose(args.kind, args.rate, args.seed)
    from .io import iter_lines

    # every line is read and perturbed before anything is written: a bad line prints nothing
    out = [f(line, i - 1) if line else line for i, line in iter_lines(args.file, error=SteadyError)]
    sys.stdout.buffer.write("".join(s + "\n" for s in out).encode("utf-8"))
    sys.stdout.flush()
    return 0


def _cmd_soup(args: argparse.Namespace) -> int:
    from .ensemble.soup import soup

    res = soup(args.sources, args.out, last=args.last)
    print(f"{res['method']} soup of {len(res['members'])} models:")
    for m in res["members"]:
        print(f"  {m}")
    print(f"-> {res['out']}")
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from .evaluate.select import select_file
    from .fsutil import check_out_file, write_text_atomic

    if args.out:
        check_out_file(args.out, "-o", inputs=[args.candidates])
    rows = select_file(args.candidates, method=args.method, utility=args.utility)
    text = "".join(to_json(r) + "\n" for r in rows)
    if args.out:
        write_text_atomic(args.out, text)
        print(f"{len(rows)} chosen outputs -> {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _quiet_libraries() -> None:
    """steadylm draws its own progress bars; silence transformers' and hub's tqdm bars."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _cmd_report(args: argparse.Namespace) -> int:
    from .report.html import build_report

    res = build_report(args.inputs, args.out, md=args.md, title=args.title)
    print(res["html"])
    if res["md"]:
        print(res["md"])
    return 0


def _cmd_human(args: argparse.Namespace) -> int:
    from .evaluate import judge
    from .report import human

    if args.human_command == "export":
        res = human.export_ratings(args.results, args.out, per_prompt=args.per_prompt, seed=args.seed,
                                   max_prompts=args.max_prompts, title=args.title)
        print(f"{res['html']}: {res['items']} outputs from {len(res['systems'])} model(s)/setting(s), blinded and "
              f"shuffled (export {res['export_id']}); key: {res['key']}")
        return 0
    if args.human_command == "import":
        if args.bootstrap < 100:
            raise SteadyError(f"--bootstrap must be >= 100 resamples, got {args.bootstrap}")
        doc = human.import_ratings(args.files, args.key, out=args.out, bootstrap=args.bootstrap)
    else:
        if args.bootstrap < 100:
            raise SteadyError(f"--bootstrap must be >= 100 resamples, got {args.bootstrap}")
        doc = judge.judge_outputs(args.results, args.judge, out=args.out, per_prompt=args.per_prompt,
                                  max_prompts=args.max_prompts, max_new_tokens=args.max_new_tokens, bootstrap=args.bootstrap,
                                  backend_options={"concurrency": args.concurrency, "api_key_env": args.api_key_env,
                                                   "timeout": args.timeout, "max_retries": args.max_retries})
    if getattr(args, "json", False):
        print(to_json(doc))
        return 0
    for name, s in doc["systems"].items():
        vals = "  ".join(f"{c} {s[c]['mean']:.2f}" if s[c]["mean"] is not None else f"{c} -"
                         for c in human.CRITERIA + ("overall",))
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
    print(args.out)
    return 0


def _add_sweep_args(sub: Any) -> None:
    """``steadylm sweep`` (LR sensitivity / seed variance), ``sweep clip`` and ``sweep decoding``."""
    from .study.sweep import DEFAULT_LRS, DEFAULT_PRESET, DEFAULT_SEEDS, DEFAULT_STEPS, DEFAULT_WORKERS

    sw = sub.add_parser("sweep", help="LR sensitivity and seed variance of training recipes (and: sweep clip, sweep decoding)",
                        description="Train every cell of recipes x learning rates x seeds x --set factors and measure "
                                    "each recipe's LR sensitivity (Wortsman et al. 2023). Subcommands: clip, decoding.")
    sw.add_argument("--recipes", default="baseline,stabilized",
                    help="comma-separated built-in recipes (baseline, stabilized) or TOML files (default: baseline,stabilized)")
    sw.add_argument("--lrs", default=",".join(f"{x:g}" for x in DEFAULT_LRS),
                    help=f"comma-separated peak learning rates (default: {','.join(f'{x:g}' for x in DEFAULT_LRS)})")
    seeds = ",".join(map(str, DEFAULT_SEEDS))
    sw.add_argument("--seeds", default=seeds, help=f"comma-separated seeds (default: {seeds})")
    sw.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimizer steps per run (default: {DEFAULT_STEPS})")
    sw.add_argument("--preset", default=DEFAULT_PRESET,
                    help=f"model size; 'stabilized' uses its -qknorm variant (default: {DEFAULT_PRESET})")
    sw.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help=f"runs in parallel (default: {DEFAULT_WORKERS})")
    sw.add_argument("--threads", type=_threads, default=None, help="torch threads per run (default: cores // workers)")
    sw.add_argument("--keep-run-checkpoints", action="store_true",
                    help="keep each finished run's checkpoints/ folder (default: removed; model/ is always kept)")
    sw.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=V1,V2",
                    help="another grid factor or a fixed setting: any training option by its TOML path, "
                         "e.g. optim.batch_size=8,16, model.dropout=0,0.1, clip.method=norm,zclip (repeatable)")
    sw.add_argument("--executor", default="local", choices=["local", "ray"], help="worker processes here, or Ray tasks (default: local)")
    sw.add_argument("--out", default=None, help="sweep folder (required); the same command again resumes it")
    sw.add_argument("--json", action="store_true", help="print sweep.json on stdout instead of the table")
    swsub = sw.add_subparsers(dest="sweep_command", metavar="{clip,decoding}", parser_class=_Parser)
    swsub.required = False

    from .study.clip import DEFAULT_CLIP_STEPS, DEFAULT_MAX_NORMS, DEFAULT_TOLERANCE

    cl = swsub.add_parser("clip", help="short trainings over max_norm values; recommend a clipping threshold with evidence")
    cl.add_argument("--max-norms", default=",".join(f"{x:g}" for x in DEFAULT_MAX_NORMS),
                    help=f"comma-separated thresholds (default: {','.join(f'{x:g}' for x in DEFAULT_MAX_NORMS)})")
    cl.add_argument("--steps", type=int, default=DEFAULT_CLIP_STEPS, help=f"optimizer steps per run (default: {DEFAULT_CLIP_STEPS})")
    cl.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the training default)")
    cl.add_argument("--seed", type=int, default=0, help="seed of the grid's runs (default: 0)")
    cl.add_argument("--confirm-seed", type=int, default=None, help="seed of the confirmation run (default: --seed + 1)")
    cl.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                    help=f"recommend the smallest max_norm whose loss is within this share of the best (default: {DEFAULT_TOLERANCE:g})")
    cl.add_argument("--recipe", default="baseline", help="recipe for everything but the clipper (default: baseline)")
    cl.add_argument("--preset", default=DEFAULT_PRESET, help=f"model size (default: {DEFAULT_PRESET})")
    cl.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help=f"runs in parallel (default: {DEFAULT_WORKERS})")
    cl.add_argument("--threads", type=_threads, default=None, help="torch threads per run (default: cores // workers)")
    cl.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE",
                    help="a fixed training option by its TOML path, e.g. optim.batch_size=8 (repeatable)")
    cl.add_argument("--executor", default="local", choices=["local", "ray"], help="worker processes here, or Ray tasks (default: local)")
    cl.add_argument("--out", required=True, help="sweep folder; the same command again resumes it")
    cl.add_argument("--json", action="store_true", help="print clip_sweep.json on stdout instead of the table")

    dc = swsub.add_parser("decoding", help="a temperature x top-p grid of eval generation: consistency vs diversity vs chrF")
    dc.add_argument("--model", required=True, help="a local HF causal-LM folder, or openai:http://HOST:PORT/v1#MODEL_NAME")
    dc.add_argument("--temperatures", default="0,0.7,1.0", help="comma-separated temperatures; 0 = greedy (default: 0,0.7,1.0)")
    dc.add_argument("--top-ps", default="1.0,0.9", help="comma-separated top-p values (default: 1.0,0.9)")
    dc.add_argument("--top-k", type=int, default=0, help="top-k for every cell (default: 0 = off)")
    dc.add_argument("--prompts", default="builtin", help="a JSONL prompt file, or 'builtin' (default)")
    dc.add_argument("--builtin-prompts", type=int, default=16, help="how many prompts 'builtin' draws (default: 16)")
    dc.add_argument("--samples", type=int, default=4, help="K samples per prompt (default: 4; at least 2)")
    dc.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    dc.add_argument("--max-new-tokens", type=int, default=32, help="tokens per sample (default: 32)")
    dc.add_argument("--batch-size", type=int, default=64, help="local models: rows per generate call (default: 64)")
    dc.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="local models (default: float32)")
    dc.add_argument("--threads", type=_threads, default=None, help="torch CPU threads (default: torch's choice)")
    dc.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for confidence intervals (default: 1000)")
    dc.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")
    dc.add_argument("--truncate-left", action="store_true", help="cut prompts longer than the context from the left instead of refusing")
    dc.add_argument("--out", required=True, help="sweep folder; the same command again resumes from its caches")
    dc.add_argument("--json", action="store_true", help="print decoding_sweep.json on stdout instead of the table")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .study.grid import parse_floats, parse_ints, parse_sets

    if args.sweep_command == "decoding":
        from .study.decoding import print_decoding_sweep, run_decoding_sweep

        kw = {} if args.model.startswith("openai:") else dict(dtype=args.dtype, batch_size=args.batch_size, threads=args.threads,
                                                              trust_remote_code=args.trust_remote_code,
                                                              truncate_left=args.truncate_left)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        res = run_decoding_sweep(args.model, args.out, temperatures=parse_floats(args.temperatures, "--temperatures", positive=False),
                                 top_ps=parse_floats(args.top_ps, "--top-ps"), top_k=args.top_k, prompts=args.prompts,
                                 n_builtin=args.builtin_prompts, samples=args.samples, seeds=parse_ints(args.seeds, "--seeds"),
                                 max_new_tokens=args.max_new_tokens, bootstrap=args.bootstrap, backend_kw=kw,
                                 progress=not args.json)
        print(to_json(res)) if args.json else print_decoding_sweep(res, args.out)
        return 0
    if args.sweep_command == "clip":
        from .study.clip import ClipSweep, print_clip_sweep

        sweep = ClipSweep(out=args.out, max_norms=parse_floats(args.max_norms, "--max-norms"), steps=args.steps, preset=args.preset,
                          lr=args.lr, seed=args.seed, confirm_seed=args.confirm_seed, tolerance=args.tolerance,
                          recipe=args.recipe, workers=args.workers, executor=args.executor, settings=parse_sets(args.sets),
                          threads=args.threads)
        res = sweep.run()
        print(to_json(res)) if args.json else print_clip_sweep(res, args.out)
        return 0
    from .study.sweep import LRSweep, print_sweep

    if args.out is None:
        raise SteadyError("sweep needs --out DIR")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    sweep = LRSweep(out=args.out, recipes=recipes, lrs=parse_floats(args.lrs, "--lrs"), seeds=parse_ints(args.seeds, "--seeds"),
                    steps=args.steps, preset=args.preset, workers=args.workers, factors=parse_sets(args.sets),
                    executor=args.executor, threads=args.threads, keep_checkpoints=args.keep_run_checkpoints)
    res = sweep.run()
    print(to_json(res)) if args.json else print_sweep(res, args.out, seconds=sweep.seconds)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    handlers = {"train": _cmd_train, "demo": _cmd_demo, "presets": _cmd_presets, "plot": _cmd_plot, "compare": _cmd_compare,
                "perturb": _cmd_perturb, "soup": _cmd_soup, "ensemble": _cmd_ensemble}
    handlers.update(report=_cmd_report, human=_cmd_human)
    handlers.update(sweep=_cmd_sweep)
    try:
        if args.command == "eval" and args.eval_command == "robustness":
            rc = _cmd_eval_robustness(args)
        elif args.command == "eval":
            rc = _cmd_eval_generation(args) if args.eval_command == "generation" else _cmd_eval_perplexity(args)
        else:
            rc = handlers[args.command](args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the try, not at interpreter exit
        return rc
    except SteadyError as e:
        sys.stderr.write(f"steadylm: error: {e}\n")
        return 2
    except BrokenPipeError:
        # the reader went away (`steadylm perturb ... | head`): stop quietly, as cat does
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:  # a last resort (a full disk, a read-only folder): the commands check what they can first
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"steadylm: error: {where}{e.strerror or e}\n")
        return 2
    except KeyboardInterrupt:
        if args.command == "train":
            sys.stderr.write("steadylm: interrupted; finished checkpoints are kept (continue with --resume)\n")
        else:
            sys.stderr.write("steadylm: interrupted; finished work is kept (run the same command again to resume)\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
