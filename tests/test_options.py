"""Training options from one source: the config dataclasses declare every ``steadylm train`` flag
(name, type, choices, help) and the CLI is generated from them, so a flag cannot drift from its
field, a default is written once, and every validation message names a flag that exists."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from steadylm import cli, config
from steadylm.config import SECTIONS, TrainConfig, field_types, finetune_defaults, flag_of, help_of, merge
from steadylm.errors import ConfigError

#: fields without a flag: train has its own --out/--resume, and overrides is a table (--config, --set)
NO_FLAG = {"out", "model.overrides"}


def _fields() -> list[tuple[str | None, type, dataclasses.Field]]:
    """(section, its dataclass, field) for every field of TrainConfig and its sections, in order."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in SECTIONS:
            out += [(f.name, SECTIONS[f.name], g) for g in dataclasses.fields(SECTIONS[f.name])]
        else:
            out.append((None, TrainConfig, f))
    return out


def _path(section: str | None, name: str) -> str:
    return f"{section}.{name}" if section else name


FIELDS = [(s, c, f) for s, c, f in _fields() if _path(s, f.name) not in NO_FLAG]
IDS = [_path(s, f.name) for s, _, f in FIELDS]

#: free-text fields: a value they accept (validated later, at run time, or a name from a list)
TEXT = {"data.source": "corpus.txt", "model.preset": "nano", "model.path": "some/model", "device": "cpu",
        "guard.inject": ["nan@3"], "threads": 1, "lora.targets": ["q_proj"], "data.text_field": "body",
        "data.messages_field": "conversation", "model.attn_softcap": 30.0, "model.final_softcap": 30.0, "qk_clip": 8.0}
#: flags a field's value needs beside it to be valid
NEEDS = {"guard.rollback_lr_factor": {"guard": {"action": "rollback"}},
         "guard.rollback_lr_steps": {"guard": {"action": "rollback"}},
         "guard.max_rollbacks": {"guard": {"action": "rollback"}},
         "lora.r": {"model": {"path": "some/model"}},
         "optim.spam_reset_every": {"optim": {"optimizer": "spam"}}}


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _value(section: str | None, cls: type, f: dataclasses.Field):
    """A valid value of the field that is not its default."""
    path, default, hint = _path(section, f.name), _default(f), field_types(cls)[f.name]
    if path in TEXT:
        return TEXT[path]
    if f.metadata.get("choices"):
        return next(c for c in f.metadata["choices"] if c != default)
    if hint is bool:
        return not default
    if int in (hint, *getattr(hint, "__args__", ())):
        return 1 if default is None else default + 1
    if hint is float:
        return default / 2 if default else 0.5
    raise AssertionError(f"no test value for {path} ({hint})")


def _argv(flag: str, value) -> list[str]:
    if isinstance(value, bool):
        return [flag]
    if isinstance(value, list):
        return [a for v in value for a in (flag, str(v))]
    return [flag, str(value)]


def _needs_argv(path: str) -> list[str]:
    argv = []
    for section, table in NEEDS.get(path, {}).items():
        for name, v in table.items():
            argv += _argv(flag_of(SECTIONS[section], name), v)
    return argv


@pytest.fixture(scope="module")
def train_parser():
    p = cli.build_parser()
    return p._subparsers._group_actions[0].choices["train"]


def _actions(parser) -> dict[str, object]:
    return {s: a for a in parser._actions for s in a.option_strings}


def _config_from_argv(parser, argv: list[str]) -> TrainConfig:
    """What ``steadylm train`` builds from these flags (as `cli.train.cmd_train` does, without a --config file)."""
    args = parser.parse_args(["--out", "run", *argv])
    return TrainConfig.from_dict(merge({}, cli.train._train_overrides(args)), origin="flags")


def test_every_field_has_exactly_one_flag(train_parser):
    actions = _actions(train_parser)
    flags = [flag_of(cls, f.name) for _, cls, f in FIELDS]
    assert all(flags), dict(zip(IDS, flags))
    assert len(set(flags)) == len(flags), "two fields share a flag"
    for path, flag in zip(IDS, flags):
        assert flag in actions, f"{path}: {flag} is not a train flag"
        assert actions[flag].option_strings == [flag], (path, actions[flag].option_strings)
    assert flag_of(TrainConfig, "out") is None and flag_of(SECTIONS["model"], "overrides") is None
    # nothing else: the parser's own flags are the field flags plus the run-level ones
    own = {"-h", "--help", "--out", "--resume", "--overwrite", "--json", "--no-plots", "--config"}
    assert set(actions) == set(flags) | own
    # the names the issue asks for
    assert {flag_of(SECTIONS["optim"], "beta2"), flag_of(TrainConfig, "precision"), flag_of(SECTIONS["guard"], "max_rollbacks"),
            flag_of(SECTIONS["clip"], "agc_skip_output")} == {"--beta2", "--precision", "--guard-max-rollbacks", "--agc-clip-output"}


