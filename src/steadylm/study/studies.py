"""Named, fixed studies: ``steadylm sweep --study NAME --out DIR``.

A study is an LR sweep (`LRSweep`) whose every setting - model, steps, batch, context, learning
rates, seeds, recipes - is written here, decided before any of its results was seen, so a number
it reports cannot have been tuned into existence on the command line. Only how it runs
(``--workers``, ``--threads``, ``--executor``) and where (``--out``) are the user's. Its
``sweep.json`` is an ordinary sweep's plus a ``study`` block: the definition, the goal and whether
it was met, and the max attention logit over steps at the highest learning rate for the plot
``attention_logits.png``.

``instability`` follows Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer
training instabilities", arXiv:2309.14322): at a high learning rate attention logits grow without
bound and training diverges, QK-layernorm prevents it, and z-loss prevents the output-logit
divergence; the measure is LR sensitivity over a grid reaching well past the optimum. Where we
differ: a ~1 M-parameter model on two CPU cores for 300 steps, not 10^4 steps of models up to 1 B,
so the effect is expected to be smaller than theirs (see `INSTABILITY`).

The ablation the issue asks for (each stabilizer alone, all, all-but-one) is another `Study` with
more recipes; it waits until QK-Clip, soft-capping, SPAM and Muon are options of training recipes
(`ABLATION_PENDING`), and ``--ablation`` refuses until then rather than run something else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

ABLATION_PENDING = ("--ablation: not yet: needs QK-Clip/SPAM/Muon wired into training recipes "
                    "(issue #12); run --study instability for baseline vs stabilized")


@dataclass(frozen=True)
class Study:
    """A sweep whose every setting is fixed in code."""

    name: str
    recipes: tuple[str, ...]
    """built-in recipes (or files), the reference (the goal's denominator) first"""
    preset: str
    steps: int
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    """any other training option by its TOML path, the same for every cell"""
    goal_ratio: float = 0.5
    """the goal: every other recipe's LR sensitivity at most this share of the reference's, best loss no worse"""
    why: str = ""

    def sweep(self, out: str, *, workers: int, threads: int | None = None, executor: str = "local"):
        """The `LRSweep` that runs this study into ``out``."""
        from .sweep import LRSweep

        return LRSweep(out=out, recipes=self.recipes, lrs=self.lrs, seeds=self.seeds, steps=self.steps, preset=self.preset,
                       workers=workers, factors={k: (v,) for k, v in self.settings.items()}, executor=executor,
                       threads=threads, study=self)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "recipes": list(self.recipes), "preset": self.preset, "steps": self.steps,
                "lrs": list(self.lrs), "seeds": list(self.seeds), "settings": dict(self.settings),
                "goal_ratio": self.goal_ratio, "why": self.why}


INSTABILITY = Study(
    name="instability",
    recipes=("baseline", "stabilized"),
    preset="tiny",
    steps=300,
    lrs=(4e-3, 1.6e-2, 6.3e-2, 0.25, 1.0),
    seeds=(0, 1, 2),
    settings={"data.context": 128, "optim.batch_size": 8, "data.vocab_size": 1024, "monitor_every": 10},
    why=(
        "Fixed before any run of it. Model: preset tiny (Llama, 4 layers, width 128, 4 heads of 32, ~1.1 M parameters at "
        "vocabulary 1024) against tiny-qknorm: one layer deeper than the issue's probe (3 layers, 0.61x), the depth and "
        "length over which attention logits grow. 300 steps (twice the built-in sweep's 150, where nothing diverged) "
        "at context 128 (twice its 64: more keys per query for a logit to dominate), batch 8 (1,024 tokens a step, as the "
        "built-in sweep; the budget allows no more), 5% warm-up and cosine decay to 10% as every sweep. Learning rates: "
        "five points a factor of 4 apart (0.6 decade), from 4e-3 - beside the baseline's optimum in the built-in sweep "
        "(3e-3) - to 1.0, 250x past it, where Wortsman et al. see the baseline fail and QK-norm hold; below the optimum both "
        "recipes only undertrain alike. Seeds 0, 1, 2: the fewest that give an interval. The monitor every 10 steps logs "
        "the max attention logit and log Z. Budget: one run of exactly this cell at LR 1.0 (baseline, seed 0) took 42 s "
        "on one thread of the 2-core machine (load 1.5; 300 steps at 0.126 s plus tokenizer, validation and saving), so "
        "30 runs on 2 workers ~11 min, ~13 with the two workers contending: inside 20 min with a third to spare."),
)
"""The study of issue #12: is `stabilized` steadier than `baseline` where `baseline` goes unstable?"""

