"""The spike/NaN guard: each injected fault ruins the unguarded run and not the guarded one."""

import json
import math

import pytest

from steadylm.config import CheckpointConfig, ClipConfig, DataConfig, GuardConfig, ModelConfig, OptimConfig, TrainConfig
from steadylm.errors import ConfigError
from steadylm.train.loop import TrainingRun
from steadylm.train.monitor import read_metrics
from steadylm.train.spikes import GuardStop, SpikeGuard, parse_injection

STEPS, AT = 100, 50


def run(tmp_path, name, action, inject=(), clip="none", **guard):
    cfg = TrainConfig(out=str(tmp_path / name), steps=STEPS, data=DataConfig(context=32, vocab_size=400),
                      model=ModelConfig(preset="nano"), optim=OptimConfig(batch_size=8, lr=3e-3),
                      clip=ClipConfig(method=clip), checkpoint=CheckpointConfig(every=10),
                      guard=GuardConfig(action=action, inject=list(inject), **guard))
    return TrainingRun(cfg).run()


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return run(tmp_path_factory.mktemp("clean"), "clean", "off")


@pytest.mark.slow
def test_nan_ruins_unguarded_and_skip_recovers(tmp_path, clean):
    bad = run(tmp_path, "nan-off", "off", [f"nan@{AT}"])
    assert math.isnan(bad["val_loss"])  # NaN weights
    good = run(tmp_path, "nan-skip", "skip", [f"nan@{AT}"])
    assert good["val_loss"] == pytest.approx(clean["val_loss"], rel=0.02)
    assert good["nonfinite_steps"] == 1 and good["skipped_steps"] >= 1
    [inj] = good["injected"]
    assert inj["spec"] == f"nan@{AT}" and {"step": AT, "kind": "nonfinite_loss", "action": "skip"} in inj["detected"]


@pytest.mark.slow
def test_gradient_spike_hurts_unguarded_and_skip_recovers(tmp_path, clean):
    # Unclipped, a 1000x gradient inflates Adam's second moment and stalls learning for many steps.
    bad = run(tmp_path, "spike-off", "off", [f"spike@{AT}:1000"])
    assert bad["val_loss"] > clean["val_loss"] * 1.04
    good = run(tmp_path, "spike-skip", "skip", [f"spike@{AT}:1000"])
    assert good["val_loss"] == pytest.approx(clean["val_loss"], rel=0.02)
    assert any(d["kind"] == "grad_spike" and d["step"] == AT for d in good["injected"][0]["detected"])


@pytest.mark.slow
def test_lr_spike_needs_rollback(tmp_path, clean):
    # A 1000x learning rate for one step wrecks the weights: skipping later steps cannot undo
    # that, rolling back to the last good checkpoint can.
    bad = run(tmp_path, "lr-off", "off", [f"lr@{AT}:1000"])
    assert bad["val_loss"] > 2 * clean["val_loss"]
    skipped = run(tmp_path, "lr-skip", "skip", [f"lr@{AT}:1000"], max_consecutive=1000)
    assert skipped["val_loss"] > 2 * clean["val_loss"]
    good = run(tmp_path, "lr-rb", "rollback", [f"lr@{AT}:1000"])
    assert good["val_loss"] == pytest.approx(clean["val_loss"], rel=0.02)
    assert good["rollbacks"] >= 1
    records = read_metrics(tmp_path / "lr-rb")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # every step once, after the rollback too
    events = read_metrics(tmp_path / "lr-rb", events=True)
    rb = [e for e in events if e["event"] == "rollback"]
    assert rb[0]["to_step"] < AT + 1 and rb[0]["skipped_samples"] > 0
    summary = json.loads((tmp_path / "lr-rb" / "summary.json").read_text())
    assert summary["rollbacks"] == len(rb)


@pytest.mark.slow
def test_guard_stops_after_too_many_incidents(tmp_path):
    with pytest.raises(GuardStop, match="incidents in a row"):
        run(tmp_path, "stop", "skip", [f"lr@{AT}:1000"], max_consecutive=2)
    s = json.loads((tmp_path / "stop" / "summary.json").read_text())
    assert "stopped" in s and s["incidents"] >= 2


def test_guard_detects_sigma_spikes_only_after_min_samples():
    g = SpikeGuard("skip", sigma=6.0, window=128, min_samples=20)
    for i in range(19):
        assert g.check(i + 1, 5.0 + 0.01 * (i % 3), 1.0 + 0.01 * (i % 2)) == []
    assert g.check(20, 50.0, 1.0) == []  # only 19 samples before it: not judged yet
    g2 = SpikeGuard("skip", min_samples=20)
    for i in range(30):
        g2.check(i + 1, 5.0 + 0.01 * (i % 3), 1.0 + 0.01 * (i % 2))
    [inc] = g2.check(31, 9.0, 1.0)
    assert inc.kind == "loss_spike" and inc.action == "skip"
    [inc] = g2.check(32, 5.0, 100.0)
    assert inc.kind == "grad_spike"
    assert [i.kind for i in g2.check(33, float("nan"), float("inf"))] == ["nonfinite_loss", "nonfinite_grad"]
    # non-finite values never enter the statistics
    assert all(math.isfinite(v) for v in g2.losses.values)


def test_injection_specs():
    assert parse_injection("nan@5").spec == "nan@5"
    assert parse_injection("spike@7:1e3").factor == 1000.0
    assert parse_injection("lr@3:10").kind == "lr"
    for bad in ["nan", "nan@0", "spike@3", "spike@3:-1", "lr@x:2", "boom@3:2", "spike@3:inf"]:
        with pytest.raises(ConfigError):
            parse_injection(bad)


@pytest.mark.parametrize("kw,msg", [({"action": "panic"}, "unknown --guard"), ({"sigma": 0}, "--guard-sigma"),
                                    ({"window": 1}, "--guard-window"), ({"max_consecutive": 0}, "--guard-max-consecutive"),
                                    ({"inject": ["nan@x"]}, "does not parse")])
def test_bad_guard_config(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        GuardConfig(**kw)
