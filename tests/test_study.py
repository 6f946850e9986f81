"""``steadylm sweep --study``: a named study whose settings are fixed in code (pinned here), the
flags it refuses, the intervals over seeds and the "diverged" count it adds, and a miniature of it
(nano, 2 learning rates, 1 seed, a few steps) run end to end through the CLI."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from conftest import one_line_error, run_in_process
from steadylm.study import studies
from steadylm.study.studies import INSTABILITY, STUDIES, Study
from steadylm.study.sweep import seed_interval, summarize_runs


def test_the_instability_study_is_fixed():
    """Changing the study's definition changes what its published numbers mean: do it here, on purpose."""
    assert STUDIES["instability"] is INSTABILITY
    assert INSTABILITY.to_dict() | {"why": ""} == {
        "name": "instability", "recipes": ["baseline", "stabilized"], "preset": "tiny", "steps": 300,
        "lrs": [4e-3, 1.6e-2, 6.3e-2, 0.25, 1.0], "seeds": [0, 1, 2],
        "settings": {"data.context": 128, "optim.batch_size": 8, "data.vocab_size": 1024, "monitor_every": 10},
        "goal_ratio": 0.5, "why": ""}
    assert "before any run" in INSTABILITY.why
    sweep = INSTABILITY.sweep("unused", workers=2)
    assert len(sweep.cells) == 2 * 5 * 3
    cfg = sweep.cells[-1].config
    assert (cfg["model"]["preset"], cfg["steps"], cfg["data"]["context"], cfg["optim"]["batch_size"], cfg["monitor_every"],
            cfg["optim"]["lr"], cfg["seed"]) == ("tiny-qknorm", 300, 128, 8, 10, 1.0, 2)


@pytest.mark.parametrize("extra, flags", [
    (["--steps", "150"], "--steps"),
    (["--lrs", "1e-3", "--seeds", "0"], "--lrs, --seeds"),
    (["--recipes", "baseline", "--set", "optim.batch_size=4"], "--recipes, --set"),
    (["--preset", "tiny"], "--preset"),  # even the value the study uses
    (["--json"], "--json"),
])
def test_study_refuses_grid_flags(extra, flags, tmp_path, capsys):
    line = one_line_error(capsys, ["sweep", "--study", "instability", *extra, "--out", str(tmp_path / "s")],
                          f"--study instability fixes every setting; remove {flags} ")
    assert "only --out, --workers, --threads and --executor" in line
    assert not (tmp_path / "s").exists()


