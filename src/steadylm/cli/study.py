"""``steadylm sweep`` (LR sensitivity and seed variance), ``sweep clip`` and ``sweep decoding``."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import SteadyError
from ..fsutil import to_json
from .options import (Parser, add_backend_args, add_bootstrap_arg, add_decoding_args, add_output_args, add_prompts_args,
                      endpoint_options, local_options, threads_arg, use_threads)


def _add_runner_args(p: argparse.ArgumentParser) -> None:
    """How a training sweep runs its cells: worker processes or Ray tasks, and torch threads in each."""
    from ..study.sweep import DEFAULT_WORKERS

    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help=f"runs in parallel (default: {DEFAULT_WORKERS})")
    p.add_argument("--threads", type=threads_arg, default=None, help="torch threads per run (default: cores // workers)")
    p.add_argument("--executor", default="local", choices=["local", "ray"], help="worker processes here, or Ray tasks (default: local)")


def add_sweep(sub: Any) -> None:
    from ..study.sweep import DEFAULT_LRS, DEFAULT_PRESET, DEFAULT_SEEDS, DEFAULT_STEPS

    sw = sub.add_parser("sweep", help="LR sensitivity and seed variance of training recipes (and: sweep clip, sweep decoding)",
                        description="Train every cell of recipes x learning rates x seeds x --set factors and measure "
                                    "each recipe's LR sensitivity (Wortsman et al. 2023). Subcommands: clip, decoding.")
    from ..study.studies import STUDIES

    # the grid's flags default to None, so that one given beside --study is seen (and refused); cmd_sweep fills them in
    sw.add_argument("--study", default=None, choices=list(STUDIES),
                    help="run a built-in study whose every setting is fixed (only --out, --workers, --threads and "
                         "--executor may be given with it)")
    sw.add_argument("--ablation", action="store_true",
                    help="with --study instability: its ablation instead (the same grid, one seed, over baseline, each "
                         "stabilizer alone, all, and all but one; ~40 min on 2 cores)")
    sw.add_argument("--recipes", default=None,
                    help="comma-separated built-in recipes (baseline, stabilized) or TOML files (default: baseline,stabilized)")
    sw.add_argument("--lrs", default=None,
                    help=f"comma-separated peak learning rates (default: {','.join(f'{x:g}' for x in DEFAULT_LRS)})")
    seeds = ",".join(map(str, DEFAULT_SEEDS))
    sw.add_argument("--seeds", default=None, help=f"comma-separated seeds (default: {seeds})")
    sw.add_argument("--steps", type=int, default=None, help=f"optimizer steps per run (default: {DEFAULT_STEPS})")
    sw.add_argument("--preset", default=None,
                    help=f"model size; 'stabilized' uses its -qknorm variant (default: {DEFAULT_PRESET})")
    _add_runner_args(sw)
    sw.add_argument("--keep-run-checkpoints", action="store_true",
                    help="keep each finished run's checkpoints/ folder (default: removed; model/ is always kept)")
    sw.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=V1,V2",
                    help="another grid factor or a fixed setting: any training option by its TOML path, "
                         "e.g. optim.batch_size=8,16, model.dropout=0,0.1, clip.method=norm,zclip (repeatable)")
    add_output_args(sw, "sweep folder (required); the same command again resumes it",
                    json="print sweep.json on stdout instead of the table")
    sw.set_defaults(func=cmd_sweep)
    swsub = sw.add_subparsers(dest="sweep_command", metavar="{clip,decoding}", parser_class=Parser)
    swsub.required = False
    _add_clip(swsub)
    _add_decoding(swsub)


def _add_clip(swsub: Any) -> None:
    from ..study.clip import DEFAULT_CLIP_STEPS, DEFAULT_MAX_NORMS, DEFAULT_TOLERANCE
    from ..study.sweep import DEFAULT_PRESET

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
    _add_runner_args(cl)
    cl.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE",
                    help="a fixed training option by its TOML path, e.g. optim.batch_size=8 (repeatable)")
    add_output_args(cl, "sweep folder; the same command again resumes it", required=True,
                    json="print clip_sweep.json on stdout instead of the table")
    cl.set_defaults(func=cmd_clip)


def _add_decoding(swsub: Any) -> None:
    dc = swsub.add_parser("decoding", help="a temperature x top-p grid of eval generation: consistency vs diversity vs chrF")
    add_bootstrap_arg(dc)
    add_backend_args(dc)
    add_prompts_args(dc, builtin=16)
    g = add_decoding_args(dc, temperature=None, max_new_tokens=32)
    g.add_argument("--temperatures", default="0,0.7,1.0", help="comma-separated temperatures; 0 = greedy (default: 0,0.7,1.0)")
    g.add_argument("--top-ps", default="1.0,0.9", help="comma-separated top-p values (default: 1.0,0.9)")
    g.add_argument("--samples", type=int, default=4, help="K samples per prompt (default: 4; at least 2)")
    add_output_args(dc, "sweep folder; the same command again resumes from its caches", required=True,
                    json="print decoding_sweep.json on stdout instead of the table")
    dc.set_defaults(func=cmd_decoding)


def cmd_decoding(args: argparse.Namespace) -> int:
    from ..study.decoding import print_decoding_sweep, run_decoding_sweep
    from ..study.grid import parse_floats, parse_ints

    kw = endpoint_options(args) if args.model.startswith("openai:") else local_options(args)
    use_threads(args.threads)
    res = run_decoding_sweep(args.model, args.out, temperatures=parse_floats(args.temperatures, "--temperatures", positive=False),
                             top_ps=parse_floats(args.top_ps, "--top-ps"), top_k=args.top_k, prompts=args.prompts,
                             n_builtin=args.builtin_prompts, samples=args.samples, seeds=parse_ints(args.seeds, "--seeds"),
                             max_new_tokens=args.max_new_tokens, bootstrap=args.bootstrap, backend_kw=kw,
                             progress=not args.json, prompt_format=args.prompt_format)
    print(to_json(res)) if args.json else print_decoding_sweep(res, args.out)
    return 0


def cmd_clip(args: argparse.Namespace) -> int:
    from ..study.clip import ClipSweep, print_clip_sweep
    from ..study.grid import parse_floats, parse_sets

    sweep = ClipSweep(out=args.out, max_norms=parse_floats(args.max_norms, "--max-norms"), steps=args.steps, preset=args.preset,
                      lr=args.lr, seed=args.seed, confirm_seed=args.confirm_seed, tolerance=args.tolerance,
                      recipe=args.recipe, workers=args.workers, executor=args.executor, settings=parse_sets(args.sets),
                      threads=args.threads)
    res = sweep.run()
    print(to_json(res)) if args.json else print_clip_sweep(res, args.out)
    return 0


#: sweep flags that define the grid (dest -> flag): a --study fixes them all
_GRID_FLAGS = {"recipes": "--recipes", "lrs": "--lrs", "seeds": "--seeds", "steps": "--steps", "preset": "--preset",
               "sets": "--set", "keep_run_checkpoints": "--keep-run-checkpoints", "json": "--json"}


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..study.grid import parse_floats, parse_ints, parse_sets
    from ..study.studies import get_study
    from ..study.sweep import (DEFAULT_LRS, DEFAULT_PRESET, DEFAULT_RECIPES, DEFAULT_SEEDS, DEFAULT_STEPS, LRSweep,
                               print_sweep)

    if args.ablation and args.study is None:
        raise SteadyError("--ablation goes with --study (steadylm sweep --study instability --ablation --out DIR)")
    if args.out is None:
        raise SteadyError("sweep needs --out DIR")
    if args.study is not None:
        given = [flag for dest, flag in _GRID_FLAGS.items() if getattr(args, dest) not in (None, False)]
        if given:
            raise SteadyError(f"--study {args.study} fixes every setting; remove {', '.join(given)} "
                              "(only --out, --workers, --threads and --executor go with it)")
        sweep = get_study(args.study, ablation=args.ablation).sweep(args.out, workers=args.workers, threads=args.threads, executor=args.executor)
    else:
        names = ",".join(DEFAULT_RECIPES) if args.recipes is None else args.recipes
        sweep = LRSweep(out=args.out, recipes=[r.strip() for r in names.split(",") if r.strip()],
                        lrs=DEFAULT_LRS if args.lrs is None else parse_floats(args.lrs, "--lrs"),
                        seeds=DEFAULT_SEEDS if args.seeds is None else parse_ints(args.seeds, "--seeds"),
                        steps=DEFAULT_STEPS if args.steps is None else args.steps,
                        preset=DEFAULT_PRESET if args.preset is None else args.preset, workers=args.workers,
                        factors=parse_sets(args.sets), executor=args.executor, threads=args.threads,
                        keep_checkpoints=args.keep_run_checkpoints)
    res = sweep.run()
    print(to_json(res)) if args.json else print_sweep(res, args.out, seconds=sweep.seconds)
    return 0
