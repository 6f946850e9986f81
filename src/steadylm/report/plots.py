"""PNG plots of a training run folder: loss, gradient norm, learning rate and the optional monitors.

Reads only the files a run leaves behind (``metrics.jsonl``, ``summary.json``, ``config.json``);
never the trainer's internals. Figures are built with matplotlib's object API
(``matplotlib.figure.Figure`` drawn by the Agg canvas), so no display is needed and pyplot's global
state - and any backend a notebook user has chosen - is left alone.

Conventions shared by every plot:

* a ``null`` value (NaN or Inf in the run, written as null with ``<name>_nonfinite`` beside it) is a
  gap in the line plus a red marker pinned to the top edge of the axis at that step;
* injected faults (``--inject``) are dashed vertical lines labelled with their spec; a rollback is a
  dotted vertical line at the step it happened, with the discarded steps shaded back to ``to_step``;
* incidents get one marker shape and colour per kind, placed at the incident's own value when it
  is the plotted quantity (a loss spike on the loss plot), else at the curve, else at the top edge.

We read ``metrics.jsonl`` here rather than through ``train.monitor.read_metrics`` so that one pass
yields steps and events, a last line cut by a kill is tolerated, and a corrupt line becomes a
``SteadyError`` naming the file and line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import SteadyError
from ..io import iter_lines, loads_json, read_json_object_or_empty

__all__ = ["plot_run", "plot_comparison", "INCIDENT_STYLES"]

FIGSIZE = (10.0, 5.0)  # inches; at DPI this is 1000 x 500 px
DPI = 100

#: Marker and colour per incident kind; unknown kinds fall back to ``_FALLBACK_STYLES`` in order.
INCIDENT_STYLES: dict[str, dict[str, Any]] = {
    "nonfinite_loss": {"marker": "X", "color": "#d62728", "label": "non-finite loss"},
    "nonfinite_grad": {"marker": "P", "color": "#8c1c13", "label": "non-finite grad"},
    "loss_spike": {"marker": "^", "color": "#ff7f0e", "label": "loss spike"},
    "grad_spike": {"marker": "D", "color": "#9467bd", "label": "grad spike"},
}
_FALLBACK_STYLES = [("s", "#17becf"), ("*", "#bcbd22"), ("h", "#e377c2"), ("v", "#7f7f7f")]
_NONFINITE_COLOR = "#d62728"
_INJECT_COLOR = "#555555"
_ROLLBACK_COLOR = "#1f77b4"
RUN_COLORS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]


# --------------------------------------------------------------------------- reading


class RunRecords:
    """The step records (sorted by step) and event records of one run folder."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        path = self.dir / "metrics.jsonl"
        if not path.is_file():
            raise SteadyError(f"{self.dir}: no metrics.jsonl in this folder; is it a training run folder?")
        lines = list(iter_lines(path, error=SteadyError))
        steps: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for i, line in lines:
            if not line.strip():
                continue
            try:
                rec = loads_json(line, f"{path}:{i}", error=SteadyError)
            except SteadyError:
                if i == len(lines):
                    continue  # the last line of a killed run may be cut short
                raise
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int) or isinstance(rec["step"], bool):
                raise SteadyError(f"{path}:{i}: expected a JSON object with an integer 'step'")
            (events if "event" in rec else steps).append(rec)
        if not steps:
            what = "is empty" if not events else "has events but no step records"
            raise SteadyError(f"{path}: {what}; nothing to plot")
        steps.sort(key=lambda r: r["step"])  # stable: file order within a step
        self.steps = steps
        self.events = events
        self.summary = read_json_object_or_empty(self.dir / "summary.json")
        self.config = read_json_object_or_empty(self.dir / "config.json")

    def has(self, key: str) -> bool:
        return any(key in r for r in self.steps)

    def keys(self, prefix: str) -> list[str]:
        """Keys of step records that start with ``prefix``, in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.steps:
            for k in r:
                if k.startswith(prefix) and not k.endswith("_nonfinite"):
                    seen[k] = None
        return list(seen)

    def series(self, key: str, *, positive: bool = False) -> tuple[list[int], list[float], list[int]]:
        """``(x, y, bad)`` over the records that carry ``key``: ``y`` is NaN where the value was
        null or non-finite (a gap), and ``bad`` lists those steps. With ``positive``, values
        ``<= 0`` are gaps too (they have no place on a log axis) but are not called non-finite."""
        xs, ys, bad = [], [], []
        for r in self.steps:
            if key not in r and f"{key}_nonfinite" not in r:
                continue
            v = r.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                xs.append(r["step"])
                ys.append(math.nan)
                bad.append(r["step"])
                continue
            xs.append(r["step"])
            ys.append(float(v) if not (positive and v <= 0) else math.nan)
        return xs, ys, bad

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    def span(self) -> tuple[int, int]:
        """First and last step of any record, events included."""
        ev = [e["step"] for e in self.events]
        return min([self.steps[0]["step"], *ev]), max([self.steps[-1]["step"], *ev])

    def subtitle(self) -> str:
        s = self.summary
        parts = [f"{self.steps[-1]['step']} steps"]
        counts = {key: s.get(key) for key in ("incidents", "skipped_steps", "rollbacks")}
        if not isinstance(counts["incidents"], int):
            counts["incidents"] = len(self.of("incident"))
        for key, name in (("incidents", "incident"), ("skipped_steps", "skipped"), ("rollbacks", "rollback")):
            n = counts[key]
            if isinstance(n, int) and not isinstance(n, bool):
                parts.append(f"{n} {name}" + ("s" if n != 1 and name != "skipped" else ""))
        if _finite(s.get("val_perplexity")):
            parts.append(f"val ppl {s['val_perplexity']:.4g}")
        return " · ".join(parts)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- drawing helpers


def _figure(ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    # Fixed margins rather than tight_layout, which renders the whole figure once more (about a
    # third of the time); log-axis tick labels are kept plain (``_log_y``) so these margins hold.
    # One axis keeps a strip on the right for its legend, so the legend never hides data.
    fig.subplots_adjust(left=0.08, right=0.77 if ncols == 1 else 0.98, bottom=0.1, top=0.87, wspace=0.22)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    from matplotlib import ticker

    for ax in axes:
        ax.grid(True, alpha=0.3, linewidth=0.6)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # steps are whole: no 2.5 on a short run
        ax._steady_tops = {}  # step -> markers already pinned to the top edge there (to stack, not overlap)
    return fig, list(axes)


def _log_y(ax, values: Iterable[float]) -> None:
    """A log y-axis with plain labels (1, 10, 0.001); the default mathtext labels cost ~50 ms.
    Stays linear when ``values`` has nothing positive and finite (a log axis would fail)."""
    from matplotlib import ticker

    seen = [v for v in values if v > 0 and math.isfinite(v)]
    if not seen:
        return
    ax.set_yscale("log")
    # decades alone label a short range once or not at all: label 1-2-5 (or more) within a decade
    decades = math.log10(max(seen) / min(seen))
    subs = (1.0,) if decades >= 2 else (1.0, 2.0, 5.0) if decades >= 0.6 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _pin_top(ax, steps: list[int], **kw) -> None:
    """Scatter markers at the top edge of ``ax`` at ``steps``, each below any already there."""
    if not steps:
        return
    ys = []
    for s in steps:
        k = ax._steady_tops.get(s, 0)
        ax._steady_tops[s] = k + 1
        ys.append(0.97 - 0.05 * k)
    ax.scatter(steps, ys, transform=_top(ax), clip_on=False, zorder=6, **kw)


def _top(ax):
    """A transform with x in data units and y in axes units (1.0 = top edge)."""
    return ax.get_xaxis_transform()


def _style(kind: str, extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if kind in INCIDENT_STYLES:
        return INCIDENT_STYLES[kind]
    if kind not in extra:
        marker, color = _FALLBACK_STYLES[len(extra) % len(_FALLBACK_STYLES)]
        extra[kind] = {"marker": marker, "color": color, "label": kind.replace("_", " ")}
    return extra[kind]


def _mark_nonfinite(ax, steps: list[int], what: str, color: str = _NONFINITE_COLOR) -> None:
    _pin_top(ax, steps, marker="v", s=40, color=color, edgecolor="black", linewidth=0.4,
             label=f"{what}: NaN/Inf (gap)")


def _spec_label(ax, step: int, spec: str) -> None:
    # Left of the line, clear of markers pinned (centred) on it at the top edge.
    ax.annotate(spec, (step, 1.0), xycoords=_top(ax), xytext=(-7, -4), textcoords="offset points",
                rotation=90, va="top", ha="right", fontsize=8, color=_INJECT_COLOR)


def _mark_events(ax, run: RunRecords) -> None:
    """Vertical lines for injected faults and rollbacks (with the discarded steps shaded)."""
    labelled = set()
    for e in run.of("inject"):
        label = None if "inject" in labelled else "injected fault"
        labelled.add("inject")
        ax.axvline(e["step"], color=_INJECT_COLOR, linestyle="--", linewidth=1.0, alpha=0.8, label=label, zorder=1)
        _spec_label(ax, e["step"], str(e.get("spec") or e.get("kind") or "inject"))
    for e in run.of("rollback"):
        label = None if "rollback" in labelled else "rollback (undone: shaded)"
        labelled.add("rollback")
        ax.axvline(e["step"], color=_ROLLBACK_COLOR, linestyle=":", linewidth=1.6, label=label, zorder=1)
        to = e.get("to_step")
        if isinstance(to, int) and to < e["step"]:
            ax.axvspan(to, e["step"], color=_ROLLBACK_COLOR, alpha=0.08, linewidth=0, zorder=0)


def _mark_incidents(ax, run: RunRecords, x: list[int], y: list[float], own_kinds: Iterable[str],
                    *, color: str | None = None, legend: bool = True,
                    extra: dict[str, dict[str, Any]] | None = None) -> None:
    """One marker per incident: at its own ``value`` if its kind measures the plotted quantity
    (``own_kinds``: a loss spike on the loss plot), else on the curve ``(x, y)`` at that step,
    else pinned to the top edge. Non-finite kinds are always pinned to the top, and so is any
    incident at a step that was rolled back: the curve there is the retaken step, not the bad one."""
    own_kinds = set(own_kinds)
    at = dict(zip(x, y))
    rolled = {e["step"] for e in run.of("rollback")}
    extra = {} if extra is None else extra  # styles given to kinds not in INCIDENT_STYLES
    groups: dict[str, tuple[list, list, list]] = {}  # kind -> (xs, ys, top xs)
    for e in run.of("incident"):
        kind = str(e.get("kind", "incident"))
        xs, ys, tops = groups.setdefault(kind, ([], [], []))
        v = e.get("value") if kind in own_kinds else None
        if not _finite(v) and not kind.startswith("nonfinite") and e["step"] not in rolled:
            v = at.get(e["step"])
        if _finite(v):
            xs.append(e["step"])
            ys.append(v)
        else:
            tops.append(e["step"])
    for kind, (xs, ys, tops) in groups.items():
        st = _style(kind, extra)
        label = st["label"] if legend else None
        kw = dict(marker=st["marker"], s=70, facecolor=color or st["color"], edgecolor="black", linewidth=0.6)
        if xs:
            ax.scatter(xs, ys, label=label, zorder=6, **kw)
            label = None
        _pin_top(ax, tops, label=label, **kw)


def _finish(ax, span: tuple[int, int], values: Iterable[float]) -> None:
    """Pin the x range to the run's steps (markers on the top edge do not widen it, and an
    all-null series would leave it at matplotlib's default), and say so when nothing was finite."""
    lo, hi = span
    pad = max(0.5, 0.02 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
    if not any(math.isfinite(v) for v in values):
        ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center", color="#888888")


def _legend(ax, handles=None, labels=None, *, outside: bool = True) -> None:
    """Deduplicated legend, in the strip right of the axis (``outside``) or at the best spot inside."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, Any] = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    if not seen:
        return
    kw = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0) if outside else dict(loc="best")
    ax.legend(list(seen.values()), list(seen.keys()), fontsize=8, framealpha=0.85, **kw)


def _save(fig, path: Path) -> Path:
    """Render to a temporary name beside ``path``, then rename: no half-written PNG is left."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _title(ax, what: str, run: RunRecords) -> None:
    ax.set_title(f"{what} — {run.dir.name}\n{run.subtitle()}", fontsize=10)


# --------------------------------------------------------------------------- the plots


def _plot_loss(run: RunRecords, path: Path) -> Path:
    fig, (ax,) = _figure()
    x, y, bad = run.series("loss")
    ax.plot(x, y, color="#1f77b4", linewidth=1.2, label="loss")
    _mark_nonfinite(ax, bad, "loss")
    _mark_events(ax, run)
    _mark_incidents(ax, run, x, y, own_kinds={"loss_spike"})
    _finish(ax, run.span(), y)
    ax.set_ylabel("training loss (nats/token)")
    _title(ax, "Training loss", run)
    _legend(ax)
    return _save(fig, path)


def _plot_grad_norm(run: RunRecords, path: Path) -> Path:
    fig, (ax,) = _figure()
    x, y, bad = run.series("grad_norm", positive=True)
    ax.plot(x, y, color="#1f77b4", linewidth=1.1, label="grad norm (pre-clip)")
    if run.has("post_norm"):
        px, py, _ = run.series("post_norm", positive=True)
        ax.plot(px, py, color="#2ca02c", linewidth=1.0, alpha=0.9, label="grad norm (post-clip)")
    clip = run.config.get("clip")
    method = clip.get("method") if isinstance(clip, dict) else None  # None: no config.json
    note = ""
    if method == "none":
        note = " (no clipping)"
    elif method in (None, "norm", "autoclip", "zclip"):
        tx, ty, _ = run.series("threshold", positive=True)
        if any(math.isfinite(v) for v in ty):
            ax.plot(tx, ty, color="#8c564b", linestyle="-.", linewidth=1.0, drawstyle="steps-post",
                    label="clip threshold")
    else:
        # --clip value bounds each element and AGC a per-unit ratio: not a norm, so no line.
        note = f" (clip: {method}; its threshold is not a norm)"
    clipped = [(r["step"], r["grad_norm"]) for r in run.steps if r.get("clipped") is True and _finite(r.get("grad_norm"))
               and r["grad_norm"] > 0]
    if clipped:
        ax.scatter([c[0] for c in clipped], [c[1] for c in clipped], s=12, color="#ff7f0e", zorder=4,
                   label="clipped step")
    _mark_nonfinite(ax, bad, "grad norm")
    _mark_events(ax, run)
    _mark_incidents(ax, run, x, y, own_kinds={"grad_spike"})
    _log_y(ax, y)
    _finish(ax, run.span(), y)
    ax.set_ylabel("global L2 gradient norm (log)")
    _title(ax, "Gradient norm" + note, run)
    _legend(ax)
    return _save(fig, path)


def _plot_simple(run: RunRecords, path: Path, keys: list[str], title: str, ylabel: str, *, log: bool = False) -> Path:
    fig, (ax,) = _figure()
    seen: list[float] = []
    for i, key in enumerate(keys):
        x, y, bad = run.series(key, positive=log)
        seen += y
        sparse = len(x) < 0.5 * len(run.steps)  # e.g. logged only every --monitor-every steps
        ax.plot(x, y, color=RUN_COLORS[i % len(RUN_COLORS)], linewidth=1.2, label=key,
                marker="o" if sparse else None, markersize=3)
        _mark_nonfinite(ax, bad, key)
    _mark_events(ax, run)
    if log:
        _log_y(ax, seen)
    _finish(ax, run.span(), seen)
    ax.set_ylabel(ylabel)
    _title(ax, title, run)
    _legend(ax)
    return _save(fig, path)


def _plot_attention(run: RunRecords, path: Path, logz_keys: list[str]) -> Path:
    panels = (["max_attn_logit"] if run.has("max_attn_logit") else []) + ([logz_keys] if logz_keys else [])
    fig, axes = _figure(len(panels))
    for ax, keys in zip(axes, panels):
        keys = [keys] if isinstance(keys, str) else keys
        seen: list[float] = []
        for i, key in enumerate(keys):
            x, y, bad = run.series(key)
            seen += y
            ax.plot(x, y, color=RUN_COLORS[i % len(RUN_COLORS)], linewidth=1.2, marker="o", markersize=3, label=key)
            _mark_nonfinite(ax, bad, key)
        _mark_events(ax, run)
        _finish(ax, run.span(), seen)
        if keys == ["max_attn_logit"]:
            ax.set_ylabel("max attention logit")
            ax.set_title(f"Attention-logit growth — {run.dir.name}", fontsize=10)
        else:
            ax.set_ylabel("output log Z (logsumexp of logits)")
            ax.set_title(f"Output-logit divergence — {run.dir.name}", fontsize=10)
        _legend(ax, outside=False)
    return _save(fig, path)


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write the PNG plots of one training run and return their paths.

    Always ``loss.png``, ``grad_norm.png`` and ``lr.png``; also ``z_loss.png``,
    ``update_ratio.png`` and ``attention.png`` when the run logged those values. Files go to
    ``out_dir`` (default ``run_dir/plots``), each written under a temporary name and renamed.
    Raises ``SteadyError`` if the folder has no ``metrics.jsonl`` or it holds no step records.
    """
    run = RunRecords(run_dir)
    out = Path(out_dir) if out_dir is not None else run.dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_loss(run, out / "loss.png"),
        _plot_grad_norm(run, out / "grad_norm.png"),
        _plot_simple(run, out / "lr.png", ["lr"], "Learning rate", "learning rate"),
    ]
    if run.has("z_loss"):
        written.append(_plot_simple(run, out / "z_loss.png", ["z_loss"], "z-loss (mean log² Z)", "log² Z per token"))
    ratios = run.keys("update_ratio/")
    if ratios:
        written.append(_plot_simple(run, out / "update_ratio.png", ratios, "Update-to-weight ratio per group",
                                    "‖Δw‖ / ‖w‖ (log)", log=True))
    logz = run.keys("log_z")
    if run.has("max_attn_logit") or logz:
        written.append(_plot_attention(run, out / "attention.png", logz))
    return written


def plot_comparison(run_dirs: dict[str, str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """Loss curves of several runs on one axis (say ``{"baseline": a, "stabilized": b}``), each
    run's incidents marked in its colour (shape = kind) and non-finite losses pinned to the top
    edge. Injected faults shared by the runs are drawn once. Returns ``out_path``."""
    if not run_dirs:
        raise SteadyError("plot_comparison: no runs given")
    runs = {name: RunRecords(d) for name, d in run_dirs.items()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax,) = _figure()
    from matplotlib.lines import Line2D

    kinds: dict[str, dict[str, Any]] = {}
    extra: dict[str, dict[str, Any]] = {}
    injects: dict[tuple[int, str], None] = {}
    seen: list[float] = []
    for i, (name, run) in enumerate(runs.items()):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        x, y, bad = run.series("loss")
        seen += y
        s = run.summary
        extra_label = f" (val ppl {s['val_perplexity']:.4g})" if _finite(s.get("val_perplexity")) else ""
        ax.plot(x, y, color=color, linewidth=1.3, label=f"{name}{extra_label}")
        if bad:
            _pin_top(ax, bad, marker="v", s=40, color=color, edgecolor="black", linewidth=0.4)
            kinds.setdefault("_nonfinite", {"marker": "v", "label": "loss: NaN/Inf (gap)"})
        _mark_incidents(ax, run, x, y, own_kinds={"loss_spike"}, color=color, legend=False, extra=extra)
        for e in run.of("incident"):
            kinds.setdefault(str(e.get("kind")), _style(str(e.get("kind")), extra))
        for e in run.of("rollback"):
            ax.axvline(e["step"], color=color, linestyle=":", linewidth=1.4, zorder=1)
            kinds.setdefault("_rollback", {"line": ":", "label": "rollback"})
        for e in run.of("inject"):
            injects[(e["step"], str(e.get("spec") or e.get("kind")))] = None
    for step, spec in injects:
        ax.axvline(step, color=_INJECT_COLOR, linestyle="--", linewidth=1.0, alpha=0.8, zorder=1)
        _spec_label(ax, step, spec)
    if injects:
        kinds["_inject"] = {"line": "--", "label": "injected fault"}
    handles, labels = ax.get_legend_handles_labels()
    for st in kinds.values():  # shape legend in neutral grey; the colour says which run
        if "line" in st:
            handles.append(Line2D([], [], color=_INJECT_COLOR, linestyle=st["line"]))
        else:
            handles.append(Line2D([], [], linestyle="", marker=st["marker"], markersize=8, markerfacecolor="#bbbbbb",
                                  markeredgecolor="black"))
        labels.append(st["label"])
    _legend(ax, handles, labels)
    spans = [r.span() for r in runs.values()]
    _finish(ax, (min(a for a, _ in spans), max(b for _, b in spans)), seen)
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("Training loss: " + " vs ".join(runs), fontsize=10)
    return _save(fig, out_path)
