"""``steadylm sweep clip``: choose a gradient-clipping threshold from short trainings.

The advice this follows (the seed's FAQ, and the usual practice since Pascanu et al. 2013): start
with a small ``max_norm`` and raise it until the balance point - the threshold that no longer
costs loss. Too small and every step is clipped, so the update is a normalised gradient of a fixed
size and training is slower; too large and clipping never acts, so it cannot catch a spike.

For each ``max_norm`` of the grid the sweep trains the same short run (global-norm clipping, the
``baseline`` recipe otherwise) and reads its ``metrics.jsonl``: the pre-clip gradient-norm history
(median, 90th percentile, max) and the share of steps clipped; and its ``summary.json``: the final
validation loss ("loss reached").

**Rule** (`recommend_max_norm`): among the runs with a finite loss, take the best loss; recommend
the *smallest* ``max_norm`` whose loss is within ``tolerance`` (default 1%, ``--tolerance``) of it,
i.e. ``loss <= best + tolerance * |best|``. The smallest such threshold still clips the largest
share of outlier steps while costing (almost) no loss. Ties go to the smaller threshold.
When the recommended threshold clips more than half the steps, a ``note`` says so and names the
next larger threshold within the tolerance that clips at most half: AdamW divides by its
second-moment estimate, so rescaling *every* gradient costs it little loss, and the loss alone cannot
tell a threshold that catches outliers from one that rescales the typical step.

Then one more run at the recommended threshold with a different seed (``seed + 1`` unless
``--confirm-seed``) is reported beside the grid, so a reader sees whether the loss holds on a seed
the choice was not made on. Outputs: ``clip_sweep.json``, ``clip_sweep.png`` and ``runs/``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..config import TrainConfig, merge
from ..errors import ConfigError
from ..fsutil import finite, write_json_atomic
from ..runtime import check_threads
from .grid import assign
from .recipes import load_recipe
from .sweep import DEFAULT_PRESET, DEFAULT_WORKERS, base_settings, check_existing, is_finite, prepare_out, read_cell, slug

DEFAULT_MAX_NORMS = (0.1, 0.3, 1.0, 3.0, 10.0)
DEFAULT_CLIP_STEPS = 100
DEFAULT_TOLERANCE = 0.01
RULE = ("the smallest max_norm whose final validation loss is within the tolerance of the best: "
        "loss <= best + tolerance * |best|")


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def clip_evidence(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a run's step records say about clipping: share of steps clipped and the pre-clip norm's
    median / 90th percentile / max (non-finite norms counted apart)."""
    norms = [r["grad_norm"] for r in records if is_finite(r.get("grad_norm"))]
    clipped = [bool(r.get("clipped")) for r in records if "clipped" in r]
    losses = [r["loss"] for r in records if is_finite(r.get("loss"))]
    tail = losses[-max(1, len(losses) // 10):] if losses else []
    return {
        "steps": len(records),
        "clipped_share": sum(clipped) / len(clipped) if clipped else None,
        "grad_norm_median": statistics.median(norms) if norms else None,
        "grad_norm_p90": _percentile(norms, 90) if norms else None,
        "grad_norm_max": max(norms) if norms else None,
        "nonfinite_norms": sum(1 for r in records if "grad_norm" in r and not is_finite(r.get("grad_norm"))),
        "train_loss_tail": statistics.fmean(tail) if tail else None,
    }


def recommend_max_norm(rows: Sequence[dict[str, Any]], tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Apply the rule to ``rows`` (each with ``max_norm`` and ``final_loss``, None when diverged).

    Returns ``{"recommended", "best_loss", "best_max_norm", "within", "rule", "tolerance", "reason"}``;
    ``recommended`` is None when no run has a finite loss."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ConfigError(f"--tolerance must be zero or more, got {tolerance}")
    ok = [r for r in rows if is_finite(r.get("final_loss"))]
    out: dict[str, Any] = {"rule": RULE, "tolerance": tolerance}
    if not ok:
        return {**out, "recommended": None, "best_loss": None, "best_max_norm": None, "within": [], "note": None,
                "reason": "no max_norm gave a finite loss: lower the learning rate"}
    best_row = min(ok, key=lambda r: (r["final_loss"], r["max_norm"]))
    best = best_row["final_loss"]
    limit = best + tolerance * abs(best)
    within = sorted(r["max_norm"] for r in ok if r["final_loss"] <= limit)
    rec = within[0]
    rec_loss = next(r["final_loss"] for r in ok if r["max_norm"] == rec)
    reason = (f"max_norm {rec:g} is the smallest whose loss {rec_loss:.4f} is within {tolerance:.1%} of the best "
              f"{best:.4f} (max_norm {best_row['max_norm']:g})")
    smaller = [r for r in rows if r["max_norm"] < rec]
    if smaller:
        worst = ", ".join(f"{r['max_norm']:g}: {'diverged' if not is_finite(r.get('final_loss')) else format(r['final_loss'], '.4f')}"
                          for r in sorted(smaller, key=lambda r: r["max_norm"]))
        reason += f"; smaller thresholds cost loss ({worst})"
    note = None
    share = next((r.get("clipped_share") for r in ok if r["max_norm"] == rec), None)
    if is_finite(share) and share > 0.5:
        note = (f"max_norm {rec:g} clips {share:.0%} of steps: it rescales the typical step, not only outliers. "
                "Adam-type optimizers are nearly invariant to that, so the loss barely shows it; a threshold that "
                "clips only outliers is the next larger one in the grid that is also within the tolerance")
        larger = [m for m in within if m > rec and is_finite(next((r.get("clipped_share") for r in ok if r["max_norm"] == m), None))
                  and next(r.get("clipped_share") for r in ok if r["max_norm"] == m) <= 0.5]
        note += f" ({larger[0]:g})" if larger else " (none here)"
    return {**out, "recommended": rec, "best_loss": best, "best_max_norm": best_row["max_norm"], "within": within,
            "reason": reason, "note": note}


@dataclass
class ClipSweep:
    """Short trainings over a grid of ``max_norm`` values, a recommendation, and one confirmation run."""

    out: str
    max_norms: Sequence[float] = DEFAULT_MAX_NORMS
    steps: int = DEFAULT_CLIP_STEPS
    preset: str = DEFAULT_PRESET
    lr: float | None = None
    seed: int = 0
    confirm_seed: int | None = None
    tolerance: float = DEFAULT_TOLERANCE
    recipe: str = "baseline"
    workers: int = DEFAULT_WORKERS
    executor: str = "local"
    settings: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    threads: int | None = None
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        from ..models.presets import PRESETS

        if self.preset not in PRESETS:
            raise ConfigError(f"unknown --preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if len(self.max_norms) < 2:
            raise ConfigError("--max-norms needs at least two thresholds to choose between")
        if self.tolerance < 0 or not math.isfinite(self.tolerance):
            raise ConfigError(f"--tolerance must be zero or more, got {self.tolerance}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be positive, got {self.workers}")
        if self.threads is not None:
            check_threads(self.threads)
        if self.seed < 0 or (self.confirm_seed is not None and self.confirm_seed < 0):
            raise ConfigError("--seed and --confirm-seed must be zero or more")
        varied = [k for k, v in self.settings.items() if len(v) > 1]
        if varied:
            raise ConfigError(f"--set {varied[0]}: sweep clip takes one value per --set (the grid is --max-norms)")
        if "clip.method" in self.settings or "clip.max_norm" in self.settings:
            raise ConfigError("--set clip.*: sweep clip sets the clipper itself (global-norm clipping at each --max-norms)")
        if self.confirm_seed is None:
            self.confirm_seed = self.seed + 1
        self.recipe_obj = load_recipe(self.recipe, self.preset)
        self.outp = Path(self.out)
        self.runs_dir = self.outp / "runs"
        self.grid_cells = [self._cell(f"max_norm={slug(m)}", m, self.seed) for m in self.max_norms]

    def _config(self, max_norm: float, seed: int) -> dict[str, Any]:
        d = merge(base_settings(self.steps, self.preset, {k: v[0] for k, v in self.settings.items()}), self.recipe_obj.options)
        for k, v in self.settings.items():
            assign(d, k, v[0])
        assign(d, "clip.method", "norm")
        assign(d, "clip.max_norm", max_norm)
        if self.lr is not None:
            assign(d, "optim.lr", self.lr)
        d["seed"] = seed
        conf = TrainConfig.from_dict(d, origin=f"sweep clip (max_norm {max_norm:g})").to_dict()
        conf.pop("out")
        conf.pop("threads")
        return conf

    def _cell(self, name: str, max_norm: float, seed: int):
        from .sweep import Cell

        return Cell(name, name, self.recipe_obj.name, self.lr or 0.0, seed, {"clip.max_norm": max_norm},
                    self._config(max_norm, seed))

    def _row(self, cell) -> dict[str, Any]:
        from ..train.monitor import read_metrics

        d = self.runs_dir / cell.name
        r = read_cell(d)
        ev = clip_evidence(read_metrics(d))
        return {"max_norm": cell.factors["clip.max_norm"], "seed": cell.seed, "final_loss": r["final_loss"],
                "diverged": r["diverged"], "status": r["status"], **ev, "init_loss": r["init_loss"],
                "seconds": r["seconds"], "cell": cell.name}

    def run(self) -> dict[str, Any]:
        with prepare_out(self.outp, "clip"):  # one sweep per folder, until it ends
            return self._run()

    def _run(self) -> dict[str, Any]:
        from ..progress import make_progress
        from .executor import cell_done, execute, threads_per_worker

        check_existing(self.grid_cells, self.runs_dir)
        self.runs_dir.mkdir(exist_ok=True)
        threads = self.threads or threads_per_worker(self.workers)
        write_json_atomic(self.outp / "plan.json", {"kind": "clip", "steadylm": __version__,
                                                    "cells": [c.name for c in self.grid_cells]})
        t0 = time.perf_counter()
        specs = [c.spec(self.runs_dir, threads, self.keep_checkpoints) for c in self.grid_cells]
        with make_progress() as bar:
            done = sum(cell_done(s["dir"]) for s in specs)
            task = bar.add_task("clip sweep", total=len(specs) + 1, completed=done, info="")
            upd = lambda spec, status: bar.update(task, advance=1, info=f"{spec['name']} {status}")  # noqa: E731
            execute(specs, workers=self.workers, executor=self.executor, on_done=upd)
            grid = [self._row(c) for c in self.grid_cells]
            rec = recommend_max_norm(grid, self.tolerance)
            confirmation = None
            if rec["recommended"] is not None:
                m = rec["recommended"]
                cell = self._cell(f"confirm-max_norm={slug(m)}-seed{self.confirm_seed}", m, self.confirm_seed)
                check_existing([cell], self.runs_dir)
                # the same threads as the grid's runs: its loss is compared with theirs
                execute([cell.spec(self.runs_dir, threads, self.keep_checkpoints)], workers=1, executor=self.executor, on_done=upd)
                confirmation = self._row(cell)
                same = next(g for g in grid if g["max_norm"] == m)
                if is_finite(confirmation["final_loss"]) and is_finite(same["final_loss"]):
                    confirmation["diff_vs_grid"] = confirmation["final_loss"] - same["final_loss"]
                    limit = rec["best_loss"] + self.tolerance * abs(rec["best_loss"])
                    confirmation["within_tolerance_of_best"] = confirmation["final_loss"] <= limit
            else:
                bar.update(task, advance=1)
        self.seconds = time.perf_counter() - t0
        result = finite({
            "recommended": rec["recommended"], "reason": rec["reason"], "note": rec["note"], "rule": rec["rule"],
            "tolerance": self.tolerance,
            "best_loss": rec["best_loss"], "best_max_norm": rec["best_max_norm"], "within_tolerance": rec["within"],
            "grid": grid, "confirmation": confirmation,
            "factors": {"clip.max_norm": list(self.max_norms)},
            "signature": self.signature(),
        })
        write_json_atomic(self.outp / "clip_sweep.json", result)
        from .plots import plot_clip_sweep

        plot_clip_sweep(result, self.outp / "clip_sweep.png")
        return result

    def signature(self) -> dict[str, Any]:
        c = self.grid_cells[0].config
        sig = {"steadylm": __version__, "preset": c["model"]["preset"], "data": c["data"]["source"], "steps": self.steps,
               "context": c["data"]["context"], "vocab_size": c["data"]["vocab_size"], "batch_size": c["optim"]["batch_size"],
               "lr": c["optim"]["lr"], "seed": self.seed, "confirm_seed": self.confirm_seed, "recipe": self.recipe_obj.to_dict(),
               "clip": "global L2 norm of all gradients (clip.method=norm)",
               "final_loss": "validation loss (nats/token) of the final weights",
               "clipped_share": "share of optimizer steps whose pre-clip norm exceeded max_norm (metrics.jsonl 'clipped')"}
        sig["string"] = "|".join([f"steadylm:{__version__}", f"preset:{sig['preset']}", f"steps:{self.steps}",
                                  f"lr:{sig['lr']:g}", f"seed:{self.seed}", f"confirm:{self.confirm_seed}",
                                  f"max_norms:{','.join(f'{m:g}' for m in self.max_norms)}", f"tol:{self.tolerance:g}"])
        return sig


def print_clip_sweep(result: dict[str, Any], out: str | Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console = Console(soft_wrap=True, width=200)
    f = lambda x, p=4: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
    t = Table(title="clipping threshold sweep (global-norm clipping)")
    for col in ("max_norm", "final loss", "steps clipped", "median norm", "p90 norm", "max norm", ""):
        t.add_column(col, justify="right")
    rows = list(result["grid"])
    conf = result.get("confirmation")
    for r in rows:
        mark = "recommended" if r["max_norm"] == result["recommended"] else ""
        t.add_row(f"{r['max_norm']:g}", f(r["final_loss"]) if not r["diverged"] else "diverged",
                  "-" if r["clipped_share"] is None else f"{r['clipped_share']:.0%}", f(r["grad_norm_median"], 3),
                  f(r["grad_norm_p90"], 3), f(r["grad_norm_max"], 3), mark)
    if conf:
        t.add_row(f"{conf['max_norm']:g}", f(conf["final_loss"]) if not conf["diverged"] else "diverged",
                  "-" if conf["clipped_share"] is None else f"{conf['clipped_share']:.0%}", f(conf["grad_norm_median"], 3),
                  f(conf["grad_norm_p90"], 3), f(conf["grad_norm_max"], 3), f"confirmation, seed {conf['seed']}")
    console.print(t)
    console.print(f"rule: {result['rule']} (tolerance {result['tolerance']:.1%})")
    if result["recommended"] is None:
        console.print(f"[bold red]no recommendation[/]: {result['reason']}")
    else:
        console.print(f"[bold]recommended --max-norm {result['recommended']:g}[/]: {result['reason']}")
        if result.get("note"):
            console.print(f"note: {result['note']}")
        if conf and conf.get("diff_vs_grid") is not None:
            console.print(f"confirmation run (seed {conf['seed']}): loss {conf['final_loss']:.4f} "
                          f"({conf['diff_vs_grid']:+.4f} vs the grid's run; "
                          f"{'within' if conf['within_tolerance_of_best'] else 'outside'} the tolerance of the best)")
    out = Path(out)
    console.print(f"results: {out / 'clip_sweep.json'}  plot: {out / 'clip_sweep.png'}  runs: {out / 'runs'}/")


def run_clip_sweep(out: str, **kw: Any) -> dict[str, Any]:
    return ClipSweep(out=out, **kw).run()


__all__ = ["ClipSweep", "RULE", "clip_evidence", "print_clip_sweep", "recommend_max_norm", "run_clip_sweep"]
