"""``steadylm sweep``: learning-rate sensitivity and seed variance of training recipes.

Follows Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities" (arXiv:2309.14322): train the same small model over a log-spaced learning-rate grid
for each recipe, and summarise each recipe's curve by its *LR sensitivity*

    LR sensitivity = mean over the LR grid of ( min(final loss(lr), loss at init) - best final loss ),

so a run that diverges (or ends worse than it started) counts as if it had not trained at all,
and a recipe that trains well over a wide range of learning rates scores near 0.

What steadylm measures, exactly:

* **final loss** - the validation loss (nats per token, disjoint windows of ``data.context``
  tokens as ``steadylm eval perplexity`` scores them) of the final weights, on the held-out split of
  the training data. Not a mean of the last training losses: those depend on the batches seen.
  A run whose validation loss is NaN/Inf, or that the spike guard stopped, is *diverged* and its
  final loss is null in ``sweep.json``.
* **loss at init** - the training loss of step 1, computed before the first update (so the same
  for every learning rate of a recipe and seed). We use it instead of a separate validation pass
  over the untrained model: a freshly initialised model predicts nearly uniformly, and the two agree
  to about 0.01 nats.
* **capped loss** of a run = ``min(final loss, loss at init)``, or the loss at init when diverged.
* With several seeds, the recipe's curve is the mean capped loss over seeds at each LR;
  ``best_loss`` is its minimum and ``lr_sensitivity`` the mean of (curve - best_loss).
  ``seed_variance`` gives mean/std (sample, ddof=1)/min/max of the capped loss across seeds at each LR,
  and the spread of each seed's own LR sensitivity and best loss.

Beside the seed spread each recipe gets, per `seed_interval`, a 95% t-interval over seeds of each
seed's own LR sensitivity and best loss (``lr_sensitivity_ci``, ``best_loss_ci``); ``runs_diverged``
counts the runs the cap replaced (non-finite, stopped, or ending above their loss at init: wider than
``diverged``, the non-finite ones); and, when the runs were monitored (``monitor_every``), the max
attention logit and final log Z at the grid's highest LR (``at_top_lr``). A named study
(``--study``, `steadylm.study.studies`) adds a ``study`` block and ``attention_logits.png``.

Any other training option can be a factor of the grid (``--set optim.batch_size=8,16``); each
combination of recipe and factors is a separate entry of ``sweep.json``'s ``recipes`` (named
``recipe key=value ...``) with its own curve.

The built-in study (``steadylm sweep --recipes baseline,stabilized`` with nothing else) uses:

* preset ``tiny`` (``tiny-qknorm`` for ``stabilized``), the built-in corpus ``builtin:pydoc``,
  byte-level BPE vocabulary 1024, context 64, batch 16, 150 steps (5% warm-up, cosine to 10%);
* learning rates 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1 (six points, half a decade apart);
* seeds 0 and 1; 2 workers of 1 thread each on a 2-core machine.

That is 24 runs of 150 x 16 x 64 = 153,600 tokens each. Timed on the 2-core development machine:
one such run costs about 40 CPU-seconds (150 steps at ~0.23 s plus ~6 s for tokenizer, validation
and saving), so the study needs ~24 x 40 / 2 + ~15 s of start-up = about 8-9 minutes when the two
cores are its own, and about 13 minutes when other work takes a third of them. ``--steps 120``
takes a fifth off. Outputs in ``--out``: ``runs/<cell>/`` (one training run folder per cell),
``sweep.json``, ``lr_sensitivity.png`` and ``plan.json`` (the grid, for resuming). A finished
cell's ``checkpoints/`` folder is removed (``--keep-run-checkpoints`` keeps it); its ``model/`` stays.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..config import TrainConfig, merge
from ..errors import ConfigError, SteadyError
from ..fsutil import FolderLock, check_out_dir, finite, folder_contents, write_json_atomic
from ..io import read_json, read_json_object_or_empty
from ..runtime import check_threads
from .grid import assign
from .recipes import Recipe, load_recipes

DEFAULT_RECIPES = ("baseline", "stabilized")
DEFAULT_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
DEFAULT_SEEDS = (0, 1)
DEFAULT_STEPS = 150
DEFAULT_PRESET = "tiny"
DEFAULT_WORKERS = 2

#: settings every cell of a sweep shares unless a recipe or --set says otherwise
STUDY_BASE: dict[str, Any] = {
    "data": {"source": "builtin:pydoc", "context": 64, "vocab_size": 1024},
    "optim": {"batch_size": 16},
    "eval_batch_size": 32,
}

FINAL_LOSS_DEF = "validation loss (nats/token) of the final weights; null when non-finite or stopped by the guard"
INIT_LOSS_DEF = "training loss of step 1, before any update"
FORMULA = "mean over LRs of (min(final loss, loss at init) - best final loss); seeds averaged per LR first"


@dataclass
class Cell:
    """One training run of the grid."""

    name: str
    variant: str
    recipe: str
    lr: float
    seed: int
    factors: dict[str, Any]
    config: dict[str, Any]

    def spec(self, runs_dir: Path, threads: int, keep_checkpoints: bool = False) -> dict[str, Any]:
        return {"dir": str((runs_dir / self.name).resolve()), "config": self.config, "threads": threads,
                "name": self.name, "keep_checkpoints": keep_checkpoints}


def slug(v: Any) -> str:
    s = f"{v:g}" if isinstance(v, float) else str(v)
    return "".join(c if c.isalnum() or c in "._=+-" else "_" for c in s)


def variant_name(recipe: str, factors: dict[str, Any]) -> str:
    return " ".join([recipe] + [f"{k}={slug(v)}" for k, v in factors.items()])


def base_settings(steps: int, preset: str, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings every cell starts from (before its recipe)."""
    base = merge(STUDY_BASE, {"steps": steps, "model": {"preset": preset},
                              "checkpoint": {"every": max(1, steps // 3), "keep": 1}})
    for k, v in (fixed or {}).items():
        assign(base, k, v)
    return base


def plan_cells(recipes: Sequence[Recipe], lrs: Sequence[float], seeds: Sequence[int], *, steps: int, preset: str,
               factors: dict[str, tuple[Any, ...]] | None = None) -> list[Cell]:
    """Every cell of ``recipes x lrs x seeds x factors``, each config built and validated."""
    factors = dict(factors or {})
    fixed = {k: v[0] for k, v in factors.items() if len(v) == 1}
    varied = {k: v for k, v in factors.items() if len(v) > 1}
    base = base_settings(steps, preset)
    cells = []
    for r in recipes:
        for combo in itertools.product(*varied.values()) if varied else [()]:
            fac = dict(zip(varied, combo))
            for lr in lrs:
                for seed in seeds:
                    d = copy.deepcopy(merge(base, r.options))  # assign() writes into nested tables: never the shared ones
                    for k, v in {**fixed, **fac}.items():
                        assign(d, k, v)
                    assign(d, "optim.lr", lr)
                    d["seed"] = seed
                    label = " ".join(f"{k}={v}" for k, v in {**fixed, **fac}.items())
                    origin = f"recipe {r.name}" + (f" with --set {label}" if label else "")
                    try:
                        cfg = TrainConfig.from_dict(d, origin=origin)
                    except ConfigError as e:
                        msg = str(e)
                        raise ConfigError(msg if msg.startswith(origin) else f"{origin}: {msg}") from None
                    name = "-".join([slug(r.name), f"lr{slug(lr)}", f"seed{seed}"] + [f"{k}={slug(v)}" for k, v in fac.items()])
                    conf = cfg.to_dict()
                    conf.pop("out")
                    conf.pop("threads")
                    cells.append(Cell(name, variant_name(r.name, fac), r.name, lr, seed, fac, conf))
    return cells


def _comparable(conf: dict[str, Any]) -> str:
    c = dict(conf)
    c.pop("out", None)
    c.pop("threads", None)
    return json.dumps(c, sort_keys=True)


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        # scalars before tables, so a changed --steps is named rather than what follows from it
        for k in sorted(set(a) | set(b), key=lambda k: (isinstance(a.get(k), dict), k)):
            if k in ("out", "threads") and not prefix:
                continue
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
        return prefix.rstrip(".")
    return f"{prefix.rstrip('.')} {b!r} there, {a!r} now"


def check_existing(cells: Sequence[Cell], runs_dir: Path) -> None:
    """Refuse to mix: a cell folder that already holds a run with other settings stops the sweep."""
    for c in cells:
        saved = runs_dir / c.name / "config.json"
        if not saved.is_file():
            continue
        old = read_json_object_or_empty(saved)
        if not old:
            continue  # a half-written folder: the executor starts it again
        if _comparable(old) != _comparable(json.loads(json.dumps(c.config))):
            raise ConfigError(f"--out {runs_dir.parent}: cell {c.name} was trained with other settings "
                              f"({_first_difference(json.loads(json.dumps(c.config)), old)}); choose another --out")


def prepare_out(out: Path, kind: str) -> FolderLock:
    """Create ``out`` or accept one this kind of sweep wrote; refuse any other non-empty folder.
    Returns the folder's lock, held: the caller releases it when the sweep ends."""
    plan = out / "plan.json"
    check_out_dir(out)
    lock = FolderLock(out)
    if out.is_dir():
        lock.acquire()  # before reading plan.json: another sweep may be writing it
    if folder_contents(out):
        if not plan.is_file():
            lock.release()
            raise ConfigError(f"--out {out}: folder is not empty and holds no steadylm sweep; choose another folder")
        old_kind = read_json_object_or_empty(plan).get("kind")
        if old_kind != kind:
            lock.release()
            raise ConfigError(f"--out {out}: holds a {old_kind or 'different'} sweep, not a {kind} sweep; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    return lock.acquire()


# --------------------------------------------------------------------------- reading results


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_cell(run_dir: str | Path) -> dict[str, Any]:
    """The numbers of one finished cell, from its files (``summary.json``, ``metrics.jsonl``)."""
    from ..train.monitor import read_metrics

    from .executor import CELL_STATUS

    d = Path(run_dir)
    if (d / "summary.json").is_file():
        summary = read_json(d / "summary.json", error=SteadyError)
    else:  # a run the sweep had to close itself (see executor.run_cell)
        summary = {"stopped": read_json(d / CELL_STATUS, error=SteadyError)["reason"]}
    steps = read_metrics(d)
    first = next((r for r in steps if r.get("step") == 1), None)
    init = first.get("loss") if first else None
    losses = [r["loss"] for r in steps if is_finite(r.get("loss"))]
    tail = losses[-10:]
    stopped = "stopped" in summary
    val = summary.get("val_loss")
    final = float(val) if is_finite(val) and not stopped else None
    clipped = [bool(r.get("clipped")) for r in steps if "clipped" in r]
    attn = [r["max_attn_logit"] for r in steps if is_finite(r.get("max_attn_logit"))]
    log_z = [r["log_z_mean"] for r in steps if is_finite(r.get("log_z_mean"))]
    return {
        "final_loss": final,
        "init_loss": float(init) if is_finite(init) else None,
        "diverged": final is None,
        "status": ("stopped" if (d / "summary.json").is_file() else "overflow") if stopped
        else ("finished" if final is not None else "nonfinite"),
        "train_loss_tail": sum(tail) / len(tail) if tail else None,
        "val_perplexity": summary.get("val_perplexity") if final is not None else None,
        "incidents": summary.get("incidents"),
        "skipped_steps": summary.get("skipped_steps"),
        "clipped_share": sum(clipped) / len(clipped) if clipped else None,
        "seconds": summary.get("seconds"),
        "stopped": summary.get("stopped"),
        # the monitor's (``monitor_every``): None when the run was not monitored
        "max_attn_logit": max(attn) if attn else None,
        "final_log_z": log_z[-1] if log_z else None,
    }


def capped_loss(run: dict[str, Any]) -> float | None:
    """``min(final loss, loss at init)``; the loss at init for a diverged run."""
    init, final = run.get("init_loss"), run.get("final_loss")
    if not is_finite(init):
        return final if is_finite(final) else None
    return min(final, init) if is_finite(final) else init


def _spread(xs: list[float]) -> dict[str, Any]:
    xs = [x for x in xs if is_finite(x)]
    if not xs:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": len(xs), "mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "min": min(xs), "max": max(xs)}


#: two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (scipy is not a dependency);
#: the normal's 1.96 beyond
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

SEED_INTERVAL_DEF = ("95% t-interval (mean +- t(0.975, n-1) * std / sqrt(n)) of the n seeds' own values; "
                     "with 3 seeds t = 4.30, so the interval is wide by design")
DIVERGED_DEF = ("runs_diverged: final validation loss non-finite (or the guard stopped the run), or above the run's "
                "loss at init - the runs the cap replaces by their loss at init; diverged: the non-finite ones only")


def seed_interval(xs: Sequence[Any]) -> dict[str, Any]:
    """``{"n", "mean", "low", "high"}``: the 95% t-interval of the mean of one number per seed (no
    interval from a single seed). Seeds are few, so the t quantile rather than the normal's."""
    xs = [x for x in xs if is_finite(x)]
    if not xs:
        return {"n": 0, "mean": None, "low": None, "high": None}
    m = statistics.fmean(xs)
    if len(xs) == 1:
        return {"n": 1, "mean": m, "low": None, "high": None}
    half = (_T975[len(xs) - 2] if len(xs) - 1 <= len(_T975) else 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))
    return {"n": len(xs), "mean": m, "low": m - half, "high": m + half}


def ended_diverged(run: dict[str, Any]) -> bool:
    """Non-finite (or stopped), or ended above its loss at init: see `DIVERGED_DEF`."""
    final, init = run.get("final_loss"), run.get("init_loss")
    return not is_finite(final) or (is_finite(init) and final > init)


def _sensitivity(curve: dict[float, float]) -> tuple[float | None, float | None, float | None]:
    """(lr_sensitivity, best_loss, best_lr) of an ``{lr: loss}`` curve."""
    pts = {lr: v for lr, v in curve.items() if is_finite(v)}
    if not pts:
        return None, None, None
    best_lr = min(pts, key=lambda lr: pts[lr])
    best = pts[best_lr]
    return statistics.fmean(v - best for v in pts.values()), best, best_lr


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """LR sensitivity, best loss and seed variance of one recipe's runs (each with ``lr``, ``seed``,
    ``final_loss``, ``init_loss``)."""
    lrs = sorted({r["lr"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    by_lr = {lr: [capped_loss(r) for r in runs if r["lr"] == lr] for lr in lrs}
    curve = {lr: statistics.fmean([v for v in vals if is_finite(v)]) if any(is_finite(v) for v in vals) else None
             for lr, vals in by_lr.items()}
    sens, best, best_lr = _sensitivity(curve)
    per_lr = []
    for lr in lrs:
        row = {"lr": lr, **_spread(by_lr[lr])}
        row["diverged"] = sum(r["diverged"] for r in runs if r["lr"] == lr)
        row["final_loss"] = _spread([r["final_loss"] for r in runs if r["lr"] == lr])  # finite ones only, uncapped
        row["max_attn_logit"] = _spread([r.get("max_attn_logit") for r in runs if r["lr"] == lr])
        per_lr.append(row)
    per_seed = []
    for s in seeds:
        c = {r["lr"]: capped_loss(r) for r in runs if r["seed"] == s}
        ss, sb, sl = _sensitivity(c)
        per_seed.append({"seed": s, "lr_sensitivity": ss, "best_loss": sb, "best_lr": sl})
    stds = [row["std"] for row in per_lr if is_finite(row["std"])]
    inits = [r["init_loss"] for r in runs if is_finite(r.get("init_loss"))]
    return {
        "lr_sensitivity": sens,
        "best_loss": best,
        "best_lr": best_lr,
        "init_loss": statistics.fmean(inits) if inits else None,
        "curve": [{"lr": lr, "loss": curve[lr]} for lr in lrs],
        "diverged": sum(r["diverged"] for r in runs),
        "runs_diverged": sum(ended_diverged(r) for r in runs),
        # intervals over seeds of each seed's own LR sensitivity and best loss (SEED_INTERVAL_DEF)
        "lr_sensitivity_ci": seed_interval([p["lr_sensitivity"] for p in per_seed]),
        "best_loss_ci": seed_interval([p["best_loss"] for p in per_seed]),
        # where instability shows first: the monitor's numbers at the grid's highest learning rate
        "at_top_lr": {"lr": lrs[-1] if lrs else None,
                      **{k: _spread([r.get(k) for r in runs if lrs and r["lr"] == lrs[-1]])
                         for k in ("max_attn_logit", "final_log_z")}},
        "seed_variance": {
            "per_lr": per_lr,
            "per_seed": per_seed,
            "overall": {
                "capped_loss_std_mean": statistics.fmean(stds) if stds else None,
                "capped_loss_std_max": max(stds) if stds else None,
                "lr_sensitivity": _spread([p["lr_sensitivity"] for p in per_seed]),
                "best_loss": _spread([p["best_loss"] for p in per_seed]),
            },
            "std": "sample standard deviation (ddof=1) across seeds of the capped loss "
                   "(per_lr[].final_loss: of the finite final losses, uncapped)",
        },
    }




# --------------------------------------------------------------------------- the sweep


@dataclass
class LRSweep:
    """A grid of ``recipes x lrs x seeds x factors``, one training run per cell."""

    out: str
    recipes: Sequence[str] = DEFAULT_RECIPES
    lrs: Sequence[float] = DEFAULT_LRS
    seeds: Sequence[int] = DEFAULT_SEEDS
    steps: int = DEFAULT_STEPS
    preset: str = DEFAULT_PRESET
    workers: int = DEFAULT_WORKERS
    factors: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    executor: str = "local"
    threads: int | None = None
    keep_checkpoints: bool = False
    study: Any = None
    """the named study (`steadylm.study.studies.Study`) this grid is, if any: adds ``study`` to ``sweep.json``"""

    def __post_init__(self) -> None:
        from ..models.presets import PRESETS
        from .executor import EXECUTORS

        if self.preset not in PRESETS:
            raise ConfigError(f"unknown --preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if self.steps < 1:
            raise ConfigError(f"--steps must be positive, got {self.steps}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be positive, got {self.workers}")
        if self.threads is not None:
            check_threads(self.threads)
        if self.executor not in EXECUTORS:
            raise ConfigError(f"unknown --executor {self.executor!r}; choose one of: {', '.join(EXECUTORS)}")
        if not self.lrs:
            raise ConfigError("--lrs needs at least one learning rate")
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed")
        self.recipe_objs = load_recipes(list(self.recipes), self.preset,
                                        extra=self.study.recipe_defs if self.study is not None else None)
        self.cells = plan_cells(self.recipe_objs, self.lrs, self.seeds, steps=self.steps, preset=self.preset,
                                factors=self.factors)
        self.outp = Path(self.out)
        self.runs_dir = self.outp / "runs"

    def run(self) -> dict[str, Any]:
        with prepare_out(self.outp, "lr"):  # one sweep per folder, until it ends
            return self._run()

    def _run(self) -> dict[str, Any]:
        from ..progress import make_progress
        from .executor import cell_done, execute, threads_per_worker

        check_existing(self.cells, self.runs_dir)
        self.runs_dir.mkdir(exist_ok=True)
        threads = self.threads or threads_per_worker(self.workers)
        specs = [c.spec(self.runs_dir, threads, self.keep_checkpoints) for c in self.cells]
        write_json_atomic(self.outp / "plan.json", {"kind": "lr", "steadylm": __version__, "factors": self.factor_table(),
                                                    "cells": [c.name for c in self.cells]})
        t0 = time.perf_counter()
        cached = sum(cell_done(s["dir"]) for s in specs)
        with make_progress() as bar:
            task = bar.add_task("sweep", total=len(specs), completed=cached,
                                info=f"{cached} done before" if cached else "")
            execute(specs, workers=self.workers, executor=self.executor,
                    on_done=lambda spec, status: bar.update(task, advance=1, info=f"{spec['name']} {status}"))
        self.seconds = time.perf_counter() - t0
        self.cached = cached
        result = self.collect()
        write_json_atomic(self.outp / "sweep.json", result)
        try:
            from .plots import plot_attention_logits, plot_lr_sensitivity

            plot_lr_sensitivity(result, self.outp / "lr_sensitivity.png")
            if "study" in result:
                plot_attention_logits(result, self.outp / "attention_logits.png")
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            pass
        return result

    def factor_table(self) -> dict[str, list[Any]]:
        t: dict[str, list[Any]] = {"recipe": [r.name for r in self.recipe_objs], "optim.lr": list(self.lrs),
                                   "seed": list(self.seeds)}
        t.update({k: list(v) for k, v in self.factors.items()})
        return t

    def collect(self) -> dict[str, Any]:
        """``sweep.json`` from the cell folders."""
        variants: dict[str, dict[str, Any]] = {}
        recipes = {r.name: r for r in self.recipe_objs}
        for c in self.cells:
            d = self.runs_dir / c.name
            row = {"lr": c.lr, "seed": c.seed, **({"factors": c.factors} if c.factors else {}), **read_cell(d),
                   "cell": c.name}
            v = variants.setdefault(c.variant, {"recipe": c.recipe, "factors": c.factors, "runs": []})
            v["runs"].append(row)
        out: dict[str, Any] = {}
        first = None
        for name, v in variants.items():
            runs = sorted(v["runs"], key=lambda r: (r["lr"], r["seed"]))
            s = summarize_runs(runs)
            r = recipes[v["recipe"]]
            entry = {"lr_sensitivity": s.pop("lr_sensitivity"), "best_loss": s.pop("best_loss"), **s,
                     "recipe": r.name, "factors": v["factors"], "description": r.description, "options": r.options,
                     "runs": runs}
            if first is None:
                first = (name, entry)
            else:
                f_name, f = first
                ratio = (entry["lr_sensitivity"] / f["lr_sensitivity"]
                         if is_finite(entry["lr_sensitivity"]) and is_finite(f["lr_sensitivity"]) and f["lr_sensitivity"] > 0 else None)
                diff = (entry["best_loss"] - f["best_loss"]) if is_finite(entry["best_loss"]) and is_finite(f["best_loss"]) else None
                entry["relative_to"] = {"recipe": f_name, "lr_sensitivity_ratio": ratio, "best_loss_diff": diff}
            out[name] = entry
        result = {"recipes": out, "signature": self.signature(), "factors": self.factor_table()}
        if self.study is not None:
            from .studies import study_block

            result["study"] = study_block(self.study, out, self.runs_dir)
        return finite(result)

    def signature(self) -> dict[str, Any]:
        import platform

        import torch

        fingerprint = None
        for c in self.cells:
            fingerprint = read_json_object_or_empty(self.runs_dir / c.name / "run.json").get("data_fingerprint")
            if fingerprint is not None:
                break
        base = base_settings(self.steps, self.preset, {k: v[0] for k, v in self.factors.items() if len(v) == 1})
        sig = {
            "steadylm": __version__,
            "torch": torch.__version__,
            "data": base["data"]["source"],
            "data_fingerprint": fingerprint,
            "preset": self.preset,
            "steps": self.steps,
            "context": base["data"]["context"],
            "vocab_size": base["data"]["vocab_size"],
            "batch_size": base["optim"]["batch_size"],
            "lrs": list(self.lrs),
            "seeds": list(self.seeds),
            "recipes": {r.name: r.to_dict() for r in self.recipe_objs},
            "final_loss": FINAL_LOSS_DEF,
            "init_loss": INIT_LOSS_DEF,
            "lr_sensitivity": FORMULA,
            "reference": "Wortsman et al. 2023, arXiv:2309.14322",
            "runs_diverged": DIVERGED_DEF,
            "intervals": SEED_INTERVAL_DEF,
            "monitor_every": base.get("monitor_every", 0),
            "study": self.study.name if self.study is not None else None,
            "workers": self.workers,
            "threads_per_run": self.threads or None,
            "executor": self.executor,
            "python": platform.python_version(),
        }
        sig["string"] = "|".join([f"steadylm:{__version__}", f"data:{sig['data']}@{fingerprint}", f"preset:{self.preset}",
                                  f"steps:{self.steps}", f"ctx:{sig['context']}", f"vocab:{sig['vocab_size']}",
                                  f"bs:{sig['batch_size']}", f"lrs:{','.join(f'{x:g}' for x in self.lrs)}",
                                  f"seeds:{','.join(map(str, self.seeds))}", "final:val", "init:step1"]
                                 + ([f"study:{self.study.name}"] if self.study is not None else []))
        return sig


def print_sweep(result: dict[str, Any], out: str | Path, *, seconds: float | None = None) -> None:
    """A table of the recipes (LR sensitivity, best loss, seed spread, mean capped loss per LR)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    if not console.is_terminal:  # a log file or a pipe: do not squeeze the table into 80 columns
        console = Console(soft_wrap=True, width=200)
    recipes = result["recipes"]
    lrs = result["factors"]["optim.lr"]
    t = Table(title="LR sensitivity (Wortsman et al. 2023): lower is steadier")
    for col in ("recipe", "LR sens.", "best loss", "best LR", "seed std", "diverged"):
        t.add_column(col, justify="left" if col == "recipe" else "right")
    for lr in lrs:
        t.add_column(f"{lr:g}", justify="right")
    f = lambda x, p=3: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
    for name, e in recipes.items():
        curve = {p["lr"]: p["loss"] for p in e["curve"]}
        std = e["seed_variance"]["overall"]["capped_loss_std_mean"]
        t.add_row(name, f(e["lr_sensitivity"]), f(e["best_loss"]), "-" if e["best_lr"] is None else f"{e['best_lr']:g}",
                  f(std), f"{e['diverged']}/{len(e['runs'])}", *[f(curve.get(lr)) for lr in lrs])
    console.print(t)
    console.print("columns per LR: mean over seeds of min(final val loss, loss at init)")
    for name, e in recipes.items():
        rel = e.get("relative_to")
        if rel and rel["lr_sensitivity_ratio"] is not None:
            console.print(f"{name} / {rel['recipe']}: LR sensitivity x{rel['lr_sensitivity_ratio']:.2f}, "
                          f"best loss {rel['best_loss_diff']:+.3f}")
    out = Path(out)
    if "study" in result:
        from .studies import goal_lines, study_table

        columns, rows = study_table(result)
        study = result["study"]
        st = Table(title=f"study {study['name']}: intervals over seeds, monitor at LR {study['top_lr']:g}")
        for col in columns:
            st.add_column(col, justify="left" if col == "recipe" else "right")
        for row in rows:
            st.add_row(*row)
        console.print(st)
        for line in goal_lines(result):
            console.print(line)
        console.print(f"attention plot: {out / 'attention_logits.png'}")
    console.print(f"results: {out / 'sweep.json'}  plot: {out / 'lr_sensitivity.png'}  runs: {out / 'runs'}/"
                  + (f"  ({seconds:.0f} s)" if seconds is not None else ""))


def run_sweep(out: str, **kw: Any) -> dict[str, Any]:
    """Run (or resume) an LR sweep; returns ``sweep.json``'s content."""
    return LRSweep(out=out, **kw).run()


__all__ = ["DEFAULT_LRS", "DEFAULT_SEEDS", "DEFAULT_STEPS", "LRSweep", "capped_loss", "plan_cells", "read_cell",
           "run_sweep", "summarize_runs", "print_sweep"]