@pytest.mark.parametrize("section,cls,f", FIELDS, ids=IDS)
def test_each_flag_lands_in_its_field(train_parser, section, cls, f):
    path, value = _path(section, f.name), _value(section, cls, f)
    assert value != _default(f)
    cfg = _config_from_argv(train_parser, _argv(flag_of(cls, f.name), value) + _needs_argv(path))
    given = merge(NEEDS.get(path, {}), {"out": "run", **({section: {f.name: value}} if section else {f.name: value})})
    # the defaults, then the fine-tuning defaults where --model is given, then what the flag set
    expected = merge(TrainConfig().to_dict(), finetune_defaults(given))
    assert cfg.to_dict() == expected and (cfg.to_dict()[section] if section else cfg.to_dict())[f.name] == value


def test_the_parser_writes_no_defaults(train_parser):
    """Every field flag defaults to None, so the dataclass default (written once) applies."""
    actions = _actions(train_parser)
    assert {flag_of(cls, f.name): actions[flag_of(cls, f.name)].default for _, cls, f in FIELDS} == \
        {flag_of(cls, f.name): None for _, cls, f in FIELDS}
    assert _config_from_argv(train_parser, []) == TrainConfig(out="run")


def test_help_is_the_field_metadata(train_parser):
    actions = _actions(train_parser)
    for path, (_, cls, f) in zip(IDS, FIELDS):
        text = f.metadata.get("flag_help") or f.metadata["help"]
        assert actions[flag_of(cls, f.name)].help == help_of(cls, f.name), path
        assert help_of(cls, f.name).startswith(text.replace("%", "%%")), path
    assert actions["--lr"].help == "peak learning rate (default: 0.003 from scratch; 5e-05 when fine-tuning a --model, 0.0002 with --lora-r)"
    assert actions["--beta2"].help == "AdamW beta2 (default: 0.95)"
    assert actions["--clip"].metavar == "{none,norm,value,autoclip,zclip,agc}"
    assert actions["--precision"].metavar == "{fp32,bf16,fp16}"
    assert actions["--inject"].metavar == "SPEC"
    assert actions["--no-decay-embeddings"].help == "no weight decay on embedding matrices (OLMo 2)"


def test_fine_tuning_data_flags(train_parser):
    """Issue 11's names, and a --data help that says which inputs it takes."""
    actions = _actions(train_parser)
    assert actions["--loss-on"].metavar == "{assistant,all}" and actions["--packing"].metavar == "{auto,positions,padding}"
    assert actions["--text-field"].metavar == actions["--messages-field"].metavar == "NAME"
    for kind in (".txt", "'text'", "'messages'", "'prompt'/'completion'", ".parquet", "save_to_disk"):
        assert kind in actions["--data"].help, kind
    cfg = _config_from_argv(train_parser, ["--loss-on", "all", "--packing", "padding", "--messages-field", "conv"])
    assert (cfg.data.loss_on, cfg.data.packing, cfg.data.messages_field, cfg.data.text_field) == ("all", "padding", "conv", None)
    with pytest.raises(ConfigError, match="^give either --text-field or --messages-field, not both$"):
        _config_from_argv(train_parser, ["--text-field", "a", "--messages-field", "b"])


def _bad_value(cls: type, f: dataclasses.Field):
    """A value of the field its validation refuses; None where the config does not validate it."""
    hint = field_types(cls)[f.name]
    if f.metadata.get("choices") or (cls, f.name) == (SECTIONS["model"], "preset"):
        return "bogus"
    if f.name == "inject":
        return ["bogus"]
    if int in (hint, *getattr(hint, "__args__", ())):
        return -1
    if float in (hint, *getattr(hint, "__args__", ())):
        return -1.0
    return None


UNCHECKED = {"data.source", "data.text_field", "data.messages_field", "model.path", "model.trust_remote_code", "device", "optim.decay_embeddings",
             "clip.zclip_skip_on_spike", "clip.agc_skip_output", "gradient_checkpointing", "compile", "fsdp",
             "lora.targets"}  # checked against the model's layers when the run starts (tests/test_lora.py)


