"""Monitor signals, z-loss, EMA, QK-norm, and resume with stateful clippers."""

import hashlib
import shutil

import pytest
import torch

from steadylm.config import CheckpointConfig, ClipConfig, DataConfig, GuardConfig, ModelConfig, OptimConfig, TrainConfig
from steadylm.models import build_model
from steadylm.train.loop import TrainingRun
from steadylm.train.monitor import AttentionProbe, read_metrics


def cfg(out, **kw):
    return TrainConfig(out=str(out), steps=kw.pop("steps", 12), data=DataConfig(context=32, vocab_size=400),
                       model=kw.pop("model", ModelConfig(preset="nano")), optim=kw.pop("optim", OptimConfig(batch_size=4)),
                       checkpoint=kw.pop("checkpoint", CheckpointConfig(every=5)), **kw)


def _max_logit(model, ids):
    probe = AttentionProbe(model)
    assert probe.supported
    probe.armed = True
    with torch.no_grad():
        model(input_ids=ids)
    v = probe.take()
    probe.close()
    return v


@pytest.mark.parametrize("preset,grows", [("nano", True), ("nano-qknorm", False)])
def test_attention_probe_sees_logit_growth_and_qk_norm_stops_it(preset, grows):
    # Scaling the query projection by 10 multiplies plain attention logits by 10; with QK-norm the
    # queries are renormalised and the logits do not move.
    model = build_model(preset, vocab_size=300, context=32, seed=0, overrides={"num_hidden_layers": 1})
    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    before = _max_logit(model, ids)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(10)
    after = _max_logit(model, ids)
    if grows:
        assert after == pytest.approx(10 * before, rel=1e-4)
    else:
        assert after == pytest.approx(before, rel=1e-3)


def test_monitor_fields_every_n_steps(tmp_path):
    TrainingRun(cfg(tmp_path / "m", steps=6, monitor_every=3)).run()
    recs = read_metrics(tmp_path / "m")
    watched = [r for r in recs if "max_attn_logit" in r]
    assert [r["step"] for r in watched] == [3, 6]
    for r in watched:
        assert r["update_ratio/decay"] > 0 and r["update_ratio/no_decay"] > 0  # AdamW moves the norm weights too
        assert r["log_z_max"] >= r["log_z_mean"]
    assert "max_attn_logit" not in recs[0]


def test_z_loss_is_logged_apart_and_pulls_log_z_to_zero(tmp_path):
    plain = TrainingRun(cfg(tmp_path / "p", steps=30, monitor_every=30, optim=OptimConfig(batch_size=4, lr=1e-2)))
    plain.run()
    zl = TrainingRun(cfg(tmp_path / "z", steps=30, monitor_every=30, z_loss=0.1, optim=OptimConfig(batch_size=4, lr=1e-2)))
    zl.run()
    rp, rz = read_metrics(tmp_path / "p"), read_metrics(tmp_path / "z")
    assert "z_loss" not in rp[0] and rz[0]["z_loss"] > 0
    # step 1 is the same model on the same batch: the logged loss is the plain cross-entropy
    assert rz[0]["loss"] == pytest.approx(rp[0]["loss"], rel=1e-6)
    assert abs(rz[-1]["log_z_mean"]) < 0.8 * abs(rp[-1]["log_z_mean"])  # measured: 3.4 vs 5.4


def test_ema_weights_are_saved_beside_the_raw_ones(tmp_path):
    from safetensors.torch import load_file

    d = 0.5
    run = TrainingRun(cfg(tmp_path / "e", steps=2, ema=d, checkpoint=CheckpointConfig(every=1, keep=5)))
    s = run.run()
    w0 = build_model("nano", vocab_size=len(run.tokenizer), context=32, seed=0,
                     bos_token_id=run.tokenizer.bos_token_id, eos_token_id=run.tokenizer.eos_token_id).state_dict()
    w1 = load_file(tmp_path / "e" / "checkpoints" / "step-1" / "model.safetensors")
    w2 = load_file(tmp_path / "e" / "model" / "model.safetensors")
    ema = load_file(tmp_path / "e" / "model-ema" / "model.safetensors")
    assert s["ema_model"].endswith("model-ema")
    k = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(ema[k], d * (d * w0[k] + (1 - d) * w1[k]) + (1 - d) * w2[k])
    assert not torch.equal(ema[k], w2[k])


@pytest.mark.parametrize("clip", ["zclip", "autoclip", "agc"])
def test_resume_with_stateful_pieces_is_bit_identical(tmp_path, clip):
    kw = dict(steps=20, clip=ClipConfig(method=clip, zclip_warmup=5), ema=0.9, checkpoint=CheckpointConfig(every=10, keep=3),
              guard=GuardConfig(action="skip", min_samples=3), model=ModelConfig(preset="nano", dropout=0.1))
    TrainingRun(cfg(tmp_path / "a", **kw)).run()
    # What a crash after step 10 leaves behind: the step-10 checkpoint and the log so far.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for p in ("checkpoints/step-20", "model", "model-ema", "summary.json"):
        target = tmp_path / "b" / p
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    s = TrainingRun.resume(tmp_path / "b").run()
    assert s["resumed_from"] == 10

    def h(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    for f in ("model/model.safetensors", "model-ema/model.safetensors"):
        assert h(tmp_path / "a" / f) == h(tmp_path / "b" / f), f
    ra, rb = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [(r["loss"], r["threshold"]) for r in ra] == [(r["loss"], r["threshold"]) for r in rb]


def test_qknorm_preset_trains(tmp_path):
    s = TrainingRun(cfg(tmp_path / "q", steps=5, model=ModelConfig(preset="nano-qknorm"))).run()
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tmp_path / "q" / "model", local_files_only=True)
    assert m.config.model_type == "qwen3" and hasattr(m.model.layers[0].self_attn, "q_norm")
    assert s["val_loss"] > 0
