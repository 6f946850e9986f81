"""``steadylm train``, ``demo``, ``plot`` and ``presets``. The train flags are generated from the
config dataclasses (`steadylm.config.train_options`), so a flag cannot drift from its field."""

from __future__ import annotations

import argparse
import typing
from typing import Any

from ..config import Option, TrainConfig, field_types, help_of, load_config_file, merge, train_options
from ..errors import SteadyError
from .options import add_output_args, print_summary, threads_arg

#: flags whose text is checked as it is parsed, as every command's flag of that name is
_ARG_TYPES = {"--threads": threads_arg}


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


def add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="train a tiny model on the built-in corpus with the stabilizers on, then evaluate it")
    add_output_args(demo, "run folder (default: runs/demo; a previous demo there is replaced)", default="runs/demo")
    demo.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the demo's)")
    demo.set_defaults(func=cmd_demo)


def add_train(sub: Any) -> None:
    tr = sub.add_parser("train", help="train or fine-tune a causal LM with stabilizers and kill-proof checkpoints")
    tr.add_argument("--resume", metavar="DIR", default=None, help="continue the run in DIR from its newest complete checkpoint")
    out = add_output_args(tr, "run folder to write (required unless --resume)", json="print the summary as one JSON object on stdout")
    out.add_argument("--overwrite", action="store_true", help="replace an existing run folder given with --out")
    out.add_argument("--no-plots", action="store_true", help="do not write RUN_DIR/plots/*.png at the end")
    _add_train_args(tr)
    tr.set_defaults(func=cmd_train)


def add_plot(sub: Any) -> None:
    pl = sub.add_parser("plot", help="write PNGs of a run's loss, grad norm with threshold, learning rate and incidents")
    pl.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by steadylm train")
    add_output_args(pl, "folder for the PNGs (default: RUN_DIR/plots)", short=True)
    pl.set_defaults(func=cmd_plot)


def add_presets(sub: Any) -> None:
    sub.add_parser("presets", help="list the model presets").set_defaults(func=cmd_presets)


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.loop import TrainingRun

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
    summary = run.run(keep_lock=True)  # the plots are written under the run's lock too
    try:
        if not run.dp.main:  # data-parallel: rank 0 reports for everyone
            return 0
        if not args.no_plots:
            from ..report.plots import plot_run

            summary["plots"] = [str(p) for p in plot_run(run.out)]
    finally:
        run.lock.release()
    print_summary(summary, as_json=args.json, title=f"run {run.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, steps=args.steps)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..report.plots import plot_run

    if not Path(args.run_dir).is_dir():
        raise SteadyError(f"{args.run_dir}: no such run folder")
    for p in plot_run(args.run_dir, args.out):
        print(p)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..models.presets import PRESETS

    for name, (cls, _, desc) in PRESETS.items():
        print(f"{name:10s} {cls:14s} {desc}")
    return 0
