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

``instability`` with ``--ablation`` is `ABLATION`: the same grid and model over one recipe per
stabilizer alone, all of them, and all but one (`ablation_recipes`), so a user can see what each
one buys on its own and what the set loses without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError


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
    goal_ratio: float | None = 0.5
    """the goal: every other recipe's LR sensitivity at most this share of the reference's, best loss
    no worse; None: the study sets no goal (the ablation only measures)"""
    why: str = ""
    recipe_defs: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """the study's own recipes, in `BUILTIN_RECIPES`'s shape (name -> (description, options))"""

    def sweep(self, out: str, *, workers: int, threads: int | None = None, executor: str = "local"):
        """The `LRSweep` that runs this study into ``out``; `ConfigError` if it needs a GPU and none is there."""
        from .sweep import LRSweep

        if self.settings.get("device") == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"--study {self.name} needs a CUDA GPU and this machine has none "
                                  "(the CPU study is --study instability)")

        return LRSweep(out=out, recipes=self.recipes, lrs=self.lrs, seeds=self.seeds, steps=self.steps, preset=self.preset,
                       workers=workers, factors={k: (v,) for k, v in self.settings.items()}, executor=executor,
                       threads=threads, study=self)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "recipes": list(self.recipes), "preset": self.preset, "steps": self.steps,
                "lrs": list(self.lrs), "seeds": list(self.seeds), "settings": dict(self.settings),
                "goal_ratio": self.goal_ratio, "why": self.why,
                **({"recipe_defs": {k: {"description": d, "options": o} for k, (d, o) in self.recipe_defs.items()}}
                   if self.recipe_defs else {})}


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


#: the ablation's stabilizers, in table order: name -> (what it is, how it is set)
ABLATION_PARTS: dict[str, str] = {
    "qk-norm": "QK-norm (RMSNorm on queries and keys: the -qknorm preset, Qwen3-style)",
    "z-loss": "z-loss 1e-4 (PaLM)",
    "zclip": "ZClip instead of global-norm clipping at 1.0 (Kumar et al. 2025, its defaults)",
    "guard": "spike/NaN guard, action skip (OLMo-core's defaults)",
    "qk-clip": "QK-Clip at tau 100 (Kimi K2's tau)",
    "spam": "SPAM instead of AdamW (pytorch-optimizer, momentum reset every 100 steps)",
}
#: QK-Clip's threshold in the ablation: Kimi K2's (their tau = 100)
ABLATION_QK_CLIP = 100.0
#: Gemma 2's own caps (attention 50, output 30)
ABLATION_SOFTCAPS = {"attn_softcap": 50.0, "final_softcap": 30.0}


def _ablation_options(parts: set[str], *, optimizer: str | None = None, gemma2: bool = False,
                      softcap: bool = False) -> dict[str, Any]:
    """The training options of baseline plus ``parts`` (names of `ABLATION_PARTS`)."""
    preset = "{preset}-qknorm" if "qk-norm" in parts else "{preset}-gemma2" if gemma2 else "{preset}"
    model: dict[str, Any] = {"preset": preset, **(ABLATION_SOFTCAPS if softcap else {})}
    optim: dict[str, Any] = {"weight_decay": 0.1}
    if "spam" in parts:
        optim.update(optimizer="spam", spam_reset_every=100)
    elif optimizer:
        optim["optimizer"] = optimizer
    out: dict[str, Any] = {
        "model": model,
        "clip": {"method": "zclip"} if "zclip" in parts else {"method": "norm", "max_norm": 1.0},
        "optim": optim,
        "guard": {"action": "skip" if "guard" in parts else "off"},
        "z_loss": 1e-4 if "z-loss" in parts else 0.0,
    }
    if "qk-clip" in parts:
        out["qk_clip"] = ABLATION_QK_CLIP
    return out


def ablation_recipes() -> dict[str, tuple[str, dict[str, Any]]]:
    """The ablation's recipes (name -> (description, options)), in table order: the baseline (as the
    built-in ``baseline``), each stabilizer alone, all of them, and all but each one.

    Two stabilizers do not fit the one-architecture frame, and the table says how:
    * soft-capping exists only in the Gemma 2 architecture (transformers' Llama and Qwen3 have no
      such field; Gemma 3 declares it but its attention does not apply it), which also differs from
      Llama in its norms, MLP and embedding scale. So it gets two rows - Gemma 2 without caps, the
      architecture's own reference, and Gemma 2 with Gemma 2's caps - and is not in ``all``, whose
      QK-norm needs the Qwen3 architecture: no stock architecture has both.
    * QK-Clip scales query/key projection weights, which QK-norm makes irrelevant (`QKClip.moot`): in
      ``all`` it does nothing, so ``all - qk-clip`` would repeat ``all`` run for run and is left out;
      ``all - qk-norm`` is where QK-Clip acts.
    Muon + QK-Clip (MuonClip, Kimi K2) is an alternative optimizer recipe, alone; ``all`` uses SPAM.
    """
    parts = list(ABLATION_PARTS)
    defs: dict[str, tuple[str, dict[str, Any]]] = {
        "baseline": ("global-norm clipping at 1.0, AdamW weight decay 0.1; no guard, z-loss, QK-norm", _ablation_options(set())),
    }
    for p in parts:
        defs[f"+{p}"] = (f"baseline + {ABLATION_PARTS[p]}", _ablation_options({p}))
    defs["gemma2"] = ("baseline on the Gemma 2 architecture (no caps): soft-capping's reference",
                      _ablation_options(set(), gemma2=True))
    defs["gemma2+softcap"] = ("baseline on Gemma 2 with its caps: attention 50, output 30",
                              _ablation_options(set(), gemma2=True, softcap=True))
    defs["+muon+qk-clip"] = ("baseline with Muon (matrices; AdamW for the rest) + QK-Clip tau 100: MuonClip",
                             _ablation_options({"qk-clip"}, optimizer="muon"))
    defs["all"] = ("every stabilizer above but soft-capping (needs Gemma 2, no QK-norm there); QK-Clip is moot "
                   "under QK-norm", _ablation_options(set(parts)))
    for p in parts:
        if p == "qk-clip":
            continue
        defs[f"all-{p}"] = (f"all without {p}", _ablation_options(set(parts) - {p}))
    return defs


