"""The training loop: files it writes, stabilizers in the loop, kill -9 and resume."""

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import one_line_error, run_cli
from steadylm.config import CheckpointConfig, ClipConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig
from steadylm.errors import CheckpointError, ConfigError
from steadylm.train.loop import TrainingRun, lr_at
from steadylm.train.monitor import read_metrics

NANO = ["--data", "builtin:pydoc", "--preset", "nano", "--vocab-size", "400", "--context", "32", "--batch-size", "4"]


def nano_config(out, **kw) -> TrainConfig:
    optim = kw.pop("optim", OptimConfig(batch_size=4, lr=3e-3))
    clip = kw.pop("clip", ClipConfig())
    ckpt = kw.pop("checkpoint", CheckpointConfig(every=5, keep=2))
    return TrainConfig(out=str(out), steps=kw.pop("steps", 12), data=DataConfig(context=32, vocab_size=400),
                       model=kw.pop("model", ModelConfig(preset="nano")), optim=optim, clip=clip, checkpoint=ckpt, **kw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, optim=OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1))
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "short"
    summary = TrainingRun(nano_config(out, optim=OptimConfig(batch_size=4, lr=3e-3, l2=1e-4))).run()
    return out, summary


def test_run_folder_contents(short_run):
    out, summary = short_run
    for name in ("config.json", "run.json", "metrics.jsonl", "summary.json", "model", "checkpoints", "tensorboard", "tokenizer"):
        assert (out / name).exists(), name
    for k in ("steps", "final_loss", "val_loss", "val_perplexity", "seconds", "tokens_per_s"):
        assert k in summary
    assert summary["steps"] == 12
    assert summary["val_perplexity"] == pytest.approx(math.exp(summary["val_loss"]))
    assert json.loads((out / "summary.json").read_text()) == summary
    # keep=2: only the newest two checkpoints remain, the final step among them
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-10", "step-12"]
    assert any((out / "tensorboard").iterdir())
    ck = out / "checkpoints" / "step-10"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "optimizer.pt", "rng.pt", "rng_python.json", "train_config.json"):
        assert (ck / name).is_file(), name
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == 10 and state["samples"] == 40
    assert state["data_position"] == {"epoch": 0, "index": 40}  # 10 steps of 4: still in the first pass over the data
    assert state["scheduler"]["step"] == 10
    assert set(state["files"]) >= {"model.safetensors", "optimizer.pt", "rng.pt"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optim"]["l2"] == 1e-4 and cfg["data"]["context"] == 32


def test_metrics_one_line_per_step(short_run):
    out, _ = short_run
    lines = read_metrics(out)
    assert [r["step"] for r in lines] == list(range(1, 13))
    for r in lines:
        assert {"step", "loss", "grad_norm", "clipped", "lr", "tokens_per_s", "penalty"} <= set(r)
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["penalty"] > 0
        assert r["clipped"] == (r["grad_norm"] > 1.0)
    assert lines[-1]["loss"] < lines[0]["loss"]


def test_saved_model_loads_with_auto_classes(short_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = short_run
    model = AutoModelForCausalLM.from_pretrained(out / "model", local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out / "model", local_files_only=True)
    ids = tok("The for statement", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert (out / "model" / "model.safetensors").is_file()
    assert not list((out / "model").glob("*.bin"))
    # every checkpoint is a model folder too
    assert AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-12", local_files_only=True)


def test_clipping_is_applied_in_the_loop(tmp_path):
    # A tiny threshold clips every step; the same run unclipped never reports clipping.
    import torch

    runs = {}
    for name, clip in (("c", ClipConfig(method="norm", max_norm=1e-3)), ("f", ClipConfig(method="none"))):
        runs[name] = TrainingRun(nano_config(tmp_path / name, steps=1, clip=clip))
        runs[name].run()
    mc = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    mf = [json.loads(x) for x in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()]
    assert mc[0]["clipped"] and not mf[0]["clipped"]
    assert mc[0]["grad_norm"] == pytest.approx(mf[0]["grad_norm"], rel=1e-5)  # norms are logged pre-clip

    # After one step AdamW's first moment is (1 - beta1) * the gradient it was given: the optimizer
    # saw the clipped gradient in one run and the raw one in the other.
    def first_moment_norm(run):
        m = [st["exp_avg"] for st in run.optimizer.state.values()]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in m])))

    assert first_moment_norm(runs["c"]) == pytest.approx(0.1 * 1e-3, rel=1e-3)
    assert first_moment_norm(runs["f"]) == pytest.approx(0.1 * mf[0]["grad_norm"], rel=1e-3)