@pytest.mark.parametrize("section,cls,f", FIELDS, ids=IDS)
def test_validation_messages_name_the_fields_flag(train_parser, section, cls, f):
    path, bad = _path(section, f.name), _bad_value(cls, f)
    if bad is None:
        assert path in UNCHECKED
        return
    flag = flag_of(cls, f.name)
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({section: {f.name: bad}} if section else {f.name: bad})
    assert flag in str(e.value)
    assert flag in _actions(train_parser)


def test_every_flag_written_in_config_exists(train_parser):
    """No message or help in config.py names a flag the parser lacks (``--beta2`` once did)."""
    source = Path(config.__file__).read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", source)) - {"--set"}
    assert named <= set(_actions(train_parser)), sorted(named - set(_actions(train_parser)))


def test_pairwise_messages_name_real_flags():
    with pytest.raises(ConfigError, match="give either --preset or --model, not both"):
        TrainConfig.from_dict({"model": {"preset": "nano", "path": "x"}})
    with pytest.raises(ConfigError, match="--rollback-lr-factor, --rollback-lr-steps and --guard-max-rollbacks need --guard rollback"):
        TrainConfig.from_dict({"guard": {"rollback_lr_steps": 3}})
    with pytest.raises(ConfigError, match=r"^--beta2 must be in \[0, 1\), got 1.0$"):
        TrainConfig.from_dict({"optim": {"beta2": 1.0}})
    with pytest.raises(ConfigError, match=r"^unknown --preset 'huge'; known: "):
        TrainConfig.from_dict({"model": {"preset": "huge"}})


#: every flag steadylm train had before its flags were generated, with what it set
OLD_FLAGS = [
    (["--data", "x.txt"], {"data": {"source": "x.txt"}}), (["--context", "64"], {"data": {"context": 64}}),
    (["--vocab-size", "500"], {"data": {"vocab_size": 500}}), (["--val-fraction", "0.2"], {"data": {"val_fraction": 0.2}}),
    (["--corrupt-fraction", "0.1"], {"data": {"corrupt_fraction": 0.1}}),
    (["--duplicate-fraction", "0.1"], {"data": {"duplicate_fraction": 0.1}}),
    (["--preset", "nano"], {"model": {"preset": "nano"}}), (["--model", "m"], {"model": {"path": "m"}}),
    (["--dropout", "0.1"], {"model": {"dropout": 0.1}}), (["--steps", "7"], {"steps": 7}), (["--seed", "3"], {"seed": 3}),
    (["--threads", "1"], {"threads": 1}), (["--device", "cpu"], {"device": "cpu"}),
    (["--eval-batch-size", "4"], {"eval_batch_size": 4}), (["--lr", "0.01"], {"optim": {"lr": 0.01}}),
    (["--min-lr-ratio", "0.2"], {"optim": {"min_lr_ratio": 0.2}}), (["--warmup-steps", "0"], {"optim": {"warmup_steps": 0}}),
    (["--batch-size", "4"], {"optim": {"batch_size": 4}}), (["--grad-accum", "2"], {"optim": {"grad_accum": 2}}),
    (["--weight-decay", "0"], {"optim": {"weight_decay": 0.0}}), (["--l2", "0.1"], {"optim": {"l2": 0.1}}),
    (["--l1", "0.1"], {"optim": {"l1": 0.1}}), (["--clip", "zclip"], {"clip": {"method": "zclip"}}),
    (["--max-norm", "2"], {"clip": {"max_norm": 2.0}}), (["--clip-value", "2"], {"clip": {"clip_value": 2.0}}),
    (["--percentile", "5"], {"clip": {"percentile": 5.0}}), (["--history", "9"], {"clip": {"history": 9}}),
    (["--alpha", "0.5"], {"clip": {"alpha": 0.5}}), (["--z-thresh", "3"], {"clip": {"z_thresh": 3.0}}),
    (["--zclip-warmup", "4"], {"clip": {"zclip_warmup": 4}}), (["--zclip-mode", "percentile"], {"clip": {"zclip_mode": "percentile"}}),
    (["--zclip-option", "mean"], {"clip": {"zclip_option": "mean"}}), (["--zclip-factor", "2"], {"clip": {"zclip_factor": 2.0}}),
    (["--agc-clipping", "0.1"], {"clip": {"agc_clipping": 0.1}}), (["--agc-eps", "0.1"], {"clip": {"agc_eps": 0.1}}),
    (["--checkpoint-every", "5"], {"checkpoint": {"every": 5}}), (["--keep-checkpoints", "2"], {"checkpoint": {"keep": 2}}),
    (["--guard", "off"], {"guard": {"action": "off"}}), (["--guard-sigma", "3"], {"guard": {"sigma": 3.0}}),
    (["--guard-window", "9"], {"guard": {"window": 9}}), (["--guard-min-samples", "3"], {"guard": {"min_samples": 3}}),
    (["--guard-max-consecutive", "2"], {"guard": {"max_consecutive": 2}}),
    (["--inject", "nan@2", "--inject", "spike@3:10"], {"guard": {"inject": ["nan@2", "spike@3:10"]}}),
    (["--z-loss", "0.001"], {"z_loss": 0.001}), (["--ema", "0.9"], {"ema": 0.9}), (["--monitor-every", "5"], {"monitor_every": 5}),
    (["--zclip-skip-on-spike"], {"clip": {"zclip_skip_on_spike": True}}),
    (["--agc-clip-output"], {"clip": {"agc_skip_output": False}}),
    (["--no-decay-embeddings"], {"optim": {"decay_embeddings": False}}),
    (["--trust-remote-code"], {"model": {"trust_remote_code": True}}),
]


