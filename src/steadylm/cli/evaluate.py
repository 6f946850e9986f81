"""``steadylm eval perplexity|generation|robustness``, ``compare`` and ``perturb``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import SteadyError
from ..fsutil import to_json
from ..runtime import launch_ranks
from .options import (Parser, add_backend_args, add_bootstrap_arg, add_decoding_args, add_local_args, add_output_args,
                      add_prompts_args, backend_group, decoding_settings, open_model, print_summary, use_threads)


def add_eval(sub: Any) -> None:
    ev = sub.add_parser("eval", help="evaluate a model")
    evsub = ev.add_subparsers(dest="eval_command", metavar="EVAL", parser_class=Parser)
    evsub.required = True
    _add_perplexity(evsub)
    _add_generation(evsub)
    _add_robustness(evsub)


def _add_perplexity(evsub: Any) -> None:
    ppl = evsub.add_parser("perplexity", help="corpus-level perplexity, matching lm-eval-harness's loglikelihood_rolling")
    ppl.add_argument("--data", required=True, help="builtin:pydoc, builtin:stdlib-code, a .txt file, a folder of .txt files, or a .jsonl file with 'text'")
    ppl.add_argument("--window", type=int, default=None, help="tokens per window (default: the model's context)")
    ppl.add_argument("--stride", type=int, default=None, help="new tokens scored per window (default: the window; smaller gives a sliding window)")
    ppl.add_argument("--add-special-tokens", action="store_true",
                     help="encode documents with the tokenizer's special tokens, as lm-eval-harness >= 0.4.10 does "
                          "(differs only for tokenizers that add BOS/EOS themselves)")
    g = backend_group(ppl)
    g.add_argument("--model", required=True, help="a local Hugging Face causal-LM folder or .gguf file")
    g.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")
    add_local_args(g)
    add_output_args(ppl, None, json="print one JSON object on stdout")
    ppl.set_defaults(func=cmd_perplexity)


def _add_generation(evsub: Any) -> None:
    gen = evsub.add_parser("generation", help="consistency, contradiction, repetition, relevance, BLEU/chrF/TER and "
                                              "determinism of generated answers")
    gen.add_argument("--nli-model", default=None, help="a local NLI sequence-classification folder: measures contradiction")
    gen.add_argument("--no-determinism", action="store_true", help="skip the determinism and batch-invariance checks")
    gen.add_argument("--no-environments", action="store_true", help="skip float32-vs-bfloat16 and thread-count checks")
    gen.add_argument("--determinism-prompts", type=int, default=8, help="prompts the determinism checks use (default: 8)")
    gen.add_argument("--determinism-runs", type=int, default=5, help="repeated greedy runs per prompt (default: 5)")
    add_bootstrap_arg(gen)
    add_backend_args(gen)
    add_prompts_args(gen, builtin=32)
    dec = add_decoding_args(gen, temperature=1.0)
    dec.add_argument("--samples", type=int, default=4, help="K samples per prompt and seed (default: 4; 1 gives reference metrics only)")
    add_output_args(gen, "results folder (default: runs/eval-generation); the same --out resumes",
                    json="print results.json's summary as one JSON object on stdout")
    gen.set_defaults(func=cmd_generation)


def _add_robustness(evsub: Any) -> None:
    rob = evsub.add_parser("robustness", help="outputs under perturbed prompts (similarity, accuracy, PDR, worst case, "
                                              "perplexity shift), a greedy adversarial search, and domain shift (--ood)")
    rob.add_argument("--kinds", default=None, metavar="NAME[,NAME...]",
                     help="perturbation kinds, each evaluated on its own (see steadylm perturb --list; default: "
                          "typo,swap,delete,ocr,upper,whitespace,punctuation,filler,word-order,distractor; "
                          "and zh-char,zh-punct when a prompt holds Chinese)")
    rob.add_argument("--rate", type=float, default=None, help="one rate in [0, 1] for every kind (default: each kind's own)")
    rob.add_argument("--budget", type=int, default=3, help="adversarial search: edits per prompt (default: 3)")
    rob.add_argument("--queries", type=int, default=12,
                     help="adversarial search: model queries per item for each search, greedy and random (default: 12)")
    rob.add_argument("--adv-items", type=int, default=4, help="adversarial search: how many of the first items (default: 4; 0 = off)")
    rob.add_argument("--ood", default=None, metavar="SRC",
                     help="an out-of-domain prompt source (builtin:stdlib-code or a JSONL file) to compare clean metrics with")
    add_bootstrap_arg(rob)
    add_backend_args(rob)
    add_prompts_args(rob, builtin=32)
    dec = add_decoding_args(rob, temperature=0.0, seeds=False)
    dec.add_argument("--seed", type=int, default=0, help="seed of the perturbations and of sampling (default: 0)")
    dec.add_argument("--samples", type=int, default=1, help="K outputs per prompt and variant (default: 1)")
    add_output_args(rob, "results folder (default: runs/eval-robustness); the same --out resumes",
                    json="print results.json's summary as one JSON object on stdout")
    rob.set_defaults(func=cmd_robustness)


def add_compare(sub: Any) -> None:
    cmp_ = sub.add_parser("compare", help="line up two eval-generation runs (e.g. two machines): outputs and metrics")
    cmp_.add_argument("run_a", metavar="RESULTS_A", help="a folder written by steadylm eval generation")
    cmp_.add_argument("run_b", metavar="RESULTS_B", help="another one")
    add_output_args(cmp_, None, json="print the comparison as one JSON object")
    cmp_.set_defaults(func=cmd_compare)


def add_perturb(sub: Any) -> None:
    pt = sub.add_parser("perturb", help="apply seeded text perturbations (typos, OCR noise, synonyms ...) to each line of a file")
    pt.add_argument("file", metavar="FILE", nargs="?", default=None, help="UTF-8 text, one prompt a line; - reads stdin")
    pt.add_argument("--kind", action="append", default=None, metavar="NAME[,NAME...]",
                    help="perturbations to apply, in order (see --list)")
    pt.add_argument("--rate", type=float, default=None,
                    help="probability per eligible character/word, in [0, 1] (default: each kind's own, see --list)")
    pt.add_argument("--seed", type=int, default=0, help="seed (default: 0); line i is perturbed as text index i")
    pt.add_argument("--list", action="store_true", help="list the perturbations with their default rates and descriptions")
    pt.set_defaults(func=cmd_perturb)


def cmd_perplexity(args: argparse.Namespace) -> int:
    use_threads(args.threads)
    from ..evaluate.perplexity import evaluate_perplexity

    res = evaluate_perplexity(args.model, args.data, window=args.window, stride=args.stride, batch_size=args.batch_size,
                              dtype=args.dtype, trust_remote_code=args.trust_remote_code, progress=not args.json,
                              add_special_tokens=args.add_special_tokens)
    d = res.to_dict()
    if args.json:
        print(to_json(d))
    else:
        d.pop("settings")
        print_summary(d, as_json=False, title=f"perplexity of {args.model} on {args.data}")
    return 0


def _run_eval(ev: Any, backend: Any) -> dict[str, Any]:
    """Run an evaluation and close it and its backend, however it ends."""
    try:
        return ev.run()
    finally:
        ev.close()
        backend.close()


def _print_results(results: dict[str, Any], args: argparse.Namespace, print_table: Any, out: Any) -> None:
    if args.json:
        print(to_json({k: v for k, v in results.items() if k != "per_prompt"}))
    else:
        print_table(results, out)


def cmd_generation(args: argparse.Namespace) -> int:
    from ..evaluate.generation import GenerationEval, GenerationEvalConfig
    from ..study.grid import parse_ints
    from ..evaluate.prompts import load_prompts, prompts_label
    from ..report.tables import print_generation_summary

    rank, world, _ = launch_ranks()  # before the model loads: a bad RANK is one line, at once
    cfg = GenerationEvalConfig(
        prompts=prompts_label(args.prompts, args.prompt_format), samples=args.samples, seeds=parse_ints(args.seeds, "--seeds"), n_builtin=args.builtin_prompts,
        decoding=decoding_settings(args),
        nli_model=args.nli_model, determinism=not args.no_determinism, environments=not args.no_environments,
        determinism_prompts=args.determinism_prompts, determinism_runs=args.determinism_runs, bootstrap=args.bootstrap)
    items = load_prompts(args.prompts, n_builtin=args.builtin_prompts, prompt_format=args.prompt_format)
    backend = open_model(args)
    ev = GenerationEval(backend, items, cfg, args.out or "runs/eval-generation", progress=not args.json,
                        rank=rank, world_size=world)
    results = _run_eval(ev, backend)
    if rank != 0:
        sys.stderr.write(f"rank {rank}/{world}: {results['generated']} generations in {ev.out}; rank 0 writes the results\n")
        return 0
    _print_results(results, args, print_generation_summary, ev.out)
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from ..evaluate.prompts import load_prompts, prompts_label
    from ..evaluate.robustness import RobustnessConfig, RobustnessEval, default_kinds
    from ..report.tables import print_robustness_summary

    items = load_prompts(args.prompts, n_builtin=args.builtin_prompts, prompt_format=args.prompt_format)
    cfg = RobustnessConfig(
        prompts=prompts_label(args.prompts, args.prompt_format),
        kinds=tuple(args.kinds.split(",")) if args.kinds is not None else default_kinds(items),
        rate=args.rate, seed=args.seed, samples=args.samples, n_builtin=args.builtin_prompts,
        decoding=decoding_settings(args),
        budget=args.budget, queries=args.queries, adv_items=args.adv_items, ood=args.ood, bootstrap=args.bootstrap)
    ood = (load_prompts(args.ood, n_builtin=args.builtin_prompts, prompt_format=args.prompt_format)
           if args.ood is not None else None)
    backend = open_model(args)
    ev = RobustnessEval(backend, items, cfg, args.out or "runs/eval-robustness", ood_items=ood, progress=not args.json)
    _print_results(_run_eval(ev, backend), args, print_robustness_summary, ev.out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..evaluate.compare import compare_runs
    from ..report.tables import print_comparison

    res = compare_runs(args.run_a, args.run_b)
    if args.json:
        print(to_json(res))
    else:
        print_comparison(res)
    return 0


def cmd_perturb(args: argparse.Namespace) -> int:
    from ..evaluate.perturb import PERTURBATIONS, check_rate, compose

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
    from ..io import iter_lines

    # every line is read and perturbed before anything is written: a bad line prints nothing
    out = [f(line, i - 1) if line else line for i, line in iter_lines(args.file, error=SteadyError)]
    sys.stdout.buffer.write("".join(s + "\n" for s in out).encode("utf-8"))
    sys.stdout.flush()
    return 0