ABLATION = Study(
    name="instability-ablation",
    recipes=tuple(ablation_recipes()),
    preset=INSTABILITY.preset,
    steps=INSTABILITY.steps,
    lrs=INSTABILITY.lrs,
    seeds=(0,),
    settings=dict(INSTABILITY.settings),
    goal_ratio=None,
    recipe_defs=ablation_recipes(),
    why=(
        "Fixed before any run of it. The instability study's model, data, steps and learning rates exactly (so its "
        "baseline row repeats that study's seed 0), over 16 recipes: baseline; each stabilizer alone (QK-norm, z-loss "
        "1e-4, ZClip, the guard, QK-Clip at Kimi K2's tau 100, SPAM); soft-capping as Gemma 2 with its own caps (50 "
        "attention, 30 output) beside Gemma 2 without them; Muon + QK-Clip; all; all but each one (not QK-Clip: moot "
        "under QK-norm, so that row would repeat `all`). SPAM resets its moments every 100 steps, not the library's "
        "500, which a 300-step run would never reach. One seed (0): 80 runs of ~45 s on 2 workers is ~30-40 minutes; "
        "three seeds would be two hours. So there are no intervals here; read a difference smaller than the "
        "instability study's seed intervals as noise."),
)
"""The ablation of issue #12: what each stabilizer buys alone, and what the set loses without it."""

INSTABILITY_GPU = Study(
    name="instability-gpu",
    recipes=("baseline", "stabilized"),
    preset="medium",
    steps=500,
    lrs=INSTABILITY.lrs,
    seeds=(0, 1, 2),
    settings={"device": "cuda", "precision": "bf16", "data.context": 256, "optim.batch_size": 16,
              "data.vocab_size": 1024, "monitor_every": 10},
    why=(
        "Fixed before any run of it, and not yet run: no GPU was lent while it was written. The CPU study's recipes, "
        "learning rates and seeds at the issue's >= 30 M parameters: preset medium (Llama, 10 layers, width 512, 8 "
        "heads of 64, ~35 M parameters at vocabulary 1024) against medium-qknorm, 500 steps at context 256 and batch "
        "16 (4,096 tokens a step, 4x the CPU study's), bf16 autocast as GPU runs train. Budget, estimated, not "
        "measured: ~15-30 ms a step on an H200 at this size (launch-bound) -> 8-15 s of training a run plus ~20 s of "
        "start-up, tokenizer and validation; 30 runs on 6 workers sharing the GPU -> 3-6 minutes, inside the issue's "
        "8. If the first run takes longer, that is the finding: do not shrink the study after seeing its results."),
)
"""The instability study at >= 30 M parameters, for one GPU (`benchmarks/instability_gpu.sh`)."""

STUDIES: dict[str, Study] = {"instability": INSTABILITY, "instability-gpu": INSTABILITY_GPU}
#: a study's ablation (``--study NAME --ablation``)
ABLATIONS: dict[str, Study] = {"instability": ABLATION}


def get_study(name: str, *, ablation: bool = False) -> Study:
    if name not in STUDIES:
        raise ConfigError(f"unknown --study {name!r}; known: {', '.join(STUDIES)}")
    if ablation:
        if name not in ABLATIONS:
            raise ConfigError(f"--study {name} has no --ablation; studies with one: {', '.join(ABLATIONS)}")
        return ABLATIONS[name]
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
    for name, e in list(recipes.items())[1:] if study.goal_ratio is not None else ():
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
    columns = ["recipe", "LR sens.", "95% CI (seeds)", "x ref.", "best loss", "95% CI (seeds)", "best LR",
               "runs diverged", "max attn logit at top LR", "final log Z at top LR"]
    rows = []
    for name, e in result["recipes"].items():
        top = e.get("at_top_lr") or {}
        attn = top.get("max_attn_logit") or {}
        attn_text = "-" if attn.get("mean") is None else f"{attn['mean']:.3g} (max {attn['max']:.3g})"
        ratio = (e.get("relative_to") or {}).get("lr_sensitivity_ratio")
        rows.append([name, f(e.get("lr_sensitivity")), _ci(e.get("lr_sensitivity_ci")),
                     "-" if ratio is None else f"{ratio:.2f}", f(e.get("best_loss")),
                     _ci(e.get("best_loss_ci")), "-" if e.get("best_lr") is None else f"{e['best_lr']:g}",
                     f"{e.get('runs_diverged', 0)}/{len(e['runs'])}", attn_text,
                     f((top.get("final_log_z") or {}).get("mean"), 2)])
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


__all__ = ["ABLATION", "ABLATIONS", "ABLATION_PARTS", "INSTABILITY", "INSTABILITY_GPU", "ablation_recipes", "STUDIES", "Study", "attention_trace", "get_study", "goal_lines",
           "study_block", "study_table"]
