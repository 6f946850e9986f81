"""`StabilityCallback` inside a real ``transformers.Trainer`` (CPU, nano model, a few steps)."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from steadylm.errors import ConfigError  # noqa: E402
from steadylm.models import build_model  # noqa: E402
from steadylm.train import NoClip, NormClip, ZClip  # noqa: E402
from steadylm.train.hf import STATE_FILE, StabilityCallback  # noqa: E402
from steadylm.train.spikes import SpikeGuard  # noqa: E402

VOCAB, CONTEXT, B = 300, 16, 4


class Tokens(torch.utils.data.Dataset):
    """Random token rows, each its own labels."""

    def __init__(self, n: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.rows = torch.randint(0, VOCAB, (n, CONTEXT), generator=g)  # (N, T)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i], "labels": self.rows[i].clone()}


def nano():
    return build_model("nano", vocab_size=VOCAB, context=CONTEXT, seed=0)


def targs(tmp_path, steps: int, **kw):
    kw = {"max_grad_norm": 0.0, "learning_rate": 3e-3, "lr_scheduler_type": "constant",
          "per_device_train_batch_size": B, "save_strategy": "no", **kw}
    return transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, report_to=[], use_cpu=True, logging_steps=1,
        disable_tqdm=True, seed=0, dataloader_num_workers=0, weight_decay=0.0, **kw)


def poison_loss_at(model, call: int):
    """A fault: the ``call``-th training forward pass returns a NaN loss (like ``--inject nan@STEP``)."""
    count = [0]

    def hook(module, args, output):
        if module.training and torch.is_grad_enabled():
            count[0] += 1
            if count[0] == call:
                output["loss"] = output["loss"] * float("nan")
        return output

    return model.register_forward_hook(hook)


def record_batches(model) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["input_ids"].clone()) if m.training and torch.is_grad_enabled() else None,
        with_kwargs=True)
    return seen


def test_trainer_clipping_must_be_off():
    with pytest.raises(ConfigError, match="max_grad_norm"):
        transformers.Trainer(model=nano(), args=targs("unused", 1, max_grad_norm=1.0), train_dataset=Tokens(),
                             callbacks=[StabilityCallback()])
    with pytest.raises(ConfigError, match="skip"):
        StabilityCallback(guard=SpikeGuard("rollback"))


def test_callback_clipper_limits_the_gradients_the_optimizer_sees(tmp_path):
    model = nano()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(float(torch.nn.utils.get_total_norm(
        [p.grad for p in model.parameters() if p.grad is not None]))))
    cb = StabilityCallback(clipper=NormClip(1e-3))
    trainer = transformers.Trainer(model=model, args=targs(tmp_path, 1), train_dataset=Tokens(),
                                   optimizers=(opt, None), callbacks=[cb])
    trainer.train()
    [r] = cb.reports
    assert r.grad_norm > 0.1 and r.clipped and r.threshold == 1e-3  # pre-clip norm reported
    assert seen == [pytest.approx(1e-3, rel=1e-4)]  # post-clip norm at optimizer.step()
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert float(step.norm()) == pytest.approx(1e-3, rel=1e-4)  # SGD, lr 1: the update is the clipped gradient
    log = [h for h in trainer.state.log_history if "loss" in h][-1]
    assert log["clipped_steps"] == 1 and log["clip_threshold"] == 1e-3 and log["guard_incidents"] == 0
    assert log["grad_norm"] == pytest.approx(r.grad_norm, rel=1e-5)  # the Trainer's own, pre-clip


def test_nan_ruins_the_stock_trainer_and_the_guard_skips_it(tmp_path):
    steps, bad = 6, 3
    model = nano()
    poison_loss_at(model, bad)
    transformers.Trainer(model=model, args=targs(tmp_path / "stock", steps, max_grad_norm=1.0),
                         train_dataset=Tokens()).train()
    assert all(torch.isnan(p).any() for p in model.parameters())

    model = nano()
    poison_loss_at(model, bad)
    cb = StabilityCallback(clipper=NormClip(1.0), guard=SpikeGuard("skip"))
    trainer = transformers.Trainer(model=model, args=targs(tmp_path / "guarded", steps), train_dataset=Tokens(),
                                   callbacks=[cb])
    trainer.train()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [r.skipped for r in cb.reports] == [s == bad for s in range(1, steps + 1)]
    assert math.isnan(cb.reports[bad - 1].loss) and all(math.isfinite(r.loss) for r in cb.reports if r.step != bad)
    assert {(i.step, i.kind) for i in cb.incidents} == {(bad, "nonfinite_loss"), (bad, "nonfinite_grad")}
    logs = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert logs[bad]["skipped_steps"] == 1 and logs[bad]["guard_incidents"] == 2
    assert sum(h["skipped_steps"] for h in logs.values()) == 1
    # AdamW took one step fewer for every parameter: the skipped step left its state alone.
    assert {int(s["step"]) for s in trainer.optimizer.state.values()} == {steps - 1}


def test_zclip_in_the_trainer_matches_a_manual_loop(tmp_path):
    steps = 8
    model = nano()
    batches = record_batches(model)
    cb = StabilityCallback(clipper=ZClip(warmup_steps=3, z_thresh=1.0, max_grad_norm=None), guard=SpikeGuard("skip"))
    trainer = transformers.Trainer(model=model, args=targs(tmp_path, steps, optim="adamw_torch"),
                                   train_dataset=Tokens(), callbacks=[cb])
    trainer.train()
    assert len(batches) == steps

    ref = nano()
    ref.train()
    opt = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.0)
    clipper = ZClip(warmup_steps=3, z_thresh=1.0, max_grad_norm=None)
    manual = []
    for x in batches:
        loss = ref(input_ids=x, labels=x).loss
        loss.backward()
        loss = loss.detach()
        stats = clipper.clip_(ref.parameters())
        manual.append((loss.item(), float(stats.norm), float(stats.threshold), bool(stats.clipped)))
        opt.step()
        opt.zero_grad(set_to_none=True)
    got = [(r.loss, r.grad_norm, r.threshold, r.clipped) for r in cb.reports]
    assert [g[3] for g in got] == [m[3] for m in manual] and any(m[3] for m in manual)
    for g, m in zip(got, manual):
        assert g[:3] == pytest.approx(m[:3], rel=1e-5)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gradient_accumulation_loss_and_checkpointed_state(tmp_path):
    cb = StabilityCallback(clipper=ZClip(warmup_steps=2), guard=SpikeGuard("skip"))
    args = targs(tmp_path, 2, gradient_accumulation_steps=2, per_device_train_batch_size=2,
                 save_strategy="steps", save_steps=2)
    model = nano()
    losses = []
    model.register_forward_hook(lambda m, a, o: losses.append(float(o["loss"].detach())) if m.training else None)
    transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[cb]).train()
    # num_items_in_batch makes each micro-batch loss a share of the accumulated mean: they sum to it.
    assert [r.loss for r in cb.reports] == [pytest.approx(losses[0] + losses[1], rel=1e-6),
                                             pytest.approx(losses[2] + losses[3], rel=1e-6)]
    assert 4.0 < cb.reports[0].loss < 7.0  # a per-token mean, about log(300)
    saved = torch.load(tmp_path / "checkpoint-2" / STATE_FILE, weights_only=True)
    fresh = StabilityCallback(clipper=ZClip(warmup_steps=2), guard=SpikeGuard("skip"))
    fresh.load_state_dict(saved)
    assert fresh.state_dict()["guard"] == cb.state_dict()["guard"]
    assert bool(fresh.clipper.initialized) and float(fresh.clipper.mean) == float(cb.clipper.mean)


def test_measure_only_logs_no_infinite_threshold(tmp_path):
    cb = StabilityCallback(clipper=NoClip())
    trainer = transformers.Trainer(model=nano(), args=targs(tmp_path, 2), train_dataset=Tokens(), callbacks=[cb])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all("clip_threshold" not in h and h["clipped_steps"] == 0 for h in logs)


def test_qk_clip_in_the_trainer(tmp_path):
    """QK-Clip as a callback hook: the Trainer's own optimizer step, then the heads rescaled.
    At a learning rate where the stock run's attention logits pass 4 tau, the hooked run stays under 2 tau."""
    from steadylm.train.monitor import AttentionProbe
    from steadylm.train.qkclip import QKClip

    def max_logit(model) -> float:
        probe = AttentionProbe(model)
        probe.armed = True
        model.eval()
        with torch.no_grad():
            model(Tokens(8, seed=1).rows)
        return probe.take()

    runs = {}
    for name in ("stock", "qkclip"):
        model = nano()
        hooks = [QKClip(model, 4.0)] if name == "qkclip" else []
        trainer = transformers.Trainer(model=model, args=targs(tmp_path / name, 25, learning_rate=3e-2),
                                       train_dataset=Tokens(64), callbacks=[StabilityCallback(NormClip(1.0), hooks=hooks)])
        trainer.train()
        runs[name] = max_logit(model)
    assert runs["stock"] > 4 * 4.0 and runs["qkclip"] <= 2 * 4.0, runs  # on a batch it never trained on
