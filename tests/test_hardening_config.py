"""Strict configuration: every value has its field's type, overrides name real fields, and
environment, thread and device settings outside their domain are one line and exit 2."""

from __future__ import annotations

import json
import os

import pytest

from conftest import one_line_error as _one_line
from steadylm import cli
from steadylm.config import TrainConfig
from steadylm.errors import ConfigError
from steadylm.study.grid import parse_set

NANO = ["--data", "builtin:pydoc", "--preset", "nano", "--vocab-size", "400", "--context", "32", "--batch-size", "4"]


def _usage_error(capsys, argv, fragment):
    """argparse refuses: exit 2, one line."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("steadylm: error:"), err
    assert fragment in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- types in config files

@pytest.mark.parametrize("text,fragment", [
    # a non-empty string is truthy: this used to switch remote code ON
    ('[model]\ntrust_remote_code = "false"\n', "r.toml [model] trust_remote_code: 'false' is not a valid bool (got str)"),
    ("[model]\ntrust_remote_code = 0\n", "r.toml [model] trust_remote_code: 0 is not a valid bool (got int)"),
    ("steps = 3.5\n", "r.toml steps: 3.5 is not a valid int (got float)"),
    ("steps = true\n", "r.toml steps: True is not a valid int (got bool)"),
    ("[checkpoint]\nevery = 0.5\n", "r.toml [checkpoint] every: 0.5 is not a valid int (got float)"),
    ("[data]\ncontext = 16.5\n", "r.toml [data] context: 16.5 is not a valid int (got float)"),
    ('[data]\nsource = 3\n', "r.toml [data] source: 3 is not a valid str (got int)"),
    ('[optim]\nlr = "3e-3"\n', "r.toml [optim] lr: '3e-3' is not a valid float (got str)"),
    ("[optim]\nlr = true\n", "r.toml [optim] lr: True is not a valid float (got bool)"),
    ("[optim]\nlr = inf\n", "r.toml [optim] lr: inf is not a valid float (not finite)"),
    ("[optim]\nwarmup_steps = 2.0\n", "r.toml [optim] warmup_steps: 2.0 is not a valid int or none (got float)"),
    ('[guard]\ninject = "nan@3"\n', "r.toml [guard] inject: 'nan@3' is not a valid list of str (got str)"),
    ("[guard]\ninject = [3]\n", "r.toml [guard] inject: 3 is not a valid str (got int)"),
    ("[model]\noverrides = 3\n", "r.toml [model] overrides: 3 is not a valid table (got int)"),
    ("optim = 3\n", "r.toml [optim]: expected a table, got int"),
    # beyond int64: refused with the range, not an OverflowError deep in torch
    (f"steps = {2**70}\n", f"r.toml steps: {2**70} is not a valid int (outside -2**63 .. 2**63-1)"),
    # torch's generators take seeds below 2**64 and the data order multiplies the seed by ~1e6
    (f"seed = {2**70}\n", f"r.toml seed: {2**70} is not a valid int (outside -2**63 .. 2**63-1)"),
    (f"seed = {2**32}\n", "--seed must be between 0 and 4294967295 (2**32 - 1), got 4294967296"),
    ("seed = -1\n", "--seed must be between 0 and 4294967295 (2**32 - 1), got -1"),
])
def test_config_file_values_have_their_fields_type(tmp_path, capsys, text, fragment):
    f = tmp_path / "r.toml"
    f.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    _one_line(capsys, ["train", "--config", str(f), "--out", str(out)], fragment.replace("r.toml", str(f)))
    assert not out.exists()


def test_json_config_and_saved_config_are_checked_the_same_way(tmp_path, capsys):
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"model": {"trust_remote_code": "false"}}), encoding="utf-8")
    _one_line(capsys, ["train", "--config", str(f), "--out", str(tmp_path / "run")],
              f"{f} [model] trust_remote_code: 'false' is not a valid bool (got str)")
    # what --resume reads back: the origin names the file
    with pytest.raises(ConfigError, match=r"^run/config.json \[clip\] max_norm: None is not a valid float \(got none\)$"):
        TrainConfig.from_dict({"clip": {"max_norm": None}}, origin="run/config.json")
    # the right types still pass; an int is a fine float, None a fine "int | None"
    cfg = TrainConfig.from_dict({"optim": {"lr": 1, "warmup_steps": None}, "model": {"trust_remote_code": False},
                                 "guard": {"inject": ["nan@2"]}, "seed": 2**32 - 1})
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.model.trust_remote_code, cfg.guard.inject, cfg.seed) == \
        (1, None, False, ["nan@2"], 2**32 - 1)


@pytest.mark.parametrize("suffix,text", [
    (".toml", "a = " + "[" * 5000 + "]" * 5000 + "\n"),
    (".json", "[" * 100_000 + "]" * 100_000),
    (".json", '{"model": {"overrides": {"x": ' + "[" * 500 + "]" * 500 + "}}}"),
])
def test_config_nested_absurdly_deep_is_one_line(tmp_path, capsys, suffix, text):
    f = tmp_path / f"deep{suffix}"
    f.write_text(text, encoding="utf-8")
    line = _one_line(capsys, ["train", "--config", str(f), "--out", str(tmp_path / "run")], str(f))
    assert "nested" in line


# --------------------------------------------------------------------------- model.overrides

@pytest.mark.parametrize("overrides,fragment", [
    ({"num_hidden_layers": -1}, "model.overrides.num_hidden_layers must be positive, got -1"),
    ({"hidden_size": 0}, "model.overrides.hidden_size must be positive, got 0"),
    ({"num_attention_heads": -2}, "model.overrides.num_attention_heads must be positive, got -2"),
    ({"num_key_value_heads": 0}, "model.overrides.num_key_value_heads must be positive"),
    ({"intermediate_size": -5}, "model.overrides.intermediate_size must be positive"),
    ({"max_position_embeddings": 0}, "model.overrides.max_position_embeddings must be positive"),
    ({"vocab_size": -1}, "model.overrides.vocab_size must be positive"),
    ({"num_hiden_layers": 1}, "model.overrides.num_hiden_layers: LlamaConfig (preset 'nano') has no such field; "
                              "did you mean 'num_hidden_layers'?"),
    ({"to_dict": 1}, "model.overrides.to_dict: LlamaConfig (preset 'nano') has no such field"),
    ({"hidden_size": 32.5}, "model.overrides.hidden_size: 32.5 is not a valid int (got float)"),
    ({"hidden_size": "32"}, "model.overrides.hidden_size: '32' is not a valid int (got str)"),
    ({"attention_bias": 1}, "model.overrides.attention_bias: 1 is not a valid bool (got int)"),
    ({"rms_norm_eps": "1e-5"}, "model.overrides.rms_norm_eps: '1e-5' is not a valid float (got str)"),
])
def test_model_overrides_are_fields_of_the_preset_config(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"model": {"preset": "nano", "overrides": overrides}})
    assert fragment in str(e.value)


def test_model_overrides_valid_and_refused_before_training(tmp_path, capsys):
    cfg = TrainConfig.from_dict({"model": {"preset": "nano-qknorm", "overrides": {
        "num_hidden_layers": 1, "rms_norm_eps": 1e-5, "attention_bias": True, "sliding_window": 16, "head_dim": 8}}})
    assert cfg.model.overrides["num_hidden_layers"] == 1 and cfg.model.overrides["head_dim"] == 8
    with pytest.raises(ConfigError, match="model.overrides apply to a --preset only"):
        TrainConfig.from_dict({"model": {"path": str(tmp_path), "overrides": {"num_hidden_layers": 1}}})
    f = tmp_path / "r.toml"
    f.write_text("[model]\npreset = 'nano'\n[model.overrides]\nnum_hidden_layers = -1\n", encoding="utf-8")
    out = tmp_path / "run"
    _one_line(capsys, ["train", "--config", str(f), "--out", str(out)], "model.overrides.num_hidden_layers must be positive")
    assert not out.exists()


# --------------------------------------------------------------------------- --set

@pytest.mark.parametrize("spec,fragment", [
    ("optim.batch_size=8.5", "--set optim.batch_size=8.5: 8.5 is not a valid int (got float)"),
    ("model.trust_remote_code=yes", "--set model.trust_remote_code=yes: 'yes' is not a valid bool (got str)"),
    ("model.trust_remote_code=1", "--set model.trust_remote_code=1: 1 is not a valid bool (got int)"),
    ("optim.decay_embeddings=on", "'on' is not a valid bool (got str)"),
    ("optim.lr_typo=1", "unknown field 'lr_typo' in [optim]"),
    ("optim.nonexistent=1", "unknown field 'nonexistent' in [optim]"),
    ("z_loss=nan", "--set z_loss=nan: nan is not a valid float (not finite)"),
    ("steps=1e3", "--set steps=1e3: 1000.0 is not a valid int (got float)"),
    (f"data.context={2**64}", f"--set data.context={2**64}: {2**64} is not a valid int (outside -2**63 .. 2**63-1)"),
])
def test_set_values_are_checked_like_files(spec, fragment):
    with pytest.raises(ConfigError) as e:
        parse_set(spec)
    assert fragment in str(e.value)


def test_set_keeps_text_for_text_fields_and_typed_values_otherwise():
    assert parse_set("data.source=123") == ("data.source", ("123",))
    assert parse_set("model.preset=none,nano") == ("model.preset", (None, "nano"))
    assert parse_set("model.trust_remote_code=false,True") == ("model.trust_remote_code", (False, True))
    vals = parse_set("model.dropout=0,0.1")[1]
    assert vals == (0.0, 0.1) and all(type(v) is float for v in vals)  # saved as 0.0, as before


@pytest.mark.parametrize("spec,fragment", [
    ("model.overrides.num_hidden_layers=-1", "model.overrides.num_hidden_layers must be positive, got -1"),
    ("model.overrides.bogus=1", "model.overrides.bogus: LlamaConfig (preset 'nano') has no such field"),
    ("model.trust_remote_code=yes", "'yes' is not a valid bool"),
])
def test_sweep_set_refused_before_anything_trains(tmp_path, capsys, spec, fragment):
    out = tmp_path / "sw"
    _one_line(capsys, ["sweep", "--preset", "nano", "--recipes", "baseline", "--lrs", "1e-3", "--seeds", "0",
                       "--steps", "2", "--set", spec, "--out", str(out)], fragment)
    assert not out.exists()


# --------------------------------------------------------------------------- --threads

THREAD_COMMANDS = [
    ["train", *NANO, "--out", "never"],
    ["eval", "perplexity", "--model", "none", "--data", "builtin:pydoc"],
    ["eval", "generation", "--model", "none"],
    ["eval", "robustness", "--model", "none"],
    ["sweep", "--out", "never"],
    ["sweep", "clip", "--out", "never"],
    ["sweep", "decoding", "--model", "none", "--out", "never"],
]


@pytest.mark.parametrize("argv", THREAD_COMMANDS, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("bad", ["0", "-1", str((os.cpu_count() or 1) + 1), "100000", "two"])
def test_threads_between_one_and_the_cpu_count_everywhere(capsys, argv, bad):
    limit = os.cpu_count() or 1
    shown = repr(bad) if bad == "two" else bad
    _usage_error(capsys, argv + ["--threads", bad],
                 f"argument --threads: must be an integer between 1 and {limit} (this machine's CPU count), got {shown}")


def test_threads_in_a_config_file_is_bounded_too(tmp_path, capsys):
    f = tmp_path / "r.toml"
    f.write_text("threads = 100000\n", encoding="utf-8")
    limit = os.cpu_count() or 1
    _one_line(capsys, ["train", "--config", str(f), "--out", str(tmp_path / "run")],
              f"--threads must be an integer between 1 and {limit} (this machine's CPU count), got 100000")


# --------------------------------------------------------------------------- --device

@pytest.mark.parametrize("device,fragment", [
    ("meta", "--device meta: not supported (steadylm runs on cpu, cuda or cuda:N)"),
    ("mps", "--device mps: not supported (steadylm runs on cpu, cuda or cuda:N)"),
    ("xla", "--device xla: not supported"),
    ("nonsense", "--device 'nonsense': not a device (cpu, cuda, cuda:N)"),
])
def test_unsupported_devices_are_one_line(tmp_path, capsys, device, fragment):
    out = tmp_path / "run"
    _one_line(capsys, ["train", *NANO, "--steps", "1", "--device", device, "--out", str(out)], fragment)
    assert not out.exists()


def test_cuda_device_index_must_exist(monkeypatch):
    import torch

    from steadylm.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device(None, local_rank=1) == torch.device("cuda:1")
    assert resolve_device(None) == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"^--device cuda:2: this machine has 2 CUDA devices \(cuda:0 to cuda:1\)$"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match=r"^LOCAL_RANK=3: this machine has 2 CUDA devices"):
        resolve_device(None, local_rank=3)


# --------------------------------------------------------------------------- RANK / WORLD_SIZE / LOCAL_RANK

BAD_RANKS = [
    ({"RANK": "abc"}, "environment variable RANK='abc' is not an integer"),
    ({"WORLD_SIZE": "2.0"}, "environment variable WORLD_SIZE='2.0' is not an integer"),
    ({"LOCAL_RANK": "x"}, "environment variable LOCAL_RANK='x' is not an integer"),
    ({"RANK": "-1"}, "environment variable RANK=-1 must be zero or more"),
    ({"LOCAL_RANK": "-1"}, "environment variable LOCAL_RANK=-1 must be zero or more"),
    ({"WORLD_SIZE": "0"}, "environment variable WORLD_SIZE=0 must be at least 1"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "environment variable RANK=2 must be below WORLD_SIZE=2"),
    ({"RANK": "1"}, "environment variable RANK=1 must be below WORLD_SIZE=1"),
]


@pytest.mark.parametrize("env,fragment", BAD_RANKS)
def test_bad_launcher_variables_in_train(tmp_path, capsys, monkeypatch, env, fragment):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "run"
    _one_line(capsys, ["train", *NANO, "--steps", "1", "--out", str(out)], fragment)
    assert not out.exists()


@pytest.mark.parametrize("env,fragment", BAD_RANKS[:2] + BAD_RANKS[-1:])
def test_bad_launcher_variables_in_eval_generation_before_the_model_loads(tmp_path, capsys, monkeypatch, env, fragment):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _one_line(capsys, ["eval", "generation", "--model", str(tmp_path / "absent"), "--out", str(tmp_path / "ev")], fragment)


def test_launch_ranks_defaults_and_values(monkeypatch):
    from steadylm.runtime import launch_ranks

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert launch_ranks() == (0, 1, 0)
    monkeypatch.setenv("RANK", "")  # set but empty: the default, as before
    assert launch_ranks() == (0, 1, 0)
    monkeypatch.setenv("RANK", " 3 ")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_ranks() == (3, 4, 1)


# --------------------------------------------------------------------------- layering

def test_config_imports_nothing_from_train():
    import subprocess
    import sys

    code = ("import sys, steadylm.config as c; c.TrainConfig.from_dict({'guard': {'inject': ['nan@3']}}); "
            "print(sorted(m for m in sys.modules if m.startswith('steadylm.train')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_resume_on_a_smaller_machine_uses_its_cores(tmp_path, capsys):
    """A run started with more threads than this machine has is continued with this machine's
    cores (a note says so), not refused: --resume takes no flag to change it."""
    import os

    from steadylm.config import TrainConfig
    from steadylm.train.loop import TrainingRun

    d = tmp_path / "run"
    d.mkdir()
    cfg = TrainConfig.from_dict({"out": str(d), "steps": 2}).to_dict()
    cfg["threads"] = (os.cpu_count() or 1) + 7
    (d / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    run = TrainingRun.resume(d)
    assert run.cfg.threads == (os.cpu_count() or 1)
    assert f"the run used {cfg['threads']} threads" in capsys.readouterr().err