def test_the_ablation_is_fixed_and_its_recipes_differ_by_one_stabilizer(tmp_path, capsys):
    """The ablation repeats the instability study's grid (one seed) over 16 recipes; each "+X" row is
    the baseline with exactly one option changed, each "all-X" row is "all" with exactly one changed."""
    from steadylm.study.studies import ABLATION, ABLATIONS

    assert ABLATIONS == {"instability": ABLATION}
    assert (ABLATION.preset, ABLATION.steps, ABLATION.lrs, ABLATION.settings) == (
        INSTABILITY.preset, INSTABILITY.steps, INSTABILITY.lrs, INSTABILITY.settings)
    assert ABLATION.seeds == (0,) and ABLATION.goal_ratio is None and "before any run" in ABLATION.why
    assert ABLATION.recipes == (
        "baseline", "+qk-norm", "+z-loss", "+zclip", "+guard", "+qk-clip", "+spam", "gemma2", "gemma2+softcap",
        "+muon+qk-clip", "all", "all-qk-norm", "all-z-loss", "all-zclip", "all-guard", "all-spam")
    sweep = ABLATION.sweep("unused", workers=2)
    assert len(sweep.cells) == 16 * 5
    opts = {r.name: r.options for r in sweep.recipe_objs}

    def leaves(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    def changed(a, b):
        la, lb = leaves(opts[a]), leaves(opts[b])
        return {k for k in la.keys() | lb.keys() if la.get(k) != lb.get(k)}

    assert opts["baseline"] == {"model": {"preset": "tiny"}, "clip": {"method": "norm", "max_norm": 1.0},
                                "optim": {"weight_decay": 0.1}, "guard": {"action": "off"}, "z_loss": 0.0}
    assert changed("baseline", "+qk-norm") == {"model.preset"} and opts["+qk-norm"]["model"]["preset"] == "tiny-qknorm"
    assert changed("baseline", "+z-loss") == {"z_loss"}
    assert changed("baseline", "+zclip") == {"clip.method", "clip.max_norm"}
    assert changed("baseline", "+guard") == {"guard.action"}
    assert changed("baseline", "+qk-clip") == {"qk_clip"} and opts["+qk-clip"]["qk_clip"] == 100.0
    assert changed("baseline", "+spam") == {"optim.optimizer", "optim.spam_reset_every"}
    assert changed("gemma2", "gemma2+softcap") == {"model.attn_softcap", "model.final_softcap"}
    assert changed("baseline", "+muon+qk-clip") == {"optim.optimizer", "qk_clip"}
    for part in ("qk-norm", "z-loss", "guard"):
        assert changed("all", f"all-{part}") == changed("baseline", f"+{part}")
    assert changed("all", "all-zclip") == changed("baseline", "+zclip")
    assert changed("all", "all-spam") == changed("baseline", "+spam")
    assert opts["all"]["qk_clip"] == 100.0 and opts["all"]["model"]["preset"] == "tiny-qknorm"
    # sweep.json carries the definition, the study's own recipes included
    assert set(ABLATION.to_dict()["recipe_defs"]) == set(ABLATION.recipes)
    # --ablation goes with --study, and only a study that has one
    one_line_error(capsys, ["sweep", "--ablation", "--out", str(tmp_path / "s")], "--ablation goes with --study")
    one_line_error(capsys, ["sweep", "--study", "instabilty", "--out", str(tmp_path / "s")], "invalid choice")
    assert not (tmp_path / "s").exists()


def test_seed_interval_and_diverged_count():
    # t(0.975, 2) = 4.303: 3 seeds 1, 2, 3 -> mean 2, std 1, half-width 4.303 / sqrt(3)
    iv = seed_interval([1.0, 2.0, 3.0])
    assert iv["n"] == 3 and iv["mean"] == 2.0
    assert iv["low"] == pytest.approx(2 - 4.303 / math.sqrt(3)) and iv["high"] == pytest.approx(2 + 4.303 / math.sqrt(3))
    assert seed_interval([5.0]) == {"n": 1, "mean": 5.0, "low": None, "high": None}
    runs = [
        {"lr": 1e-2, "seed": 0, "final_loss": 3.0, "init_loss": 6.0, "diverged": False, "max_attn_logit": 4.0},
        {"lr": 1e-2, "seed": 1, "final_loss": 3.2, "init_loss": 6.0, "diverged": False, "max_attn_logit": 5.0},
        {"lr": 1.0, "seed": 0, "final_loss": None, "init_loss": 6.0, "diverged": True, "max_attn_logit": 80.0},
        {"lr": 1.0, "seed": 1, "final_loss": 6.5, "init_loss": 6.1, "diverged": False, "max_attn_logit": 40.0,
         "final_log_z": 9.0},
    ]
    s = summarize_runs(runs)
    assert s["diverged"] == 1  # non-finite only, as before
    assert s["runs_diverged"] == 2  # and the one that ended above its loss at init
    # each seed's own sensitivity: seed 0 curve 3.0, 6.0 -> 1.5; seed 1 curve 3.2, 6.1 -> 1.45
    ci = s["lr_sensitivity_ci"]
    assert ci["mean"] == pytest.approx(1.475)
    half = 12.706 * statistics.stdev([1.5, 1.45]) / math.sqrt(2)
    assert (ci["low"], ci["high"]) == (pytest.approx(1.475 - half), pytest.approx(1.475 + half))
    assert s["best_loss_ci"]["mean"] == pytest.approx(3.1)
    top = s["at_top_lr"]
    assert top["lr"] == 1.0 and top["max_attn_logit"]["mean"] == 60.0 and top["max_attn_logit"]["max"] == 80.0
    assert top["final_log_z"]["n"] == 1 and top["final_log_z"]["mean"] == 9.0
    assert [row["max_attn_logit"]["max"] for row in s["seed_variance"]["per_lr"]] == [5.0, 80.0]


MINI = Study(name="instability", recipes=("baseline", "stabilized"), preset="nano", steps=6, lrs=(3e-3, 30.0), seeds=(0,),
             settings={"data.context": 32, "optim.batch_size": 4, "data.vocab_size": 300, "monitor_every": 2}, why="mini")


@pytest.mark.slow
def test_a_miniature_study_end_to_end(monkeypatch, tmp_path):
    monkeypatch.setitem(studies.STUDIES, "instability", MINI)
    out = tmp_path / "study"
    r = run_in_process("sweep", "--study", "instability", "--out", str(out), "--workers", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "sweep.json").read_text())
    assert set(res) == {"recipes", "signature", "factors", "study"}  # today's shape plus the study
    assert list(res["recipes"]) == ["baseline", "stabilized"] and res["signature"]["study"] == "instability"
    assert res["signature"]["monitor_every"] == 2 and "study:instability" in res["signature"]["string"]
    study = res["study"]
    assert study["definition"]["lrs"] == [3e-3, 30.0] and study["top_lr"] == 30.0 and study["reference"] == "baseline"
    for name, e in res["recipes"].items():
        assert e["runs_diverged"] == sum(r["final_loss"] is None or r["final_loss"] > r["init_loss"] for r in e["runs"])
        assert e["lr_sensitivity_ci"]["n"] == 1
        top = [run for run in e["runs"] if run["lr"] == 30.0]
        # the max attention logit is the monitor's, read back from the run's own metrics (steps 2, 4, 6)
        rows = [json.loads(line) for line in (out / "runs" / top[0]["cell"] / "metrics.jsonl").read_text().splitlines()]
        logged = [row["max_attn_logit"] for row in rows if "max_attn_logit" in row]
        assert len(logged) == 3 and top[0]["max_attn_logit"] == pytest.approx(max(logged))
        assert e["at_top_lr"]["max_attn_logit"]["max"] == pytest.approx(max(logged))
        trace = study["attention_at_top_lr"][name]
        assert [t["seed"] for t in trace] == [0] and trace[0]["step"] == [2, 4, 6]
        assert trace[0]["max_attn_logit"] == pytest.approx(logged)
    (goal,) = study["goal"]
    rel = res["recipes"]["stabilized"]["relative_to"]
    assert goal["recipe"] == "stabilized" and goal["lr_sensitivity_ratio"] == rel["lr_sensitivity_ratio"]
    assert goal["met"] == (rel["lr_sensitivity_ratio"] is not None and rel["lr_sensitivity_ratio"] <= 0.5
                           and rel["best_loss_diff"] <= 0)
    for png in ("lr_sensitivity.png", "attention_logits.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "study instability" in r.stdout and "goal (" in r.stdout and "max attn logit at top LR" in r.stdout

    # the report shows the study: its table and the attention plot
    page = tmp_path / "report.html"
    r = run_in_process("report", str(out), "--out", str(page))
    assert r.returncode == 0, r.stderr
    html = page.read_text()
    assert "Study instability" in html and "max attn logit at top LR" in html
    assert 'alt="max attention logit of' in html


def test_plots_tell_sixteen_recipes_apart():
    """The ablation's 16 recipes: every one gets its own (color, line style) in the plots."""
    from steadylm.study.plots import _style

    assert len({_style(i)[:2] for i in range(16)}) == 16
    assert len({_style(i)[:2] for i in range(9)}) == 9  # failed with colors alone: the 9th repeated the 1st


def test_the_gpu_study_is_fixed_and_refused_without_a_gpu(monkeypatch, tmp_path, capsys):
    """The instability study at >= 30 M parameters for one GPU: pinned, and one line on a machine without CUDA."""
    import torch

    from steadylm.models.presets import build_model
    from steadylm.study.studies import INSTABILITY_GPU

    assert STUDIES["instability-gpu"] is INSTABILITY_GPU
    assert INSTABILITY_GPU.to_dict() | {"why": ""} == {
        "name": "instability-gpu", "recipes": ["baseline", "stabilized"], "preset": "medium", "steps": 500,
        "lrs": list(INSTABILITY.lrs), "seeds": [0, 1, 2],
        "settings": {"device": "cuda", "precision": "bf16", "data.context": 256, "optim.batch_size": 16,
                     "data.vocab_size": 1024, "monitor_every": 10},
        "goal_ratio": 0.5, "why": ""}
    for preset in ("medium", "medium-qknorm"):
        with torch.device("meta"):
            model = build_model(preset, vocab_size=1024, context=256)
        assert sum(p.numel() for p in model.parameters()) >= 30e6  # the floor
    if not torch.cuda.is_available():
        one_line_error(capsys, ["sweep", "--study", "instability-gpu", "--out", str(tmp_path / "g")],
                       "--study instability-gpu needs a CUDA GPU")
        assert not (tmp_path / "g").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the grid itself plans and validates
    sweep = INSTABILITY_GPU.sweep(str(tmp_path / "unused"), workers=6)
    cfg = sweep.cells[-1].config
    assert len(sweep.cells) == 30 and (cfg["device"], cfg["precision"], cfg["model"]["preset"]) == (
        "cuda", "bf16", "medium-qknorm")
