"""PNG plots of the studies, drawn from their JSON results with matplotlib's object API (no pyplot
state, no display), written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

COLORS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]
#: past len(COLORS) recipes (the ablation has 16) the colors repeat with another line style and marker
LINESTYLES = [("-", "o"), ("--", "s"), (":", "^")]
DPI = 100


def _style(i: int) -> tuple[str, str, str]:
    """(color, line style, marker) of the i-th recipe: distinct for up to 24 recipes."""
    ls, marker = LINESTYLES[(i // len(COLORS)) % len(LINESTYLES)]
    return COLORS[i % len(COLORS)], ls, marker


def _legend(ax, n: int) -> None:
    """A legend that stays readable with many recipes: two columns, outside the axes, past 8."""
    if n > len(COLORS):
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)


def _figure(w: float = 9.0, h: float = 5.0, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def plot_lr_sensitivity(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Final loss against learning rate per recipe: each seed a point (a cross where it diverged -
    non-finite or above its loss at init - drawn at its capped value, the loss at init, so one blown-up
    run does not squash the axis), the seed mean of the capped loss a line, the seeds' range a band; log x."""
    from .sweep import ended_diverged

    many = len(result["recipes"]) > len(COLORS)
    fig, (ax,) = _figure(13.0 if many else 9.0, 6.0 if many else 5.0)
    inits = []
    for i, (name, e) in enumerate(result["recipes"].items()):
        color, ls, marker = _style(i)
        ok = [(r["lr"], r["final_loss"]) for r in e["runs"] if not ended_diverged(r)]
        bad = [(r["lr"], r["init_loss"]) for r in e["runs"] if ended_diverged(r) and _ok(r.get("init_loss"))]
        if ok:
            ax.scatter(*zip(*ok), color=color, alpha=0.45, s=18)
        if bad:
            ax.scatter(*zip(*bad), color=color, marker="x", s=40)
        curve = [(p["lr"], p["loss"]) for p in e["curve"] if _ok(p["loss"])]
        band = [(row["lr"], row["min"], row["max"]) for row in e.get("seed_variance", {}).get("per_lr", [])
                if row.get("n", 0) > 1 and _ok(row.get("min")) and _ok(row.get("max"))]
        if band:  # the seeds' range of the capped loss at each LR
            ax.fill_between(*zip(*band), color=color, alpha=0.15, lw=0)
        sens = e.get("lr_sensitivity")
        label = f"{name} (LR sens. {sens:.3f})" if _ok(sens) else name
        if curve:
            ax.plot(*zip(*curve), color=color, ls=ls, marker=marker, lw=2, label=label)
        if _ok(e.get("init_loss")):
            inits.append(e["init_loss"])
    if inits:
        ax.axhline(sum(inits) / len(inits), color="#999999", ls="--", lw=1, label="loss at init (cap)")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss (nats/token)")
    sig = result.get("signature", {})
    ax.set_title(f"LR sensitivity: {sig.get('preset', '')}, {sig.get('steps', '')} steps, "
                 f"seeds {','.join(map(str, sig.get('seeds', [])))}\n(points: seeds, x: diverged, at its cap; "
                 "line: mean of capped loss; band: range over seeds)",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, len(result["recipes"]) + 1)
    return _save(fig, path)


