"""One step mechanism: `Stabilizer` is what turns a loss into an update, with one host read per step.

* Host reads are counted by wrapping every way a tensor reaches the host (``.item()``,
  ``float()``, ``int()``, ``bool()``, ``.tolist()``) and attributing each read to the file that made
  it: ``steadylm train`` makes exactly one per optimizer step outside monitor steps (with
  accumulation, z-loss, an L2 penalty, ZClip and the guard on), and a plain loop through
  `Stabilizer` one per optimizer step. The only other reads are transformers' own (its mask builder
  checks for packed sequences once per forward pass).
* fp16 with loss scaling: an injected overflow is the scaler's (a skipped step, an ``overflow``
  event, the loss scale halved, no guard incident); the same fault without a scaler (bf16, guard
  off) leaves NaN weights; a NaN loss under fp16 is one guard incident, not also an overflow.
* Rollback recovery: the learning rate lowered for a while after a rollback, and a limit on rollbacks.
* ``--gradient-checkpointing`` and ``--compile`` train to the same losses as eager.
"""

from __future__ import annotations

import collections
import math
import traceback
from pathlib import Path

import pytest
import torch

from steadylm.config import CheckpointConfig, ClipConfig, DataConfig, GuardConfig, ModelConfig, OptimConfig, TrainConfig
from steadylm.errors import ConfigError
from steadylm.train.loop import TrainingRun
from steadylm.train.monitor import read_metrics
from steadylm.train.spikes import GuardStop

SRC = str(Path(__file__).resolve().parent.parent / "src" / "steadylm")
READS = ("item", "__float__", "__int__", "__index__", "__bool__", "tolist")


class HostReads:
    """Counts tensor-to-host reads while ``on``, by the file that made them."""

    def __init__(self, monkeypatch):
        self.on = False
        self.by_file: collections.Counter = collections.Counter()
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted(t, *a, _original=original, **k):
                if self.on:
                    frame = traceback.extract_stack(limit=2)[0]
                    self.by_file[frame.filename] += 1
                return _original(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def ours(self) -> int:
        return sum(n for f, n in self.by_file.items() if f.startswith(SRC))

    def others(self) -> dict[str, int]:
        return {f: n for f, n in self.by_file.items() if not f.startswith(SRC)}


def resume_after_cut(straight: Path, cut: Path, last: str = "checkpoints/step-8") -> Path:
    """A copy of the finished run ``straight`` cut back to before its ``last`` checkpoint (as if
    killed there), resumed to the end; returns the copy."""
    import shutil

    shutil.copytree(straight, cut)
    for gone in (last, "model", "summary.json"):
        shutil.rmtree(cut / gone) if (cut / gone).is_dir() else (cut / gone).unlink()
    TrainingRun.resume(cut).run()
    return cut


def small(tmp_path, name, *, steps=8, **kw) -> TrainConfig:
    optim = kw.pop("optim", OptimConfig(batch_size=4))
    guard = kw.pop("guard", GuardConfig(action="skip"))
    return TrainConfig(out=str(tmp_path / name), steps=steps, threads=1, data=DataConfig(context=32, vocab_size=300),
                       model=ModelConfig(preset="nano"), optim=optim, guard=guard,
                       checkpoint=CheckpointConfig(every=kw.pop("every", 100)), **kw)


def test_train_reads_the_host_once_per_step(tmp_path, monkeypatch):
    reads = HostReads(monkeypatch)
    per_step: list[tuple[int, int, dict]] = []
    step = TrainingRun._train_step

    def counted_step(self, n, logger):
        reads.by_file.clear()
        reads.on = True
        try:
            return step(self, n, logger)
        finally:
            reads.on = False
            per_step.append((n, reads.ours(), reads.others()))

    monkeypatch.setattr(TrainingRun, "_train_step", counted_step)
    cfg = small(tmp_path, "reads", steps=6, optim=OptimConfig(batch_size=4, grad_accum=2, l2=1e-4), z_loss=1e-4,
                clip=ClipConfig(method="zclip", zclip_warmup=2), monitor_every=3,
                guard=GuardConfig(action="skip", min_samples=2))
    TrainingRun(cfg).run()
    assert [n for n, *_ in per_step] == list(range(1, 7))
    for n, ours, others in per_step:
        if n % 3:  # not a monitor step
            assert ours == 1, f"step {n}: steadylm read the host {ours} times"
        else:
            assert ours > 1  # the monitor's reads are counted too: the count can see extra reads
        assert set(others) <= {f for f in others if f.endswith("transformers/masking_utils.py")}, others
        assert sum(others.values()) <= 2  # one per forward pass (2 micro-batches)
    records = read_metrics(tmp_path / "reads")
    assert all("z_loss" in r and "penalty" in r for r in records)  # read in the same copy


def test_stabilizer_in_a_plain_loop_reads_once_per_optimizer_step(monkeypatch):
    from steadylm.models import build_model
    from steadylm.train import Stabilizer, ZClip
    from steadylm.train.spikes import SpikeGuard

    model = build_model("nano", vocab_size=300, context=16, seed=0)
    # fused, as steadylm train uses it: the for-each AdamW reads its CPU step counters with .item()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    stab = Stabilizer(model, opt, clipper=ZClip(warmup_steps=1), guard=SpikeGuard("skip", min_samples=2),
                      accum_steps=2, ema=0.9)
    reads = HostReads(monkeypatch)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        for _ in range(2):
            x = torch.randint(0, 300, (2, 16), generator=g)
            loss = model(input_ids=x, labels=x).loss  # transformers' reads happen here, outside the count
            reads.on = True
            report = stab.step(loss)
            reads.on = False
        assert report is not None
    assert reads.ours() == 4 and not reads.others()


