"""Plots of a run folder, from a synthetic metrics.jsonl (no training): files, PNG validity, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from steadylm.errors import SteadyError  # noqa: E402
from steadylm.report import plot_comparison, plot_run  # noqa: E402
from steadylm.report import plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZE = (500, 1000)  # (rows, cols) at 10 x 5 inches, dpi 100


def _step(n: int, *, monitor: bool = False, **over) -> dict:
    rec = {"step": n, "loss": 6.0 - 0.02 * n, "grad_norm": 0.8 + 0.01 * (n % 5), "clipped": n % 7 == 0,
           "threshold": 1.0, "lr": 1e-3 * min(1.0, n / 10), "tokens_per_s": 9000.0,
           "z_loss": 30.0 - 0.1 * n, "post_norm": min(0.8 + 0.01 * (n % 5), 1.0)}
    if monitor:
        rec.update({"update_ratio/decay": 1e-2 / n, "update_ratio/no_decay": 1e-3 / n,
                    "max_attn_logit": 0.1 * n ** 0.5, "log_z_mean": 5.5, "log_z_max": 5.6})
    rec.update(over)
    return rec


def write_run(run_dir: Path, *, steps: int = 60, monitor: bool = True, rollback: bool = True) -> Path:
    """A run folder shaped like the trainer's: a NaN at 30 (skipped), a grad spike at 40 and,
    optionally, a loss spike at 45 rolled back to 40 (the rolled-back records are gone)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines: list[dict] = []
    for n in range(1, steps + 1):
        if n == 30:
            lines.append({"step": 30, "event": "inject", "kind": "nan", "factor": 1.0, "spec": "nan@30"})
            lines.append(_step(30, loss=None, grad_norm=None, skipped=True, loss_nonfinite="nan",
                               grad_norm_nonfinite="nan"))
            for kind in ("nonfinite_loss", "nonfinite_grad"):
                lines.append({"step": 30, "event": "incident", "kind": kind, "value": None, "threshold": None,
                              "action": "skip", "value_nonfinite": "nan", "threshold_nonfinite": "nan"})
            continue
        if n == 40:
            lines.append({"step": 40, "event": "inject", "kind": "spike", "factor": 1000.0, "spec": "spike@40:1000"})
            lines.append(_step(40, grad_norm=800.0, clipped=True, skipped=True))
            lines.append({"step": 40, "event": "incident", "kind": "grad_spike", "value": 800.0, "threshold": 5.4,
                          "action": "skip"})
            continue
        if rollback and n == 45:
            lines.append({"step": 45, "event": "incident", "kind": "loss_spike", "value": 9.5, "threshold": 6.1,
                          "action": "rollback"})
            lines.append({"step": 45, "event": "rollback", "to_step": 40, "skipped_samples": 20})
        lines.append(_step(n, monitor=monitor and n % 5 == 0))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    (run_dir / "summary.json").write_text(json.dumps({
        "steps": steps, "final_loss": 4.8, "val_loss": 4.9, "val_perplexity": 134.3, "incidents": 4,
        "spikes": 2, "skipped_steps": 2, "rollbacks": int(rollback)}), encoding="utf-8")
    return run_dir


def assert_png(path: Path, shape=SIZE) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = imread(path)
    assert img.shape[:2] == shape
    assert img.std() > 0  # something was drawn


def test_plot_run_writes_every_plot(tmp_path):
    run = write_run(tmp_path / "run")
    paths = plot_run(run)
    names = [p.name for p in paths]
    assert names == ["loss.png", "grad_norm.png", "lr.png", "z_loss.png", "update_ratio.png", "attention.png"]
    for p in paths:
        assert p.parent == run / "plots"
        assert_png(p)
    assert not list((run / "plots").glob(".*"))  # no temporary files left behind


