"""`Stabilizer` in a plain PyTorch loop: NaN recovery by skipping, clipping, accumulation, resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from steadylm.errors import ConfigError
from steadylm.models import build_model
from steadylm.train import NormClip, Stabilizer, StepReport, ZClip
from steadylm.train.spikes import GuardStop, SpikeGuard

VOCAB, CONTEXT, B, STEPS, NAN_AT = 300, 16, 4, 8, 4


def batch(step: int, rows: slice = slice(None)) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    return torch.randint(0, VOCAB, (B, CONTEXT), generator=g)[rows]  # (B, T)


def setup(lr: float = 3e-3, sgd: bool = False):
    model = build_model("nano", vocab_size=VOCAB, context=CONTEXT, seed=0)
    model.train()
    # SGD where two runs differ in the last bits by design: Adam's 1/sqrt(v) magnifies such
    # differences in entries whose gradient is ~0.
    opt = torch.optim.SGD(model.parameters(), lr=0.5) if sgd else torch.optim.AdamW(model.parameters(), lr=lr)
    return model, opt


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(guard=None, *, nan_at=None, drop=None, clipper=None, steps=STEPS):
    """Weights and reports after ``steps`` batches; ``nan_at`` poisons a loss, ``drop`` leaves a batch out."""
    model, opt = setup()
    stab = Stabilizer(model, opt, clipper=clipper if clipper is not None else ZClip(warmup_steps=2), guard=guard)
    reports = []
    for step in range(1, steps + 1):
        if step == drop:
            continue
        x = batch(step)
        loss = model(input_ids=x, labels=x).loss
        if step == nan_at:
            loss = loss * float("nan")
        reports.append(stab.step(loss))
    return model, opt, stab, reports


def test_nan_ruins_the_unguarded_loop_and_skip_keeps_the_clean_weights():
    bad, *_ = train(nan_at=NAN_AT)
    assert all(torch.isnan(w).any() for w in weights(bad).values())  # NaN everywhere

    model, opt, stab, reports = train(SpikeGuard("skip"), nan_at=NAN_AT)
    ref, ref_opt, *_ = train(drop=NAN_AT)  # a run that never saw the bad batch
    got, want = weights(model), weights(ref)
    assert all(torch.isfinite(w).all() for w in got.values())
    for k in want:
        assert torch.equal(got[k], want[k]), k  # bit for bit: the skip left no trace
    # Optimizer state untouched by the skipped step: Adam counted one step fewer.
    assert all(int(s["step"]) == STEPS - 1 for s in opt.state.values())
    assert all(torch.equal(opt.state[p]["exp_avg_sq"], ref_opt.state[q]["exp_avg_sq"])
               for p, q in zip(model.parameters(), ref.parameters()))

    r = reports[NAN_AT - 1]
    assert isinstance(r, StepReport) and r.step == NAN_AT and r.skipped and math.isnan(r.loss)
    assert {i.kind for i in r.incidents} == {"nonfinite_loss", "nonfinite_grad"}
    assert [i.step for i in stab.incidents] == [NAN_AT, NAN_AT]
    assert not any(x.skipped for x in reports if x.step != NAN_AT)


def test_clipping_reports_pre_clip_norm_and_limits_what_the_optimizer_sees():
    model, opt = setup()
    seen = []  # post-clip norm at the moment the optimizer steps
    opt.register_step_pre_hook(lambda o, a, k: seen.append(float(torch.nn.utils.get_total_norm(
        [p.grad for p in model.parameters() if p.grad is not None]))))
    stab = Stabilizer(model, opt, clipper=NormClip(0.01))
    ref_model, ref_opt = setup()
    for step in range(1, 4):
        x = batch(step)
        r = stab.step(model(input_ids=x, labels=x).loss)
        # The same step written by hand, nanoGPT style.
        ref_model(input_ids=x, labels=x).loss.backward()
        pre = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.01)
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        assert r.grad_norm == float(pre) > 0.01 and r.clipped and r.threshold == 0.01
        assert seen[-1] <= 0.01 * (1 + 1e-5)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none) after the step


def test_zclip_report_carries_its_threshold():
    *_, reports = train(clipper=ZClip(warmup_steps=2, z_thresh=0.5, max_grad_norm=None), steps=6)
    assert [r.threshold for r in reports[:2]] == [math.inf, math.inf]  # warm-up, no cap
    assert all(math.isfinite(r.threshold) for r in reports[2:])  # adaptive from then on
    assert all(r.clipped == (r.grad_norm > r.threshold) for r in reports)
    assert any(r.clipped for r in reports)


def test_gradient_accumulation_equals_the_full_batch():
    model, opt = setup(sgd=True)
    stab = Stabilizer(model, opt, clipper=NormClip(0.5), accum_steps=2)
    ref_model, ref_opt = setup(sgd=True)
    ref = Stabilizer(ref_model, ref_opt, clipper=NormClip(0.5))
    for step in range(1, 4):
        x = batch(step)
        assert stab.will_update is False
        with stab.accumulate():  # a no-op without DDP
            first = stab.step(model(input_ids=x[:2], labels=x[:2]).loss)
        assert first is None and stab.will_update
        r = stab.step(model(input_ids=x[2:], labels=x[2:]).loss)
        full = ref.step(ref_model(input_ids=x, labels=x).loss)
        assert r.step == full.step == step
        assert r.loss == pytest.approx(full.loss, rel=1e-6)
        assert r.grad_norm == pytest.approx(full.grad_norm, rel=1e-5) and r.clipped == full.clipped
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_scheduler_advances_every_optimizer_step_skipped_or_not():
    model, opt = setup(lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    stab = Stabilizer(model, opt, guard=SpikeGuard("skip"), scheduler=sched)
    lrs = []
    for step in range(1, 4):
        x = batch(step)
        loss = model(input_ids=x, labels=x).loss
        with pytest.warns(UserWarning) if step == 1 else _nothing():  # torch: scheduler before a first step()
            lrs.append(stab.step(loss * float("nan") if step == 1 else loss).lr)
    assert lrs == [1.0, 0.5, pytest.approx(1 / 3)] and sched.last_epoch == 3


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_state_dict_resumes_bit_for_bit():
    model, opt, stab, _ = train(SpikeGuard("skip"), steps=3)
    saved = (weights(model), copy.deepcopy(opt.state_dict()), stab.state_dict())
    for step in range(4, 7):
        x = batch(step)
        stab.step(model(input_ids=x, labels=x).loss)

    model2, opt2 = setup()
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    stab2 = Stabilizer(model2, opt2, clipper=ZClip(warmup_steps=2), guard=SpikeGuard("skip"))
    stab2.load_state_dict(saved[2])
    assert stab2.steps == 3
    for step in range(4, 7):
        x = batch(step)
        stab2.step(model2(input_ids=x, labels=x).loss)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert stab2.state_dict()["guard"] == stab.state_dict()["guard"]


def test_rollback_is_refused_with_a_hint():
    model, opt = setup()
    with pytest.raises(ConfigError, match="skip"):
        Stabilizer(model, opt, guard=SpikeGuard("rollback"))
    with pytest.raises(ValueError, match="accum_steps"):
        Stabilizer(model, opt, accum_steps=0)


def test_guard_stops_after_too_many_incidents_in_a_row():
    model, opt = setup()
    stab = Stabilizer(model, opt, guard=SpikeGuard("skip", max_consecutive=2))
    x = batch(1)
    stab.step(model(input_ids=x, labels=x).loss * float("nan"))
    with pytest.raises(GuardStop, match="2 incidents in a row"):
        stab.step(model(input_ids=x, labels=x).loss * float("nan"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
