"""Fine-tuning a --model takes fine-tuning defaults (learning rate, short warm-ups) unless set."""

from __future__ import annotations

import json

from conftest import run_in_process
from steadylm.config import TrainConfig


def test_finetune_fills_only_what_is_unset():
    ft = TrainConfig.from_dict({"model": {"path": "some/folder"}, "steps": 20})
    assert (ft.optim.lr, ft.clip.zclip_warmup, ft.guard.min_samples) == (5e-5, 5, 5)
    long = TrainConfig.from_dict({"model": {"path": "some/folder"}, "steps": 400})
    assert (long.optim.lr, long.clip.zclip_warmup, long.guard.min_samples) == (5e-5, 25, 20)
    mine = TrainConfig.from_dict({"model": {"path": "f"}, "steps": 20, "optim": {"lr": 1e-3},
                                  "clip": {"zclip_warmup": 9}, "guard": {"min_samples": 7}})
    assert (mine.optim.lr, mine.clip.zclip_warmup, mine.guard.min_samples) == (1e-3, 9, 7)
    lora = TrainConfig.from_dict({"model": {"path": "f"}, "steps": 20, "lora": {"r": 8}})
    assert lora.optim.lr == 2e-4
    scratch = TrainConfig.from_dict({"steps": 20})
    assert (scratch.optim.lr, scratch.clip.zclip_warmup, scratch.guard.min_samples) == (3e-3, 25, 20)
    # a saved config.json sets every field: a resume keeps what the run started with
    again = TrainConfig.from_dict(json.loads(json.dumps(mine.to_dict())))
    assert again.to_dict() == mine.to_dict()


def test_help_says_the_finetune_defaults():
    r = run_in_process("train", "--help")
    text = " ".join(r.stdout.split())
    assert "5e-05 when fine-tuning a --model" in text and "min(25, max(5, steps/4))" in text


def test_train_model_folder_uses_finetune_lr(nano_model_dir, tmp_path):
    out = tmp_path / "ft"
    r = run_in_process("train", "--model", str(nano_model_dir), "--out", str(out), "--steps", "2", "--batch-size", "2",
                       "--context", "32", "--no-plots", "--data", "builtin:pydoc", "--val-fraction", "0.05")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optim"]["lr"] == 5e-5 and cfg["clip"]["zclip_warmup"] == 5 and cfg["guard"]["min_samples"] == 5
