"""Clipping under data parallelism: 2 CPU ranks (gloo) give the numbers of one process.

Each rank trains the nano model with `Stabilizer` on its half of the same global batch (the worker
is ``tests/_dist_script.py``); rank 0 writes per-step norms, thresholds and the final weights, which
must match a single process trained on the whole global batch:

* DDP (through ``accelerate launch``): gradients are all-reduced during ``backward``, so each rank's
  clipper sees the global gradient and every clipper (ZClip, NormClip, AGC) works unchanged; also
  with gradient accumulation (``accum_steps=2`` and ``stab.accumulate()``, i.e. DDP's ``no_sync``).
* FSDP2 (``fully_shard``): gradients are DTensor shards; every clipper reduces its statistics to
  the full value across ranks and must equal the single process too.

``steadylm train`` itself runs under ``accelerate launch`` the same way, with DDP and with FSDP2
(``--fsdp`` or ``accelerate launch --use_fsdp``: sharded checkpoints, a bit-exact resume).

Equal halves matter: each rank averages its loss over its half and DDP averages the gradients over
the ranks, which is the mean over the global batch only when the halves are equally large.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _dist_script as worker  # noqa: E402

pytestmark = pytest.mark.slow
TIMEOUT = 300  # seconds per launch; ~30 s on 2 cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode: str, out: Path) -> subprocess.CompletedProcess:
    """``accelerate launch`` 2 CPU processes (``--multi_gpu`` selects its torchrun launcher; on a
    machine without GPUs the ranks run on the CPU with gloo)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           str(HERE / "_dist_script.py"), "--mode", mode, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=HERE.parent)


@pytest.fixture(scope="module")
def single():
    """The reference: one process, the whole global batch."""
    ref = {name: worker.train(name) for name in worker.CLIPPERS}
    ref["norm_accum"] = ref["norm"]  # accumulation must not change the numbers
    return ref


