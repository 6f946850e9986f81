"""QK-Clip, logit soft-capping and the instability-targeting optimizers, through `steadylm train`
(the modules' own tests are test_qkclip.py, test_softcap.py, test_optimizers.py)."""

from __future__ import annotations

import pytest
import torch

from conftest import one_line_error
from steadylm.config import ModelConfig, OptimConfig
from steadylm.train.loop import TrainingRun
from steadylm.train.monitor import read_metrics
from test_one_step import resume_after_cut, small


@pytest.mark.parametrize("optimizer", ["spam", "stable-spam", "muon"])
def test_optimizer_trains_and_resumes_bit_exactly(tmp_path, optimizer):
    """The optimizer's state is in every checkpoint: a run cut after step 4 and resumed ends with
    the straight run's weights (SPAM resets its moments every 3 steps here, inside the window)."""
    from safetensors.torch import load_file

    reset = 3 if "spam" in optimizer else None
    optim = OptimConfig(batch_size=4, optimizer=optimizer, spam_reset_every=reset)
    TrainingRun(small(tmp_path, "straight", every=4, optim=optim)).run()
    losses = [r["loss"] for r in read_metrics(tmp_path / "straight")]
    assert losses[-1] < losses[0]
    cut = resume_after_cut(tmp_path / "straight", tmp_path / "cut")
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(cut / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in read_metrics(cut)] == losses


def test_muon_update_ratios_name_its_groups(tmp_path):
    TrainingRun(small(tmp_path, "m", steps=2, optim=OptimConfig(batch_size=4, optimizer="muon"), monitor_every=1)).run()
    rec = read_metrics(tmp_path / "m")[-1]
    assert {k for k in rec if k.startswith("update_ratio")} >= {"update_ratio/muon/decay", "update_ratio/decay"}


def test_qk_clip_in_train_keeps_attention_logits_bounded(tmp_path):
    """At a learning rate where the nano model's attention logits grow past 16, --qk-clip 8 holds
    them near 8 and logs how many heads it clipped."""
    kw = dict(steps=30, monitor_every=5, optim=OptimConfig(batch_size=4, lr=3e-2, warmup_steps=1))
    TrainingRun(small(tmp_path, "free", **kw)).run()
    TrainingRun(small(tmp_path, "clipped", qk_clip=8.0, **kw)).run()
    free = [r["max_attn_logit"] for r in read_metrics(tmp_path / "free") if "max_attn_logit" in r]
    held = [r for r in read_metrics(tmp_path / "clipped") if "max_attn_logit" in r]
    assert max(free) > 2 * 8  # unguarded: past twice the bound
    assert max(r["max_attn_logit"] for r in held[2:]) <= 1.4 * 8
    assert any(r["qk_clipped_heads"] > 0 for r in held)


def test_softcaps_through_train(tmp_path, capsys):
    cfg = small(tmp_path, "g", steps=2)
    cfg.model = ModelConfig(preset="nano-gemma2", attn_softcap=20.0, final_softcap=5.0)
    TrainingRun(cfg).run()
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tmp_path / "g" / "model")
    assert (cfg.attn_logit_softcapping, cfg.final_logit_softcapping) == (20.0, 5.0)
    one_line_error(capsys, ["train", "--preset", "nano", "--attn-softcap", "5", "--steps", "2", "--data", "builtin:pydoc",
                            "--out", str(tmp_path / "llama")], "--attn-softcap")
    assert not (tmp_path / "llama").exists()
    one_line_error(capsys, ["train", "--preset", "nano", "--spam-reset-every", "5", "--out", str(tmp_path / "x")],
                   "--spam-reset-every applies to --optimizer spam or stable-spam only")