def plot_attention_logits(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """A study's max attention logit (the monitor's, over all heads and layers) against step at its
    highest learning rate: one line per seed, one color per recipe; log y, as the logits of an
    unstable run grow by orders of magnitude (Wortsman et al. 2023, fig. 1)."""
    study = result["study"]
    n = len(study["attention_at_top_lr"])
    fig, (ax,) = _figure(13.0 if n > len(COLORS) else 9.0, 6.0 if n > len(COLORS) else 5.0)
    drawn = False
    for i, (name, traces) in enumerate(study["attention_at_top_lr"].items()):
        color, ls, _ = _style(i)
        for k, t in enumerate(traces):
            pts = [(s, v) for s, v in zip(t["step"], t["max_attn_logit"]) if _ok(v) and v > 0]
            if pts:
                ax.plot(*zip(*pts), color=color, ls=ls, lw=1.5, alpha=0.8, label=name if k == 0 else None)
                drawn = True
    if drawn:
        ax.set_yscale("log")
        _legend(ax, n)
    from matplotlib import ticker

    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # steps are whole
    ax.set_xlabel("step")
    ax.set_ylabel("max pre-softmax attention logit (before any soft-cap)")
    ax.set_title(f"study {study['name']}: max attention logit at LR {study['top_lr']:g} (one line per seed)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_clip_sweep(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Loss reached and share of steps clipped against max_norm (log x); the recommendation marked,
    the confirmation run beside it."""
    fig, (ax1, ax2) = _figure(11.0, 4.5, ncols=2)
    rows = result["grid"]
    xs = [r["max_norm"] for r in rows]
    ys = [r["final_loss"] if _ok(r["final_loss"]) else math.nan for r in rows]
    ax1.plot(xs, ys, marker="o", color=COLORS[0], label="grid")
    best = result.get("best_loss")
    tol = result.get("tolerance", 0.01)
    if _ok(best):
        ax1.axhspan(best, best * (1 + tol), color=COLORS[1], alpha=0.15, label=f"within {tol:.0%} of best")
    rec = result.get("recommended")
    conf = result.get("confirmation")
    if rec is not None:
        ax1.axvline(rec, color=COLORS[1], ls="--", label=f"recommended {rec:g}")
        if conf and _ok(conf.get("final_loss")):
            ax1.scatter([rec], [conf["final_loss"]], marker="*", s=160, color=COLORS[2], zorder=5,
                        label=f"confirmation run (seed {conf['seed']})")
    ax1.set_xscale("log")
    ax1.set_xlabel("max_norm")
    ax1.set_ylabel("final validation loss")
    ax1.legend(fontsize=8)
    ax1.grid(True, which="both", alpha=0.3)
    share = [r["clipped_share"] if _ok(r.get("clipped_share")) else math.nan for r in rows]
    ax2.plot(xs, [100 * s for s in share], marker="o", color=COLORS[3], label="steps clipped")
    med = [r.get("grad_norm_median") for r in rows]
    if all(_ok(m) for m in med):
        ax3 = ax2.twinx()
        ax3.plot(xs, med, marker="s", ls=":", color=COLORS[4], label="median pre-clip grad norm")
        ax3.set_ylabel("median pre-clip grad norm")
        ax3.legend(fontsize=8, loc="center right")
    if rec is not None:
        ax2.axvline(rec, color=COLORS[1], ls="--")
    ax2.set_xscale("log")
    ax2.set_xlabel("max_norm")
    ax2.set_ylabel("% of steps clipped")
    ax2.set_ylim(-3, 103)
    ax2.legend(fontsize=8, loc="upper right")
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle("choosing the clipping threshold: the smallest max_norm whose loss is within "
                 f"{tol:.0%} of the best", fontsize=10)
    return _save(fig, path)


def plot_decoding_sweep(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Consistency, diversity and reference score against temperature, one line per top-p."""
    fig, axes = _figure(13.0, 4.2, ncols=3)
    cells = result["cells"]
    panels = [("self_bleu", "consistency: self-BLEU across samples"), ("distinct_2", "diversity: distinct-2 (corpus)"),
              ("chrf", "reference: chrF")]
    top_ps = sorted({c["top_p"] for c in cells if c["temperature"] > 0}, reverse=True) or [1.0]
    greedy = [c for c in cells if c["temperature"] == 0]
    for ax, (key, title) in zip(axes, panels):
        for i, p in enumerate(top_ps):
            pts = [(c["temperature"], c.get(key)) for c in greedy + [c for c in cells if c["temperature"] > 0 and c["top_p"] == p]]
            pts = sorted((t, v) for t, v in pts if _ok(v))
            if pts:
                ax.plot(*zip(*pts), marker="o", color=COLORS[i % len(COLORS)], label=f"top-p {p:g}")
        if key == "self_bleu":
            sem = [(c["temperature"], c.get("semantic")) for c in cells if c["top_p"] == top_ps[0] or c["temperature"] == 0]
            sem = sorted((t, 100 * v) for t, v in sem if _ok(v))
            if sem:
                ax.plot(*zip(*sem), ls="--", marker="s", color="#555555", label=f"semantic x100 (top-p {top_ps[0]:g})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("temperature")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    sig = result.get("signature", {})
    fig.suptitle(f"decoding sweep of {sig.get('model', '')}: stability vs diversity vs accuracy", fontsize=10)
    return _save(fig, path)


__all__ = ["plot_attention_logits", "plot_clip_sweep", "plot_decoding_sweep", "plot_lr_sensitivity"]