def assert_same_run(out: Path, single: dict, names=worker.RUNS) -> None:
    for name in names:
        assert not (out / f"{name}.error").exists(), (out / f"{name}.error").read_text()
        run = json.loads((out / f"{name}.json").read_text())
        assert run["world"] == 2, "the launcher started a single process"
        ref_reports, ref_weights = single[name]
        assert len(run["reports"]) == len(ref_reports) == worker.STEPS
        for got, ref in zip(run["reports"], ref_reports):
            assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), (name, got["step"])
            assert got["threshold"] == pytest.approx(ref["threshold"], rel=1e-5), (name, got["step"])
            assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5), (name, got["step"])
            assert got["clipped"] == ref["clipped"] and not got["skipped"]
        assert sum(r["clipped"] for r in ref_reports) >= 3, f"{name} should clip in this test"
        weights = torch.load(out / f"{name}.pt", weights_only=True)
        assert weights.keys() == ref_weights.keys()
        for k, w in weights.items():
            torch.testing.assert_close(w, ref_weights[k], rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")


def _tail(proc: subprocess.CompletedProcess) -> str:
    return "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])


def test_ddp_matches_single_process(tmp_path, single):
    proc = launch("ddp", tmp_path)
    assert proc.returncode == 0, _tail(proc)
    assert_same_run(tmp_path, single)


# What a clipper raises when it meets DTensor gradients it cannot handle yet.


def test_fsdp2_matches_single_process(tmp_path, single):
    proc = launch("fsdp", tmp_path)
    assert proc.returncode == 0, _tail(proc)
    for name in worker.RUNS:
        err = tmp_path / f"{name}.error"
        assert not err.exists(), f"{name} failed under FSDP2: {err.read_text()}"
    # every clipper reduces its DTensor statistics to the full value (steadylm.train.clip._full)
    assert_same_run(tmp_path, single, list(worker.RUNS))


def _steadylm(args, env, *, launch: bool, use_fsdp: bool = False) -> subprocess.CompletedProcess:
    """``steadylm ARGS`` in one process, or on 2 ranks under ``accelerate launch`` (``use_fsdp``:
    with ``--use_fsdp``, accelerate's own switch, which it passes on as ACCELERATE_USE_FSDP=true)."""
    pre = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp" if use_fsdp else "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "steadylm"] if launch else [sys.executable, "-m", "steadylm"]
    return subprocess.run(pre + args, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def _train_args(*extra) -> list[str]:
    return ["train", "--preset", "nano", "--steps", "8", "--context", "32", "--vocab-size", "300",
            "--batch-size", "4", "--checkpoint-every", "2", "--threads", "1", "--no-plots", *extra]


ENV = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore", STEADYLM_PROGRESS="0")


def _metrics(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(one: Path, two: Path) -> None:
    """Two run folders took the same steps: per-step losses, grad norms, thresholds and learning
    rates (1e-5), the same events, the same final weights (1e-5)."""
    from safetensors.torch import load_file

    a, b = _metrics(one), _metrics(two)
    steps = lambda rows: [r["step"] for r in rows if "event" not in r]  # noqa: E731
    assert steps(a) == steps(b) == list(range(1, 9))
    events = lambda rows: [(r["step"], r["event"], r.get("kind"), r.get("to_step")) for r in rows if "event" in r]  # noqa: E731
    assert events(a) == events(b)
    for x, y in zip([r for r in a if "event" not in r], [r for r in b if "event" not in r]):
        for k in ("loss", "grad_norm", "threshold", "lr"):
            assert y[k] == pytest.approx(x[k], rel=1e-5), (k, x["step"])
        assert x["clipped"] == y["clipped"]
    wa = load_file(one / "model" / "model.safetensors")
    wb = load_file(two / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:  # 1e-5: AdamW's 1/sqrt(v) magnifies last-bit all-reduce differences where a gradient is ~0
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-5)


TRAIN_CASES = {
    "zclip": ["--clip", "zclip", "--zclip-warmup", "3", "--guard", "skip"],
    # accumulation (DDP's no_sync on the first micro-batch) with AGC, and a rollback decided on every rank alike
    "agc-accum-rollback": ["--clip", "agc", "--grad-accum", "2", "--guard", "rollback", "--guard-min-samples", "3",
                           "--inject", "lr@5:1000", "--rollback-lr-factor", "0.5", "--rollback-lr-steps", "2"],
    "norm-accum": ["--clip", "norm", "--max-norm", "0.5", "--grad-accum", "2", "--guard", "skip"],
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_steadylm_train_under_accelerate_launch(tmp_path, case):
    """`accelerate launch -m steadylm train` on 2 CPU ranks equals one process on the same global
    batch: same per-step losses, grad norms and thresholds, same events (a rollback on every rank
    at the same step), same final weights; only rank 0 writes the run folder."""
    common = _train_args(*TRAIN_CASES[case])
    one = _steadylm([*common, "--out", str(tmp_path / "one")], ENV, launch=False)
    assert one.returncode == 0, _tail(one)
    two = _steadylm([*common, "--out", str(tmp_path / "two"), "--json"], ENV, launch=True)
    assert two.returncode == 0, _tail(two)
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["world_size"] == 2 and not run["fsdp"]
    assert two.stdout.count('"val_loss"') == 1  # one summary, from rank 0
    assert_same_training(tmp_path / "one", tmp_path / "two")
    if case == "agc-accum-rollback":
        kinds = [r["event"] for r in _metrics(tmp_path / "one") if "event" in r]
        assert "rollback" in kinds and "lr_lowered" in kinds
    if case == "zclip":
        odd = _steadylm([*common, "--batch-size", "3", "--out", str(tmp_path / "odd")], ENV, launch=True)
        assert odd.returncode != 0 and "does not split evenly over 2 processes" in odd.stderr


# FSDP2 in `steadylm train`, switched on by --fsdp or by accelerate's own --use_fsdp; (extra args, how).
FSDP_CASES = {
    "norm-accum": (["--clip", "norm", "--max-norm", "0.5", "--grad-accum", "2", "--guard", "skip"], "flag"),
    "zclip": (["--clip", "zclip", "--zclip-warmup", "3", "--guard", "skip"], "accelerate"),
    # and a rollback: every rank reads its shards of the step-4 checkpoint back
    "agc-accum-rollback": (TRAIN_CASES["agc-accum-rollback"], "flag"),
}


def _sharded(run: Path) -> list[str]:
    """The checkpoints of a run that hold sharded (torch.distributed.checkpoint) state."""
    return sorted(p.name for p in (run / "checkpoints").iterdir() if (p / "sharded" / ".metadata").is_file())


@pytest.mark.parametrize("case", list(FSDP_CASES))
def test_steadylm_train_under_fsdp_equals_one_process(tmp_path, case):
    """2 gloo ranks with FSDP2 (every parameter a DTensor shard, every clipper and the guard on
    global statistics) take one process's steps on the whole batch: losses, grad norms, thresholds,
    final weights (1e-5). Checkpoints are sharded (DCP, one file per rank); ``model/`` is a plain
    HF folder gathered on rank 0."""
    extra, how = FSDP_CASES[case]
    common = _train_args(*extra)
    one = _steadylm([*common, "--out", str(tmp_path / "one")], ENV, launch=False)
    assert one.returncode == 0, _tail(one)
    flag = ["--fsdp"] if how == "flag" else []
    two = _steadylm([*common, *flag, "--out", str(tmp_path / "two"), "--json"], ENV, launch=True, use_fsdp=how == "accelerate")
    assert two.returncode == 0, _tail(two)
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["world_size"] == 2 and run["fsdp"] is True
    assert two.stdout.count('"val_loss"') == 1
    assert _sharded(tmp_path / "two") == ["step-4", "step-6", "step-8"]
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "step-8" / "sharded").iterdir()) == \
        [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert _sharded(tmp_path / "one") == []
    assert_same_training(tmp_path / "one", tmp_path / "two")
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["val_loss"] == pytest.approx(s1["val_loss"], rel=1e-5)


def test_fsdp_resume_is_bit_exact(tmp_path):
    """A run under FSDP killed after its step-4 checkpoint and resumed with --resume (again under
    FSDP, from the sharded checkpoint) ends with the weights, EMA weights and per-step numbers of
    the run that never stopped, bit for bit."""
    common = _train_args("--clip", "zclip", "--zclip-warmup", "3", "--guard", "skip", "--ema", "0.9", "--fsdp")
    a = _steadylm([*common, "--out", str(tmp_path / "a")], ENV, launch=True)
    assert a.returncode == 0, _tail(a)
    b = tmp_path / "b"  # what a kill after the step-4 checkpoint leaves
    shutil.copytree(tmp_path / "a", b)
    for p in ("checkpoints/step-6", "checkpoints/step-8", "model", "model-ema", "summary.json"):
        shutil.rmtree(b / p) if (b / p).is_dir() else (b / p).unlink()
    r = _steadylm(["train", "--resume", str(b), "--no-plots"], ENV, launch=True)
    assert r.returncode == 0, _tail(r)
    assert json.loads((b / "summary.json").read_text())["resumed_from"] == 4
    for f in ("model/model.safetensors", "model-ema/model.safetensors", "checkpoints/step-8/sharded/__1_0.distcp"):
        assert (tmp_path / "a" / f).read_bytes() == (b / f).read_bytes(), f
    rows = lambda d: [(r["loss"], r["grad_norm"], r["threshold"]) for r in _metrics(d) if "event" not in r]  # noqa: E731
    assert rows(tmp_path / "a") == rows(b)
