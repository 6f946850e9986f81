"""Clipping under data parallelism: 2 CPU ranks (gloo) give the numbers of one process.

Each rank trains the nano model with `Stabilizer` on its half of the same global batch (the worker
is ``tests/_dist_script.py``); rank 0 writes per-step norms, thresholds and the final weights, which
must match a single process trained on the whole global batch:

* DDP (through ``accelerate launch``): gradients are all-reduced during ``backward``, so each rank's
  clipper sees the global gradient and every clipper (ZClip, NormClip, AGC) works unchanged; also
  with gradient accumulation (``accum_steps=2`` and ``stab.accumulate()``, i.e. DDP's ``no_sync``).
* FSDP2 (``fully_shard``): gradients are DTensor shards; every clipper reduces its statistics to
  the full value across ranks and must equal the single process too.

Equal halves matter: each rank averages its loss over its half and DDP averages the gradients over
the ranks, which is the mean over the global batch only when the halves are equally large.
"""

from __future__ import annotations

import json
import os
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


def _steadylm(args, env, *, launch: bool) -> subprocess.CompletedProcess:
    pre = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "steadylm"] if launch else [sys.executable, "-m", "steadylm"]
    return subprocess.run(pre + args, capture_output=True, text=True, timeout=TIMEOUT, env=env)


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
    from safetensors.torch import load_file

    common = ["train", "--preset", "nano", "--steps", "8", "--context", "32", "--vocab-size", "300",
              "--batch-size", "4", "--checkpoint-every", "2", "--threads", "1", "--no-plots", *TRAIN_CASES[case]]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore", STEADYLM_PROGRESS="0")
    one = _steadylm([*common, "--out", str(tmp_path / "one")], env, launch=False)
    assert one.returncode == 0, _tail(one)
    two = _steadylm([*common, "--out", str(tmp_path / "two"), "--json"], env, launch=True)
    assert two.returncode == 0, _tail(two)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    assert two.stdout.count('"val_loss"') == 1  # one summary, from rank 0
    read = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = read(tmp_path / "one"), read(tmp_path / "two")
    steps = lambda rows: [r["step"] for r in rows if "event" not in r]  # noqa: E731
    assert steps(a) == steps(b) == list(range(1, 9))
    events = lambda rows: [(r["step"], r["event"], r.get("kind"), r.get("to_step")) for r in rows if "event" in r]  # noqa: E731
    assert events(a) == events(b)
    if case == "agc-accum-rollback":
        assert ("rollback" in [e[1] for e in events(a)]) and ("lr_lowered" in [e[1] for e in events(a)])
    for x, y in zip([r for r in a if "event" not in r], [r for r in b if "event" not in r]):
        for k in ("loss", "grad_norm", "threshold", "lr"):
            assert y[k] == pytest.approx(x[k], rel=1e-5), (k, x["step"])
        assert x["clipped"] == y["clipped"]
    wa = load_file(tmp_path / "one" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for k in wa:  # 1e-5: AdamW's 1/sqrt(v) magnifies last-bit all-reduce differences where a gradient is ~0
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-5)
    if case == "zclip":
        odd = _steadylm([*common, "--batch-size", "3", "--out", str(tmp_path / "odd")], env, launch=True)
        assert odd.returncode != 0 and "does not split evenly over 2 processes" in odd.stderr