def test_plot_run_optional_plots_only_when_logged(tmp_path):
    run = tmp_path / "plain"
    run.mkdir()
    recs = [{"step": n, "loss": 5.0 - 0.01 * n, "grad_norm": 1.0, "clipped": False, "threshold": 1.0, "lr": 1e-3}
            for n in range(1, 21)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    out = tmp_path / "elsewhere"
    paths = plot_run(run, out_dir=out)
    assert [p.name for p in paths] == ["loss.png", "grad_norm.png", "lr.png"]
    assert all(p.parent == out for p in paths)
    assert not (run / "plots").exists()


def test_series_nulls_are_gaps_and_flagged(tmp_path):
    r = plots.RunRecords(write_run(tmp_path / "run"))
    x, y, bad = r.series("loss")
    assert bad == [30]
    assert math.isnan(y[x.index(30)])
    assert sum(math.isnan(v) for v in y) == 1
    # a non-positive value is a gap on a log axis but not "non-finite"
    x, y, bad = r.series("grad_norm", positive=True)
    assert bad == [30]


def test_incident_markers_placement(tmp_path):
    """Non-finite incidents and rolled-back ones sit at the top edge; a grad spike at its value."""
    run = write_run(tmp_path / "run")
    fig, (ax,) = plots._figure()
    r = plots.RunRecords(run)
    x, y, _ = r.series("grad_norm", positive=True)
    plots._mark_incidents(ax, r, x, y, own_kinds={"grad_spike"})
    by_label = {c.get_label(): c for c in ax.collections}
    assert by_label["grad spike"].get_offsets()[0].tolist() == [40.0, 800.0]
    assert ax._steady_tops == {30: 2, 45: 1}  # nan@30 (loss + grad), loss spike rolled back at 45


def test_comparison(tmp_path):
    base = write_run(tmp_path / "baseline", rollback=False, monitor=False)
    stab = write_run(tmp_path / "stabilized")
    out = plot_comparison({"baseline": base, "stabilized": stab}, tmp_path / "demo" / "compare.png")
    assert out == tmp_path / "demo" / "compare.png"
    assert_png(out)


def test_cut_last_line_is_tolerated(tmp_path):
    run = write_run(tmp_path / "run", monitor=False)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 61, "loss": 4.')  # a kill mid-write
    assert_png(plot_run(run)[0])


@pytest.mark.parametrize("content, match", [
    (None, "no metrics.jsonl"),
    ("", "is empty"),
    ("\n\n", "is empty"),
    ('{"step": 1, "event": "inject", "kind": "nan", "spec": "nan@1"}\n', "no step records"),
    ('{"step": 1, "loss": 1.0}\nnot json\n{"step": 2, "loss": 1.0}\n', r"metrics.jsonl:2: not valid JSON"),
    ('{"loss": 1.0}\n{"step": 2, "loss": 1.0}\n', r"metrics.jsonl:1: .*integer 'step'"),
])
def test_bad_metrics_raise_steady_error(tmp_path, content, match):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(SteadyError, match=match) as e:
        plot_run(run)
    assert "\n" not in str(e.value)
    assert not (run / "plots").exists()


def test_comparison_errors(tmp_path):
    with pytest.raises(SteadyError, match="no runs"):
        plot_comparison({}, tmp_path / "x.png")
    with pytest.raises(SteadyError, match="no metrics.jsonl"):
        plot_comparison({"a": write_run(tmp_path / "a"), "b": tmp_path / "missing"}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_all_nonfinite_run_plots_without_warnings(tmp_path):
    """A run that diverged from step 1: every value null, threshold Inf (no clipping)."""
    import warnings

    run = tmp_path / "diverged"
    run.mkdir()
    recs = [{"step": n, "loss": None, "loss_nonfinite": "nan", "grad_norm": None, "grad_norm_nonfinite": "inf",
             "clipped": False, "threshold": None, "threshold_nonfinite": "inf", "lr": 1e-3} for n in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = plot_run(run)
        out = plot_comparison({"diverged": run, "ok": write_run(tmp_path / "ok", monitor=False)}, tmp_path / "c.png")
    for p in [*paths, out]:
        assert_png(p)


@pytest.mark.parametrize("values,at_least", [([0.5, 0.62, 0.9], 3), ([0.3, 1.9], 3), ([1e-3, 10.0], 4)])
def test_log_axis_labels_short_ranges_and_steps_are_whole(values, at_least):
    """A grad norm that moves within one decade used to get one labelled tick (or none) on the log
    axis, and a 3-step run had steps 0.5, 1.5 on its x axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from steadylm.report.plots import _figure, _log_y

    fig, (ax,) = _figure()
    steps = list(range(1, len(values) + 1))
    ax.plot(steps, values)
    _log_y(ax, values)
    FigureCanvasAgg(fig).draw()
    lo, hi = ax.get_ylim()
    ys = [t.get_text() for t in ax.get_yticklabels() if t.get_text() and lo <= t.get_position()[1] <= hi]
    assert len(ys) >= at_least, ys
    xs = [float(t.get_text().replace("\u2212", "-")) for t in ax.get_xticklabels() if t.get_text()]
    assert xs and all(x == int(x) for x in xs), xs