@pytest.mark.parametrize("argv,sets", OLD_FLAGS, ids=[a[0] for a, _ in OLD_FLAGS])
def test_old_flags_keep_their_name_and_meaning(train_parser, argv, sets):
    args = train_parser.parse_args(["--out", "run", *argv])
    assert cli.train._train_overrides(args) == {**sets, "out": "run"}


@pytest.mark.parametrize("argv", [["--beta2", "0.9"], ["--compile"], ["--zclip-skip-on-spike"], ["--guard-max-rollbacks", "2"]])
def test_resume_refuses_every_generated_flag(tmp_path, capsys, argv):
    from conftest import one_line_error

    one_line_error(capsys, ["train", "--resume", str(tmp_path), *argv],
                   f"--resume continues a run with its saved settings; drop {argv[0]}")


SWEEP_RESERVED = {"optim.lr", "seed", "threads", "guard.inject", "lora.targets"}  # set by --lrs/--seeds/--workers; a list is no factor


@pytest.mark.parametrize("section,cls,f", [x for x, i in zip(FIELDS, IDS) if i not in SWEEP_RESERVED],
                         ids=[i for i in IDS if i not in SWEEP_RESERVED])
def test_sweep_set_reaches_every_field(section, cls, f):
    from steadylm.study.grid import parse_sets
    from steadylm.study.recipes import load_recipe
    from steadylm.study.sweep import plan_cells

    path, value = _path(section, f.name), _value(section, cls, f)
    text = str(value).lower() if isinstance(value, bool) else str(value)
    sets = [f"{path}={text}"] + [f"{s}.{k}={v}" for s, t in NEEDS.get(path, {}).items() for k, v in t.items()]
    if path == "model.path" or "model" in NEEDS.get(path, {}):  # the recipe names a preset, and the two exclude each other
        sets.append("model.preset=none")
    (cell,) = plan_cells([load_recipe("baseline", "nano")], [1e-3], [0], steps=3, preset="nano", factors=parse_sets(sets))
    assert (cell.config[section] if section else cell.config)[f.name] == value


def test_sweep_set_optim_beta2_names_its_flag():
    from steadylm.study.grid import parse_sets
    from steadylm.study.recipes import load_recipe
    from steadylm.study.sweep import plan_cells

    assert parse_sets(["optim.beta2=0.9,0.99"]) == {"optim.beta2": (0.9, 0.99)}
    with pytest.raises(ConfigError, match=r"--beta2 must be in \[0, 1\), got 1.5"):
        plan_cells([load_recipe("baseline", "nano")], [1e-3], [0], steps=3, preset="nano", factors=parse_sets(["optim.beta2=1.5"]))


@pytest.mark.parametrize("how", ["flag", "accelerate"])
def test_fsdp_in_one_process_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, how):
    """FSDP shards over processes: in one process --fsdp (or accelerate's ACCELERATE_USE_FSDP, what
    ``accelerate launch --use_fsdp`` sets) is one error line, and no run folder appears."""
    from conftest import one_line_error

    argv = ["train", "--preset", "nano", "--steps", "1", "--out", str(tmp_path / "run")]
    if how == "flag":
        argv.append("--fsdp")
    else:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    line = one_line_error(capsys, argv, "FSDP shards the model over several processes")
    assert ("--fsdp" if how == "flag" else "ACCELERATE_USE_FSDP") in line
    assert not (tmp_path / "run").exists()
