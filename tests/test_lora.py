"""LoRA through peft in ``steadylm train``: only the adapters train, the run writes ``adapter/``
(peft) and a merged ``model/`` that give the same logits, a resume is bit-exact, and bad targets or
a preset are one error line with nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import one_line_error
from steadylm.config import CheckpointConfig, ClipConfig, DataConfig, LoraConfig, ModelConfig, OptimConfig, TrainConfig
from steadylm.errors import ConfigError
from steadylm.train.loop import TrainingRun
from steadylm.train.lora import resolve_targets
from steadylm.train.monitor import read_metrics

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config(out, model_dir, **kw) -> TrainConfig:
    return TrainConfig(out=str(out), steps=kw.pop("steps", 6), data=DataConfig(context=32), model=ModelConfig(path=str(model_dir)),
                       optim=OptimConfig(batch_size=4, lr=1e-2), checkpoint=CheckpointConfig(every=3, keep=5),
                       lora=kw.pop("lora", LoraConfig(r=4)), **kw)


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


class SeenRun(TrainingRun):
    """A run that keeps, just before it exports, what it trained: ``trained`` (name -> (requires_grad,
    a copy, the storage address)) of the peft model's parameters, since the final export merges the
    adapters into the base weights in place."""

    def _save_models(self):
        self.trained = {n: (p.requires_grad, p.detach().clone(), p.data_ptr()) for n, p in self.model.named_parameters()}
        return super()._save_models()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, nano_model_dir):
    """Six LoRA steps on the nano model (AGC and the monitor on), kept in memory and on disk."""
    out = tmp_path_factory.mktemp("lora") / "run"
    run = SeenRun(lora_config(out, nano_model_dir, monitor_every=1, clip=ClipConfig(method="agc")))
    summary = run.run()
    return out, run, summary


def test_lora_flags_land_in_the_lora_section():
    from steadylm import cli

    parser = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    args = parser.parse_args(["--out", "o", "--model", "m", "--lora-r", "8", "--lora-alpha", "32", "--lora-dropout", "0",
                              "--lora-targets", "q_proj,v_proj", "--lora-targets", "o_proj"])
    cfg = TrainConfig.from_dict(cli.train._train_overrides(args))
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets) == (8, 32.0, 0.0, ["q_proj", "v_proj", "o_proj"])
    assert LoraConfig() == LoraConfig(r=0, alpha=16.0, dropout=0.05, targets=[])  # off by default


def test_lora_needs_a_pretrained_model(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^--lora-r adapts a pretrained model: give --model"):
        TrainConfig(lora=LoraConfig(r=4))
    out = tmp_path / "run"
    one_line_error(capsys, ["train", "--preset", "nano", "--lora-r", "4", "--out", str(out)], "--lora-r adapts a pretrained model")
    assert not out.exists()


def test_default_targets_are_the_projections_the_model_has(nano_model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    assert resolve_targets(_load(nano_model_dir), []) == LLAMA_PROJECTIONS
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16))
    assert resolve_targets(gpt2, []) == ["c_attn", "c_proj", "c_fc"]
    assert resolve_targets(gpt2, ["c_attn", "c_attn"]) == ["c_attn"]


def test_missing_targets_are_one_line_and_nothing_is_written(tmp_path, capsys, nano_model_dir):
    out = tmp_path / "run"
    line = one_line_error(capsys, ["train", "--model", str(nano_model_dir), "--lora-r", "4", "--lora-targets", "q_proj,c_attn,wq",
                                   "--context", "32", "--steps", "2", "--out", str(out)],
                          "--lora-targets: LlamaForCausalLM has no linear layer named c_attn, wq; it has: ")
    assert line.endswith("it has: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj")
    assert not out.exists()


def test_only_the_adapters_train(lora_run, nano_model_dir):
    out, run, summary = lora_run
    trained = {n: p for n, (grad, p, _) in run.trained.items() if grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert summary["trainable_parameters"] == sum(p.numel() for p in trained.values()) < summary["parameters"] / 5
    # the optimizer (and so the clippers, the guard and the monitor, which read its groups) holds them alone
    held = [p for g in run.optimizer.param_groups for p in g["params"]]
    assert {p.data_ptr() for p in held} == {ptr for grad, _, ptr in run.trained.values() if grad}
    assert all(p.grad is None or p.requires_grad for p in run.model.parameters())
    # every frozen base weight, as trained, is byte-identical to the pretrained one
    base = _load(nano_model_dir).state_dict()
    frozen = {n.removeprefix("base_model.model.").replace(".base_layer.", "."): p
              for n, (grad, p, _) in run.trained.items() if not grad}
    assert set(frozen) <= set(base) and len(frozen) >= len(base) - 1  # a tied output layer appears once
    assert all(torch.equal(frozen[n], base[n]) for n in frozen)
    # the adapters moved (lora_B starts at zero) and the monitor saw their update ratios
    assert all(bool(p.abs().sum() > 0) for n, p in trained.items() if ".lora_B." in n)
    ratios = [r["update_ratio/decay"] for r in read_metrics(out)]
    assert len(ratios) == 6 and all(r > 0 for r in ratios)


def test_outputs_adapter_and_merged_model_agree(lora_run, nano_model_dir):
    from peft import PeftModel

    out, _, summary = lora_run
    assert summary["adapter"] == str(out / "adapter") and summary["model"] == str(out / "model")
    x = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = _load(nano_model_dir)(x).logits
        merged = _load(out / "model")(x).logits
        adapted = PeftModel.from_pretrained(_load(nano_model_dir), str(out / "adapter")).eval()(x).logits
    assert (merged - adapted).abs().max() < 1e-5
    assert (merged - base).abs().max() > 1e-3  # the merged model is not the base
    # model/ is a plain HF folder: no peft files in it
    assert sorted(p.name for p in (out / "model").iterdir() if "adapter" in p.name) == []
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_checkpoints_hold_the_adapters_and_optimizer_only(lora_run):
    out, run, _ = lora_run
    ckpt = out / "checkpoints" / "step-6"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert len(state["state"]) == len([1 for grad, _, _ in run.trained.values() if grad])


def test_the_final_export_merges_in_place_and_an_ema_export_copies(lora_run, tmp_path, nano_model_dir):
    """``model/`` comes from the trained weights merged where they lie: no second set of base
    weights at the end of a run (a deep copy raised the process's peak memory on SmolLM2). The
    model validated is that merged model. The EMA export, which comes first, merges into a copy,
    so the base stays the pretrained one for the final export; both folders are exact merges."""
    from safetensors.torch import load_file

    out, run, summary = lora_run
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    merged = run.model.get_base_model()
    assert type(merged).__name__.endswith("ForCausalLM") and not any(".lora_" in n for n, _ in merged.named_parameters())
    w = merged.model.layers[0].self_attn.q_proj.weight
    assert w.data_ptr() == run.trained[q + ".base_layer.weight"][2]  # the trained model's own storage
    _, a, _ = run.trained[q + ".lora_A.default.weight"]
    _, b, _ = run.trained[q + ".lora_B.default.weight"]
    scale = run.cfg.lora.alpha / run.cfg.lora.r
    assert torch.equal(w, run.trained[q + ".base_layer.weight"][1] + (b @ a) * scale)
    assert torch.equal(load_file(str(out / "model" / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"], w)

    ema = SeenRun(lora_config(tmp_path / "ema", nano_model_dir, steps=3, ema=0.5))
    ema.run()
    want = {name: load_file(str(tmp_path / "ema" / name / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
            for name in ("model", "model-ema")}
    base_w = ema.trained[q + ".base_layer.weight"][1]
    assert torch.equal(base_w, _load(nano_model_dir).state_dict()["model.layers.0.self_attn.q_proj.weight"])
    a, b = (ema.trained[q + f".lora_{x}.default.weight"][1] for x in "AB")
    assert torch.equal(want["model"], base_w + (b @ a) * scale)  # merged into the pretrained base, not an EMA-merged one
    assert not torch.equal(want["model-ema"], want["model"])


def test_resume_is_bit_exact(tmp_path, nano_model_dir):
    """A run resumed from its step-3 checkpoint (as after a kill during steps 4-6) ends with the same
    adapter weights and logs the same losses as the run that never stopped."""
    ref = tmp_path / "ref"
    TrainingRun(lora_config(ref, nano_model_dir)).run()
    victim = tmp_path / "victim"
    shutil.copytree(ref, victim)
    for name in ("checkpoints/step-6", "model", "adapter", "summary.json"):
        shutil.rmtree(victim / name) if (victim / name).is_dir() else (victim / name).unlink()
    summary = TrainingRun.resume(victim).run()
    assert summary["resumed_from"] == 3
    for name in ("adapter/adapter_model.safetensors", "model/model.safetensors"):
        assert (victim / name).read_bytes() == (ref / name).read_bytes(), name
    got, want = read_metrics(victim), read_metrics(ref)
    assert [r["step"] for r in got] == list(range(1, 7))
    assert [(r["loss"], r["grad_norm"]) for r in got] == [(r["loss"], r["grad_norm"]) for r in want]


def test_the_monitor_leaves_the_adapters_dropout_alone(tmp_path, nano_model_dir):
    """The attention probe recomputes q and k through the LoRA layers, whose dropout draws random
    numbers: on monitor steps it must not move the RNG, or watching a run would change it."""
    losses = {}
    for every in (0, 1):
        TrainingRun(lora_config(tmp_path / str(every), nano_model_dir, steps=3, monitor_every=every,
                                lora=LoraConfig(r=4, dropout=0.3))).run()
        losses[every] = [(r["loss"], r["grad_norm"]) for r in read_metrics(tmp_path / str(every))]
    assert losses[1] == losses[0]
    assert all(r["max_attn_logit"] is not None for r in read_metrics(tmp_path / "1"))


def test_resume_refuses_a_changed_base(tmp_path, nano_model_dir):
    """LoRA checkpoints hold the adapters alone, so a resume must find the base it started from."""
    from steadylm.errors import CheckpointError
    from steadylm.models.presets import save_model

    base = shutil.copytree(nano_model_dir, tmp_path / "base")
    out = tmp_path / "run"
    TrainingRun(lora_config(out, base, steps=3)).run()
    (out / "summary.json").unlink()
    other = _load(base)
    with torch.no_grad():
        other.model.norm.weight.mul_(2)
    save_model(other, None, base)
    with pytest.raises(CheckpointError, match=r"the base model .* changed since the run started"):
        TrainingRun.resume(out).run()