def _weights_finite(run_dir: Path) -> bool:
    from safetensors.torch import load_file

    return all(torch.isfinite(w).all() for w in load_file(run_dir / "model" / "model.safetensors").values())


def test_fp16_overflow_is_the_scalers_and_a_nan_loss_the_guards(tmp_path):
    # Without a scaler (bf16) and without a guard, the same huge gradient ruins the weights.
    bad = small(tmp_path, "bf16-off", precision="bf16", guard=GuardConfig(action="off", inject=["spike@3:1e39"]))
    TrainingRun(bad).run()
    assert not _weights_finite(tmp_path / "bf16-off")

    cfg = small(tmp_path, "fp16", precision="fp16", guard=GuardConfig(action="skip", inject=["spike@3:1e39", "nan@6"]))
    summary = TrainingRun(cfg).run()
    assert _weights_finite(tmp_path / "fp16") and math.isfinite(summary["val_loss"])
    records = {r["step"]: r for r in read_metrics(tmp_path / "fp16")}
    events = read_metrics(tmp_path / "fp16", events=True)
    overflow = [e for e in events if e["event"] == "overflow"]
    assert [e["step"] for e in overflow] == [3]
    assert overflow[0]["next_loss_scale"] == overflow[0]["loss_scale"] / 2
    assert records[3]["skipped"] and records[4]["loss_scale"] == records[3]["loss_scale"] / 2
    incidents = [e for e in events if e["event"] == "incident"]
    assert {e["step"] for e in incidents} == {6}  # the overflow is no incident; the NaN loss is one
    assert records[6]["skipped"] and summary["nonfinite_steps"] == 1
    assert all("loss_scale" in r for r in records.values())


def test_fp16_resume_is_bit_exact(tmp_path):
    """A run cut after its step-4 checkpoint and resumed ends bit-equal to the straight run (the
    scaler's state is in the checkpoint: a fresh scale would change every step after the cut)."""
    from safetensors.torch import load_file

    overflow = GuardConfig(action="skip", inject=["spike@2:1e39"])  # halves the scale before the cut
    TrainingRun(small(tmp_path, "straight", precision="fp16", every=4, guard=overflow)).run()
    cut = resume_after_cut(tmp_path / "straight", tmp_path / "cut")
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(cut / "model" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    scales = [r["loss_scale"] for r in read_metrics(tmp_path / "straight")]
    assert scales == [r["loss_scale"] for r in read_metrics(cut)] and len(set(scales)) > 1  # the scale moved


def test_rollback_lowers_the_lr_for_a_while_then_the_limit_stops_the_run(tmp_path):
    guard = GuardConfig(action="rollback", inject=["lr@7:1000"], rollback_lr_factor=0.5, rollback_lr_steps=3, min_samples=3)
    cfg = small(tmp_path, "rb", steps=14, every=4, guard=guard)
    TrainingRun(cfg).run()
    from steadylm.train.loop import lr_at

    events = read_metrics(tmp_path / "rb", events=True)
    [rb] = [e for e in events if e["event"] == "rollback"]
    [low] = [e for e in events if e["event"] == "lr_lowered"]
    target = rb["to_step"]
    assert low == {"step": rb["step"], "event": "lr_lowered", "factor": 0.5, "from_step": target + 1, "until_step": target + 3}
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "rb")}
    for n in range(target + 1, 15):
        want = lr_at(n - 1, cfg) * (0.5 if n <= target + 3 else 1.0)
        assert lrs[n] == pytest.approx(want, rel=1e-12), n

    limited = GuardConfig(action="rollback", inject=["lr@7:1000", "nan@11"], max_rollbacks=1, min_samples=3, max_consecutive=100)
    with pytest.raises(GuardStop, match="stopped at step 11: 1 rollbacks, the limit set by --guard-max-rollbacks"):
        TrainingRun(small(tmp_path, "limit", steps=14, every=4, guard=limited)).run()
    assert [e["event"] for e in read_metrics(tmp_path / "limit", events=True) if e["event"] == "rollback"] == ["rollback"]