def test_grad_accumulation_matches_a_bigger_batch(tmp_path):
    import torch
    from safetensors.torch import load_file

    a = TrainingRun(nano_config(tmp_path / "a", steps=3, optim=OptimConfig(batch_size=4, grad_accum=1))).run()
    b = TrainingRun(nano_config(tmp_path / "b", steps=3, optim=OptimConfig(batch_size=2, grad_accum=2))).run()
    wa = load_file(tmp_path / "a" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-4)


def test_dropout_is_set_on_the_model(tmp_path):
    run = TrainingRun(nano_config(tmp_path / "d", steps=1, model=ModelConfig(preset="nano", dropout=0.2)))
    run.setup()
    assert run.model.config.attention_dropout == 0.2


def test_fine_tune_an_existing_folder(short_run, tmp_path):
    out, _ = short_run
    cfg = nano_config(tmp_path / "ft", steps=3, model=ModelConfig(path=str(out / "model")))
    s = TrainingRun(cfg).run()
    assert s["parameters"] == json.loads((out / "run.json").read_text())["parameters"]
    assert (tmp_path / "ft" / "model" / "tokenizer.json").is_file()


def test_refuses_to_clobber_a_folder(short_run, tmp_path):
    out, _ = short_run
    with pytest.raises(ConfigError, match="not empty; use --resume"):
        TrainingRun(nano_config(out)).run()
    other = tmp_path / "stuff"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty; choose an empty folder"):
        TrainingRun(nano_config(other)).run()
    with pytest.raises(ConfigError, match="only replaces a steadylm run folder"):
        TrainingRun(nano_config(other), overwrite=True).run()
    assert (other / "keep.txt").read_text() == "mine"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before {path} appeared: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.005)


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(tmp_path):
    steps = ["--steps", "120", "--checkpoint-every", "10", "--keep-checkpoints", "2", "--dropout", "0.1"]
    ref = run_cli("train", *NANO, *steps, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr

    victim = tmp_path / "victim"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "steadylm", "train", *NANO, *steps, "--out", str(victim)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(victim / "checkpoints" / "step-20", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (victim / "summary.json").exists(), "the run finished before it could be killed"
    lines_before = (victim / "metrics.jsonl").read_text().splitlines()
    assert len(lines_before) >= 20

    res = run_cli("train", "--resume", str(victim), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert 20 <= summary["resumed_from"] < 120
    assert sha(victim / "model" / "model.safetensors") == sha(tmp_path / "ref" / "model" / "model.safetensors")
    got, want = read_metrics(victim), read_metrics(tmp_path / "ref")
    assert read_metrics(victim, events=True) == read_metrics(tmp_path / "ref", events=True)
    assert [r["step"] for r in got] == list(range(1, 121))
    for g, w in zip(got, want):
        assert (g["loss"], g["grad_norm"], g["lr"], g["clipped"]) == (w["loss"], w["grad_norm"], w["lr"], w["clipped"])


def test_resume_errors(tmp_path, capsys):
    one_line_error(capsys, ["train", "--resume", str(tmp_path)], "no steadylm run here")
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "missing")], "no such folder")
    one_line_error(capsys, ["train", "--resume", str(tmp_path), "--steps", "5"], "drop --steps")


def test_corrupt_checkpoint_is_named(short_run, tmp_path, capsys):
    import shutil

    out, _ = short_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "summary.json").unlink()  # as if killed after its last checkpoint: a finished run is not resumed
    w = copy / "checkpoints" / "step-12" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="step-12: corrupt checkpoint"):
        TrainingRun.resume(copy).run()
    one_line_error(capsys, ["train", "--resume", str(copy)], "step-12: corrupt checkpoint")


def test_killed_checkpoint_write_is_ignored(short_run, tmp_path):
    # A step-N.tmp folder is what a kill during a checkpoint write leaves: it is never resumed from.
    import shutil

    from steadylm.train.checkpoint import list_checkpoints

    out, _ = short_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "checkpoints" / "step-15.tmp").mkdir()
    assert [s for s, _ in list_checkpoints(copy)] == [10, 12]