STUDIES: dict[str, Study] = {"instability": INSTABILITY}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ConfigError(f"unknown --study {name!r}; known: {', '.join(STUDIES)}")
    return STUDIES[name]


def attention_trace(run_dir: str | Path) -> dict[str, list[float]]:
    """``{"step": [...], "max_attn_logit": [...]}`` of one run, from its ``metrics.jsonl`` (finite values only)."""
    from ..train.monitor import read_metrics

    rows = [r for r in read_metrics(run_dir) if isinstance(r.get("max_attn_logit"), (int, float))
            and math.isfinite(r["max_attn_logit"])]
    return {"step": [r["step"] for r in rows], "max_attn_logit": [float(r["max_attn_logit"]) for r in rows]}


def study_block(study: Study, recipes: dict[str, dict[str, Any]], runs_dir: Path) -> dict[str, Any]:
    """``sweep.json``'s ``study``: the definition, the goal against the first recipe, and the max
    attention logit over steps of every seed at the highest learning rate."""
    from .sweep import is_finite

    top = max(study.lrs)
    ref_name = next(iter(recipes))
    ref = recipes[ref_name]
    goal = []
    for name, e in list(recipes.items())[1:]:
        rel = e.get("relative_to") or {}
        ratio, diff = rel.get("lr_sensitivity_ratio"), rel.get("best_loss_diff")
        met = is_finite(ratio) and is_finite(diff) and ratio <= study.goal_ratio and diff <= 0
        goal.append({"recipe": name, "reference": ref_name, "lr_sensitivity_ratio": ratio, "best_loss_diff": diff,
                     "target": f"lr_sensitivity_ratio <= {study.goal_ratio:g} and best_loss_diff <= 0", "met": bool(met)})
    attention = {name: [{"seed": r["seed"], **attention_trace(runs_dir / r["cell"])} for r in e["runs"] if r["lr"] == top]
                 for name, e in recipes.items()}
    return {"name": study.name, "definition": study.to_dict(), "top_lr": top, "reference": ref_name,
            "reference_lr_sensitivity": ref.get("lr_sensitivity"), "goal": goal,
            "attention_at_top_lr": attention}


def _ci(iv: dict[str, Any] | None, p: int = 3) -> str:
    if not iv or iv.get("low") is None:
        return "-"
    return f"[{iv['low']:.{p}f}, {iv['high']:.{p}f}]"


def study_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of a study's table, as text: what the CLI prints and the report shows."""
    f = lambda x, p=3: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
    columns = ["recipe", "LR sens.", "95% CI (seeds)", "best loss", "95% CI (seeds)", "best LR", "runs diverged",
               "max attn logit at top LR"]
    rows = []
    for name, e in result["recipes"].items():
        top = e.get("at_top_lr") or {}
        attn = top.get("max_attn_logit") or {}
        attn_text = "-" if attn.get("mean") is None else f"{attn['mean']:.3g} (max {attn['max']:.3g})"
        rows.append([name, f(e.get("lr_sensitivity")), _ci(e.get("lr_sensitivity_ci")), f(e.get("best_loss")),
                     _ci(e.get("best_loss_ci")), "-" if e.get("best_lr") is None else f"{e['best_lr']:g}",
                     f"{e.get('runs_diverged', 0)}/{len(e['runs'])}", attn_text])
    return columns, rows


def goal_lines(result: dict[str, Any]) -> list[str]:
    """One line per recipe judged against the reference: the ratio, the best-loss difference, met or not."""
    lines = []
    for g in (result.get("study") or {}).get("goal", []):
        ratio = "-" if g["lr_sensitivity_ratio"] is None else f"{g['lr_sensitivity_ratio']:.2f}x"
        diff = "-" if g["best_loss_diff"] is None else f"{g['best_loss_diff']:+.3f}"
        lines.append(f"goal ({g['target']}): {g['recipe']} / {g['reference']} LR sensitivity {ratio}, "
                     f"best loss {diff}: {'met' if g['met'] else 'not met'}")
    return lines


__all__ = ["ABLATION_PENDING", "INSTABILITY", "STUDIES", "Study", "attention_trace", "get_study", "goal_lines",
           "study_block", "study_table"]