@pytest.mark.parametrize("option", ["gradient_checkpointing", "compile"])
def test_memory_and_speed_options_train_like_eager(tmp_path, option):
    if option == "compile":
        pytest.importorskip("torch._inductor")
    eager = small(tmp_path, "eager", steps=4)
    TrainingRun(eager).run()
    other = small(tmp_path, option, steps=4, **{option: True})
    TrainingRun(other).run()
    a, b = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / option)
    tol = 0.0 if option == "gradient_checkpointing" else 1e-4  # recomputation is exact; a compiled kernel is not
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=tol, abs=tol), (option, x["step"])
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=max(tol, 1e-6) * 10), (option, x["step"])


def test_a_device_without_the_precision_is_refused_before_the_folder_is_made(tmp_path, monkeypatch):
    def no_fp16(*a, **k):
        raise RuntimeError("autocast: float16 is not supported on this device")

    monkeypatch.setattr(torch, "autocast", no_fp16)
    with pytest.raises(ConfigError, match="--precision fp16: not available on cpu"):
        TrainingRun(small(tmp_path, "fp16", precision="fp16")).run()
    assert not (tmp_path / "fp16").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.set_sync_debug_mode checks device syncs")
@pytest.mark.parametrize("clipper", ["none", "norm", "value", "autoclip", "zclip", "agc"])
def test_on_cuda_the_step_syncs_only_in_its_one_host_read(clipper, monkeypatch):
    """Every clipper and the guard under ``set_sync_debug_mode("error")``: any sync outside the
    step's one host copy raises. (Runs only on a CUDA machine.)"""
    import steadylm.train.stabilizer as stabilizer
    from steadylm.models import build_model
    from steadylm.train import Stabilizer, make_clipper
    from steadylm.train.spikes import SpikeGuard

    read = stabilizer.host_values
    reads = []

    def allowed(*values):  # the one permitted sync
        torch.cuda.set_sync_debug_mode(0)
        try:
            reads.append(1)
            return read(*values)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(stabilizer, "host_values", allowed)
    model = build_model("nano", vocab_size=300, context=16, seed=0).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    stab = Stabilizer(model, opt, clipper=make_clipper(clipper), guard=SpikeGuard("skip", min_samples=2),
                      accum_steps=2, scaler=torch.amp.GradScaler("cuda"), ema=0.9)
    x = torch.randint(0, 300, (2, 16), device="cuda")
    try:
        for _ in range(3):
            for _ in range(2):
                with torch.autocast("cuda", dtype=torch.float16):
                    logits = model(input_ids=x, attention_mask=None, use_cache=False).logits  # (B, T, V)
                loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 300), x.reshape(-1))
                torch.cuda.set_sync_debug_mode("error")
                stab.step(loss)
                torch.cuda.set_sync_debug_mode(0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(reads) == 3


def test_a_folder_saved_from_a_gguf_model_trains_and_checkpoints(tmp_path, nano_model_dir):
    """A model folder whose config.json still carries a ``gguf`` quantization_config (what
    ``save_pretrained`` of a GGUF-loaded model leaves) holds plain float weights: it loads, and
    its checkpoints can be written (transformers refused to save it, after the training steps)."""
    import json
    import shutil

    folder = tmp_path / "from-gguf"
    shutil.copytree(nano_model_dir, folder)
    conf = json.loads((folder / "config.json").read_text())
    conf["quantization_config"] = {"dequantize": False, "gguf_file": "model.Q4_1.gguf", "quant_method": "gguf"}
    (folder / "config.json").write_text(json.dumps(conf))
    cfg = TrainConfig(out=str(tmp_path / "run"), steps=2, threads=1, data=DataConfig(context=32),
                      model=ModelConfig(path=str(folder)), optim=OptimConfig(batch_size=2, lr=5e-5),
                      checkpoint=CheckpointConfig(every=1))
    summary = TrainingRun(cfg).run()
    assert math.isfinite(summary["val_loss"]) and (tmp_path / "run" / "checkpoints" / "step-2" / "model.safetensors").is_file()


def test_a_compile_failure_is_one_line_before_the_folder_is_made(tmp_path, monkeypatch, capsys):
    """torch.compile fails only when the model first runs; steadylm compiles before writing."""
    from conftest import one_line_error

    real = torch.compile

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C compiler found")

    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, backend=broken_backend))
    torch._dynamo.reset()
    out = tmp_path / "c"
    one_line_error(capsys, ["train", "--preset", "nano", "--steps", "2", "--batch-size", "2", "--context", "32",
                            "--data", "builtin:pydoc", "--compile", "--out", str(out)], "--compile: torch.compile failed")
    torch._dynamo.reset()
    assert not out.exists()
