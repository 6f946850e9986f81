"""steadylm sweep: LR sensitivity and seed variance, the clipping-threshold sweep, the decoding sweep.

Every training here is a nano model for 8 steps on context 32 and vocabulary 300, so the whole file
runs in a couple of minutes on two cores; the numbers are checked against a recomputation from
the runs' own files, never against expected values of such short trainings.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
from pathlib import Path

import pytest

from conftest import one_line_error, run_in_process
from steadylm.errors import ConfigError
from steadylm.study.clip import clip_evidence, recommend_max_norm
from steadylm.study.grid import parse_floats, parse_set
from steadylm.study.recipes import load_recipe
from steadylm.study.sweep import LRSweep, capped_loss, summarize_runs

TINY = ["--preset", "nano", "--steps", "8", "--set", "data.context=32", "--set", "data.vocab_size=300",
        "--set", "optim.batch_size=4"]
TINY_SETS = {"data.context": (32,), "data.vocab_size": (300,), "optim.batch_size": (4,)}
SWEEP = ["sweep", "--recipes", "baseline,stabilized", "--lrs", "3e-3,30", "--seeds", "0", "--workers", "2",
         "--keep-run-checkpoints", *TINY]


# --------------------------------------------------------------------------- the formula, on given numbers


def recompute(runs: list[dict]) -> tuple[float, float]:
    """Wortsman et al.'s LR sensitivity written out: mean over LRs of (min(final, init) - best),
    seeds averaged per LR first; a diverged run (final None) counts as its loss at init."""
    by_lr: dict[float, list[float]] = {}
    for r in runs:
        eff = r["init_loss"] if r["final_loss"] is None else min(r["final_loss"], r["init_loss"])
        by_lr.setdefault(r["lr"], []).append(eff)
    curve = {lr: sum(v) / len(v) for lr, v in by_lr.items()}
    best = min(curve.values())
    return sum(v - best for v in curve.values()) / len(curve), best


def test_lr_sensitivity_formula_with_diverged_and_worse_than_init_runs():
    runs = [
        {"lr": 1e-3, "seed": 0, "final_loss": 4.0, "init_loss": 6.0, "diverged": False},
        {"lr": 1e-3, "seed": 1, "final_loss": 4.2, "init_loss": 6.1, "diverged": False},
        {"lr": 1e-2, "seed": 0, "final_loss": 3.5, "init_loss": 6.0, "diverged": False},
        {"lr": 1e-2, "seed": 1, "final_loss": 3.7, "init_loss": 6.1, "diverged": False},
        {"lr": 1e-1, "seed": 0, "final_loss": None, "init_loss": 6.0, "diverged": True},   # NaN: capped at init
        {"lr": 1e-1, "seed": 1, "final_loss": 9.0, "init_loss": 6.1, "diverged": False},   # worse than init: capped
    ]
    s = summarize_runs(runs)
    # curve: 4.1, 3.6, 6.05 -> best 3.6, sensitivity (0.5 + 0 + 2.45) / 3
    assert s["best_loss"] == pytest.approx(3.6)
    assert s["best_lr"] == 1e-2
    assert s["lr_sensitivity"] == pytest.approx((0.5 + 0.0 + 2.45) / 3)
    assert (s["lr_sensitivity"], s["best_loss"]) == pytest.approx(recompute(runs))
    assert capped_loss(runs[4]) == 6.0 and capped_loss(runs[5]) == 6.1
    sv = s["seed_variance"]
    row = sv["per_lr"][1]
    assert row["lr"] == 1e-2 and row["std"] == pytest.approx(statistics.stdev([3.5, 3.7]))
    assert (row["min"], row["max"], row["n"]) == (3.5, 3.7, 2)
    assert sv["per_lr"][2]["diverged"] == 1 and s["diverged"] == 1
    per_seed = {p["seed"]: p for p in sv["per_seed"]}
    assert per_seed[0]["lr_sensitivity"] == pytest.approx(((4.0 - 3.5) + 0 + (6.0 - 3.5)) / 3)
    assert sv["overall"]["best_loss"]["min"] == 3.5 and sv["overall"]["best_loss"]["max"] == 3.7


def test_one_seed_has_no_spread_and_a_flat_curve_scores_zero():
    runs = [{"lr": lr, "seed": 0, "final_loss": 5.0, "init_loss": 6.0, "diverged": False} for lr in (1e-3, 1e-2)]
    s = summarize_runs(runs)
    assert s["lr_sensitivity"] == 0.0 and s["best_loss"] == 5.0
    assert s["seed_variance"]["per_lr"][0]["std"] is None


# --------------------------------------------------------------------------- the clip rule, on given histories


def history(norms, clip_at, losses=None):
    losses = losses or [6.0 - 0.1 * i for i in range(len(norms))]
    return [{"step": i + 1, "loss": loss, "grad_norm": n, "clipped": n > clip_at, "threshold": clip_at}
            for i, (n, loss) in enumerate(zip(norms, losses))]


def test_clip_evidence_from_a_grad_norm_history():
    recs = history([0.5, 1.0, 2.0, 4.0, float("nan")], 1.5)
    recs[-1]["grad_norm"] = None  # how metrics.jsonl writes a non-finite norm
    recs[-1]["grad_norm_nonfinite"] = "nan"
    ev = clip_evidence(recs)
    assert ev["clipped_share"] == pytest.approx(2 / 5)  # 2.0 and 4.0 exceed 1.5
    assert ev["grad_norm_median"] == pytest.approx(1.5)
    assert ev["grad_norm_max"] == 4.0
    assert ev["nonfinite_norms"] == 1
    assert ev["grad_norm_p90"] == pytest.approx(2.0 + 0.7 * (4.0 - 2.0))  # linear interpolation, as numpy does


@pytest.mark.parametrize("losses, tol, expected", [
    ({0.1: 5.30, 0.3: 5.10, 1.0: 5.02, 3.0: 5.00, 10.0: 5.01}, 0.01, 1.0),   # 5.02 <= 5.00 * 1.01; 5.10 is not
    ({0.1: 5.30, 0.3: 5.10, 1.0: 5.02, 3.0: 5.00, 10.0: 5.01}, 0.05, 0.3),   # a looser tolerance admits 0.3
    ({0.1: 5.30, 0.3: 5.10, 1.0: 5.02, 3.0: 5.00, 10.0: 5.01}, 0.0, 3.0),    # only the best itself
    ({0.1: None, 0.3: 5.00, 1.0: 5.00, 3.0: None}, 0.01, 0.3),              # diverged runs never qualify; ties -> smaller
])
def test_recommendation_rule(losses, tol, expected):
    rows = [{"max_norm": m, "final_loss": loss, **clip_evidence(history([0.2, 0.8, 3.0, 0.5], m))} for m, loss in losses.items()]
    rec = recommend_max_norm(rows, tol)
    assert rec["recommended"] == expected
    ok = [r for r in rows if r["final_loss"] is not None]
    best = min(r["final_loss"] for r in ok)
    assert rec["best_loss"] == best
    assert expected == min(r["max_norm"] for r in ok if r["final_loss"] <= best + tol * abs(best))


def test_recommendation_notes_a_threshold_that_clips_every_step_and_none_when_all_diverge():
    rows = [{"max_norm": 0.01, "final_loss": 5.0, "clipped_share": 1.0},
            {"max_norm": 1.0, "final_loss": 5.0, "clipped_share": 0.2}]
    rec = recommend_max_norm(rows, 0.01)
    assert rec["recommended"] == 0.01 and "100% of steps" in rec["note"] and rec["note"].endswith("(1)")
    none = recommend_max_norm([{"max_norm": 1.0, "final_loss": None}], 0.01)
    assert none["recommended"] is None and "finite" in none["reason"]
    with pytest.raises(ConfigError):
        recommend_max_norm(rows, -0.1)


# --------------------------------------------------------------------------- parsing and recipes


def test_set_values_take_the_fields_type():
    assert parse_set("optim.batch_size=8,16") == ("optim.batch_size", (8, 16))
    assert parse_set("model.dropout=0,0.1") == ("model.dropout", (0.0, 0.1))
    assert parse_set("clip.method=norm,zclip") == ("clip.method", ("norm", "zclip"))
    assert parse_set("z_loss=0,1e-4") == ("z_loss", (0.0, 1e-4))
    assert parse_set("optim.warmup_steps=none,5") == ("optim.warmup_steps", (None, 5))
    assert parse_set("model.overrides.num_hidden_layers=1,2") == ("model.overrides.num_hidden_layers", (1, 2))
    assert parse_set("optim.decay_embeddings=true,false") == ("optim.decay_embeddings", (True, False))
    for bad, msg in [("optim.batch_size=8,x", "not a valid int"), ("optim.bach_size=8", "did you mean 'batch_size'"),
                     ("optim.lr=1", "--lrs"), ("guard.inject=nan@1", "list"), ("optim=1", "name a field"),
                     ("nothing=1", "unknown setting"), ("optim.batch_size", "KEY=V1,V2"), ("seed=1,2", "--seeds")]:
        with pytest.raises(ConfigError, match=msg):
            parse_set(bad)
    assert parse_floats("1e-3, 3e-3", "--lrs") == (1e-3, 3e-3)


def test_recipes(tmp_path):
    assert load_recipe("stabilized", "nano").options["model"]["preset"] == "nano-qknorm"
    assert load_recipe("stabilized", "tiny-qknorm").options["model"]["preset"] == "tiny-qknorm"
    base = load_recipe("baseline", "tiny").options
    assert base["model"]["preset"] == "tiny" and base["guard"]["action"] == "off" and base["clip"]["method"] == "norm"
    with pytest.raises(ConfigError, match="did you mean 'stabilized'"):
        load_recipe("stabilised")
    f = tmp_path / "mine.toml"
    f.write_text('z_loss = 1e-4\n[clip]\nmethod = "agc"\n')
    r = load_recipe(str(f), "nano")
    assert r.name == "mine" and r.options["clip"]["method"] == "agc" and r.options["model"]["preset"] == "nano"
    f.write_text('[clip]\nmethod = "sometimes"\n')
    with pytest.raises(ConfigError, match="sometimes"):
        load_recipe(str(f))


@pytest.mark.parametrize("args, message", [
    (["--recipes", "baseline,stabilised"], "unknown recipe 'stabilised'; did you mean 'stabilized'?"),
    (["--lrs", "1e-3,fast"], "--lrs: 'fast' is not a number"),
    (["--set", "optim.batch_size=8,-1"], "--set optim.batch_size=-1"),
    (["--set", "optim.bach_size=8"], "did you mean 'batch_size'"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    one_line_error(capsys, ["sweep", *args, "--out", str(tmp_path / "s")], message)
    assert not (tmp_path / "s").exists()  # nothing was started


def test_out_must_be_a_sweep_folder(tmp_path):
    (tmp_path / "busy.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no steadylm sweep"):
        LRSweep(out=str(tmp_path), recipes=["baseline"], lrs=[1e-3], seeds=[0], steps=2, preset="nano", workers=1).run()


def test_ray_executor_missing_is_a_config_error(monkeypatch, tmp_path):
    from steadylm.study.executor import execute

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"install ray \(pip install 'steadylm\[ray\]'\)"):
        execute([{"dir": str(tmp_path / "cell"), "config": {}, "threads": 1, "name": "cell"}], workers=1, executor="ray")


# --------------------------------------------------------------------------- a real sweep (two worker processes)


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "lr"
    r = run_in_process(*SWEEP, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out, r


def test_sweep_json_shape_and_table(lr_sweep):
    out, r = lr_sweep
    res = json.loads((out / "sweep.json").read_text())
    assert set(res) == {"recipes", "signature", "factors"}
    assert list(res["recipes"]) == ["baseline", "stabilized"]
    assert res["factors"]["recipe"] == ["baseline", "stabilized"] and res["factors"]["optim.lr"] == [3e-3, 30.0]
    for name, e in res["recipes"].items():
        for key in ("lr_sensitivity", "best_loss", "runs", "seed_variance", "curve", "best_lr", "init_loss"):
            assert key in e, key
        assert [(run["lr"], run["seed"]) for run in e["runs"]] == [(3e-3, 0), (30.0, 0)]
        for run in e["runs"]:
            assert {"lr", "seed", "final_loss", "init_loss", "diverged", "cell"} <= set(run)
            cfg = json.loads((out / "runs" / run["cell"] / "config.json").read_text())
            assert cfg["optim"]["lr"] == run["lr"] and cfg["seed"] == run["seed"] and cfg["steps"] == 8
            assert cfg["model"]["preset"] == ("nano" if name == "baseline" else "nano-qknorm")
            # threads per worker = cores // workers
            assert cfg["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    stab = json.loads((out / "runs" / res["recipes"]["stabilized"]["runs"][0]["cell"] / "config.json").read_text())
    assert stab["z_loss"] == 1e-4 and stab["clip"]["method"] == "zclip" and stab["guard"]["action"] == "skip"
    assert res["recipes"]["stabilized"]["relative_to"]["recipe"] == "baseline"
    sig = res["signature"]
    assert sig["steps"] == 8 and sig["preset"] == "nano" and sig["data_fingerprint"] and "final:val" in sig["string"]
    assert (out / "lr_sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "LR sensitivity" in r.stdout and "stabilized" in r.stdout


def test_sensitivity_recomputes_from_the_runs(lr_sweep):
    out, _ = lr_sweep
    res = json.loads((out / "sweep.json").read_text())
    capped_somewhere = False
    for e in res["recipes"].values():
        for run in e["runs"]:
            # init loss is step 1's loss, read back from the run's own metrics
            first = json.loads((out / "runs" / run["cell"] / "metrics.jsonl").read_text().splitlines()[0])
            assert first["step"] == 1 and run["init_loss"] == pytest.approx(first["loss"])
            if run["final_loss"] is None or run["final_loss"] > run["init_loss"]:
                capped_somewhere = True
            if run["final_loss"] is not None:
                summary = json.loads((out / "runs" / run["cell"] / "summary.json").read_text())
                assert run["final_loss"] == pytest.approx(summary["val_loss"])
        sens, best = recompute(e["runs"])
        assert e["lr_sensitivity"] == pytest.approx(sens) and e["best_loss"] == pytest.approx(best)
    assert capped_somewhere, "lr 30 should diverge a nano model within 8 steps"


def test_resume_redoes_nothing_and_finishes_a_killed_cell(lr_sweep):
    out, _ = lr_sweep
    runs = sorted((out / "runs").iterdir())
    stamps = {p.name: p.joinpath("metrics.jsonl").stat().st_mtime_ns for p in runs}
    r = run_in_process(*SWEEP, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert {p.name: p.joinpath("metrics.jsonl").stat().st_mtime_ns for p in runs} == stamps

    # a cell killed after its last checkpoint (no summary.json) is resumed, not retrained;
    # a cell killed before it wrote its config is started again
    killed = out / "runs" / "baseline-lr0.003-seed0"
    (killed / "summary.json").unlink()
    wiped = out / "runs" / "stabilized-lr0.003-seed0"
    shutil.rmtree(wiped)
    wiped.mkdir()
    (wiped / "half-written").write_text("")
    before = json.loads((out / "sweep.json").read_text())
    serial = SWEEP[:SWEEP.index("--workers")] + ["--workers", "1", "--threads", "1"] + SWEEP[SWEEP.index("--workers") + 2:]
    r = run_in_process(*serial, "--out", str(out))  # other workers/threads: still the same cells
    assert r.returncode == 0, r.stderr
    assert json.loads((killed / "summary.json").read_text())["resumed_from"] == 8
    assert json.loads((wiped / "summary.json").read_text())["resumed_from"] is None
    assert not (wiped / "half-written").exists()
    others = [p for p in runs if p not in (killed, wiped)]
    assert all(p.joinpath("metrics.jsonl").stat().st_mtime_ns == stamps[p.name] for p in others)
    after = json.loads((out / "sweep.json").read_text())
    assert after["recipes"]["baseline"]["runs"][0]["final_loss"] == pytest.approx(
        before["recipes"]["baseline"]["runs"][0]["final_loss"])


def test_changed_settings_in_the_same_folder_are_refused(lr_sweep):
    out, _ = lr_sweep
    args = [a if a != "8" else "9" for a in SWEEP]  # --steps 9
    r = run_in_process(*args, "--out", str(out))
    assert r.returncode == 2 and "trained with other settings" in r.stderr and "steps" in r.stderr, r.stderr


# --------------------------------------------------------------------------- --set factors and seeds (in process)


def test_set_factor_grid_and_seed_variance(tmp_path):
    import torch

    threads = torch.get_num_threads()
    sw = LRSweep(out=str(tmp_path / "f"), recipes=["baseline"], lrs=[3e-3], seeds=[0, 1], steps=4, preset="nano",
                 workers=1, threads=1, factors={**TINY_SETS, "model.dropout": (0.0, 0.1)})
    assert len(sw.cells) == 4
    res = sw.run()  # one worker: in this process, one cell after the other
    assert torch.get_num_threads() == threads  # the caller's thread count is left as it was
    assert list(res["recipes"]) == ["baseline model.dropout=0", "baseline model.dropout=0.1"]
    assert res["factors"]["model.dropout"] == [0.0, 0.1]
    for name, e in res["recipes"].items():
        assert e["factors"] == {"model.dropout": 0.1 if name.endswith("0.1") else 0.0}
        assert [r["seed"] for r in e["runs"]] == [0, 1]
        for run in e["runs"]:
            cfg = json.loads((tmp_path / "f" / "runs" / run["cell"] / "config.json").read_text())
            assert cfg["model"]["dropout"] == e["factors"]["model.dropout"] and cfg["data"]["context"] == 32
        losses = [r["final_loss"] for r in e["runs"]]
        row = e["seed_variance"]["per_lr"][0]
        assert row["std"] == pytest.approx(statistics.stdev(losses)) and row["min"] == min(losses)
        assert e["lr_sensitivity"] == 0.0  # one learning rate
        # a finished cell is never resumed: its checkpoints go, its model stays
        cell = tmp_path / "f" / "runs" / e["runs"][0]["cell"]
        assert not (cell / "checkpoints").exists() and (cell / "model" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- sweep clip


def test_clip_sweep_recommends_by_the_rule_and_runs_the_confirmation(tmp_path):
    out = tmp_path / "clip"
    r = run_in_process("sweep", "clip", "--max-norms", "0.01,1,100", "--lr", "0.01", "--workers", "1", "--threads", "1", *TINY,
                       "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "clip_sweep.json").read_text())
    grid = res["grid"]
    assert [g["max_norm"] for g in grid] == [0.01, 1.0, 100.0]
    for g in grid:
        recs = [json.loads(x) for x in (out / "runs" / g["cell"] / "metrics.jsonl").read_text().splitlines()]
        recs = [x for x in recs if "event" not in x]
        assert g["clipped_share"] == pytest.approx(sum(x["clipped"] for x in recs) / len(recs))
        assert all(x["threshold"] == g["max_norm"] for x in recs)
    assert grid[0]["clipped_share"] == 1.0 and grid[2]["clipped_share"] == 0.0
    best = min(g["final_loss"] for g in grid)
    assert res["recommended"] == min(g["max_norm"] for g in grid if g["final_loss"] <= best * 1.01)
    conf = res["confirmation"]
    assert conf["max_norm"] == res["recommended"] and conf["seed"] == 1
    summary = json.loads((out / "runs" / conf["cell"] / "summary.json").read_text())
    assert conf["final_loss"] == pytest.approx(summary["val_loss"])
    assert (out / "clip_sweep.png").is_file()
    assert f"recommended --max-norm {res['recommended']:g}" in r.stdout and "confirmation" in r.stdout


# --------------------------------------------------------------------------- sweep decoding


def test_decoding_sweep(nano_model_dir, tmp_path):
    from steadylm.study.decoding import run_decoding_sweep

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(x) for x in [
        {"id": "a", "prompt": "The module", "reference": "The module object is a namespace."},
        {"id": "b", "prompt": "A loop", "reference": "A loop runs again."},
    ]) + "\n")
    out = tmp_path / "dec"
    res = run_decoding_sweep(str(nano_model_dir), str(out), temperatures=(0.0, 1.0), top_ps=(1.0, 0.9),
                             prompts=str(prompts), samples=2, max_new_tokens=4, bootstrap=100)
    assert [(c["temperature"], c["top_p"]) for c in res["cells"]] == [(0.0, 1.0), (1.0, 1.0), (1.0, 0.9)]
    greedy = res["cells"][0]
    assert greedy["self_bleu"] == pytest.approx(100.0)  # greedy: both samples the same
    for c in res["cells"]:
        cell = json.loads(Path(c["results"]).read_text())
        assert c["chrf"] == pytest.approx(cell["reference"]["chrf"]["score"])
        assert c["distinct_1"] == cell["degeneration"]["distinct_1"]
        assert cell["signature"]["decoding"]["max_new_tokens"] == 4
    assert json.loads((out / "decoding_sweep.json").read_text())["factors"] == {"temperature": [0.0, 1.0], "top_p": [1.0, 0.9]}
    assert (out / "decoding_sweep.png").is_file()
    with pytest.raises(ConfigError, match="--top-ps"):
        run_decoding_sweep(str(nano_model_dir), str(tmp_path / "bad"), top_ps=(1.5,), prompts=str(prompts))


# --------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_ray_executor_on_a_local_instance(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'steadylm[ray]'); the Ray executor is "
                                      "tested only where it is")
    sw = LRSweep(out=str(tmp_path / "ray"), recipes=["baseline"], lrs=[3e-3], seeds=[0], steps=4, preset="nano",
                 workers=2, executor="ray", factors=TINY_SETS)
    res = sw.run()
    run = res["recipes"]["baseline"]["runs"][0]
    assert run["final_loss"] is not None and math.isfinite(run["final_loss"])
    assert res["signature"]["executor"] == "ray"
    assert (tmp_path / "ray" / "runs" / run["cell"] / "summary.json").is_file()
