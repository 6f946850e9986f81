"""Configuration: one dataclass per concern, validated in ``__post_init__``.

Each field carries its one-line help and its command-line flag in its metadata (`_f`); the CLI
generates the ``steadylm train`` flags from these (`train_options`), and every validation message
names the flag with `flag_of`, so a default is written exactly once and a message cannot name a
flag that does not exist. Invalid values raise `ConfigError` (a `ValueError` and a `SteadyError`),
never an ``assert``.

A training run is described by `TrainConfig`, whose sections map one-to-one to the tables of a
TOML file given with ``--config``::

    steps = 500
    seed = 1
    [optim]
    lr = 3e-3
    [clip]
    method = "norm"
    max_norm = 1.0

Precedence: dataclass defaults < ``--config`` file < command-line flags.

Types are strict, checked against the annotations (`check_value`) wherever a config is built from
a dict - a file, ``sweep --set``, a saved ``config.json``: ``trust_remote_code = "false"`` is a
string, not a boolean, and is refused rather than read as truthy; ``steps = 3.5`` is not an integer.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .runtime import check_threads


def _f(default: Any, help: str, *, flag: str | None = "", choices: tuple[str, ...] = (), metavar: str = "",
       flag_help: str = "") -> Any:
    """A dataclass field with what the CLI generates its flag from: the help, the flag's name
    (default: the field's, ``--beta2``; None: no flag, a file or ``--set`` only), the values a text
    field takes, a metavar. A boolean's flag sets the opposite of its default; ``flag_help`` says
    what that flag does when its name reads the other way (``--no-decay-embeddings``)."""
    meta = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "flag_help": flag_help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _field(cls: Any, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def flag_of(cls: Any, name: str) -> str | None:
    """The command-line flag of field ``name`` of config dataclass ``cls`` (or an instance), as
    messages name it and the CLI generates it; None for a field set by a file or ``--set`` only."""
    flag = _field(cls, name).metadata.get("flag", "")
    return "--" + name.replace("_", "-") if flag == "" else flag


def _positive(cfg: Any, name: str, *, allow_zero: bool = False) -> None:
    """Refuse a field of ``cfg`` that is not positive (or zero, with ``allow_zero``); None passes."""
    value = getattr(cfg, name)
    if value is None:
        return
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = "zero or more" if allow_zero else "positive"
        raise ConfigError(f"{flag_of(cfg, name)} must be {bound}, got {value!r}")


def _one_of(cfg: Any, name: str) -> None:
    """Refuse a field of ``cfg`` whose value is not one of its metadata's choices."""
    value, choices = getattr(cfg, name), _field(cfg, name).metadata["choices"]
    if value not in choices:
        raise ConfigError(f"unknown {flag_of(cfg, name)} {value!r}; choose one of: {', '.join(choices)}")


#: the integers a config may hold: what torch, numpy and JSON readers elsewhere take (int64)
INT_RANGE = (-(2**63), 2**63 - 1)
#: seeds: torch's generators take < 2**64, and the data order multiplies the seed by ~1e6
SEED_MAX = 2**32 - 1
_KIND_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "table", type(None): "none"}
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SHOW.maxlevel = 2


def _kind_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_kind_name(a) for a in args)
    if typing.get_origin(hint) is list and args:
        return f"list of {_kind_name(args[0])}"
    return _KIND_NAMES.get(typing.get_origin(hint) or hint, getattr(hint, "__name__", str(hint)))


def _problem(value: Any, hint: Any) -> tuple[Any, Any, str] | None:
    """(the offending value, what it should be, why) if ``value`` is not a ``hint``; else None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    found = f"got {_KIND_NAMES.get(type(value), type(value).__name__)}"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        problems = [_problem(value, a) for a in options]
        if any(p is None for p in problems):
            return None
        if len(options) == 1 and problems[0][0] is value:  # name the whole union ("int or none")
            return value, hint, problems[0][2]
        return problems[0] if len(options) == 1 else (value, hint, found)
    if (origin or hint) is list:
        if not isinstance(value, list):
            return value, hint, found
        return next((p for p in (_problem(v, args[0]) for v in value) if p), None) if args else None
    if (origin or hint) is dict:
        return None if isinstance(value, dict) else (value, hint, found)
    if hint in (bool, str):
        return None if type(value) is hint else (value, hint, found)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return value, hint, found
        lo, hi = INT_RANGE
        return None if lo <= value <= hi else (value, hint, "outside -2**63 .. 2**63-1")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, hint, found
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int beyond any float
            finite = False
        return None if finite else (value, hint, "not finite")
    return None if hint is Any or isinstance(value, hint) else (value, hint, found)


def check_value(value: Any, hint: Any, where: str) -> None:
    """Refuse ``value`` unless it is a ``hint`` (a field's annotation), strictly: a bool is not an
    int, an int is not a str, a float is not an int; an int fits int64 and a float is finite (an
    int is a fine float). ``X | None`` also takes None. ``where`` names the file and key."""
    p = _problem(value, hint)
    if p is not None:
        bad, expected, why = p
        raise ConfigError(f"{where}: {_SHOW.repr(bad)} is not a valid {_kind_name(expected)} ({why})")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The annotations of a config dataclass's fields, resolved (``int | None``, `DataConfig` ...)."""
    return typing.get_type_hints(cls)


def check_dict(cls: type, d: Any, origin: str) -> None:
    """Refuse unknown keys and values whose type is not their field's annotation, naming ``origin``
    (a file, ``--set``) and the TOML path: ``recipe.toml [optim] lr``. Tables recurse into sections."""
    if not isinstance(d, dict):
        raise ConfigError(f"{origin}: expected a table, got {_KIND_NAMES.get(type(d), type(d).__name__)}")
    hints = field_types(cls)
    for key, value in d.items():
        if key not in hints:
            raise ConfigError(f"{origin}: unknown key {key!r}; known: {', '.join(sorted(hints))}")
        if dataclasses.is_dataclass(hints[key]):
            check_dict(hints[key], value, f"{origin} [{key}]")
        else:
            check_value(value, hints[key], f"{origin} {key}")


#: the tokens fine-tuning data trains on (`steadylm.data.sft`)
LOSS_ON = ("assistant", "all")
#: how `steadylm.data.sft.SFTDataset` fills its rows; ``--packing auto`` picks one for the model
PACKING = ("positions", "padding")


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes training blocks."""

    source: str = _f("builtin:pydoc", "training data: builtin:pydoc, a .txt file or a folder of them, a .jsonl of 'text' "
                     "records (pretraining blocks); or, to fine-tune a --model, a .jsonl of chat 'messages' or of "
                     "'prompt'/'completion' pairs, a .parquet file or folder, or a datasets save_to_disk folder",
                     flag="--data")
    val_fraction: float = _f(0.1, "share of documents held out for validation (split by document, deterministic)")
    context: int = _f(128, "tokens per training sequence")
    vocab_size: int = _f(4096, "vocabulary size of the byte-level BPE trained when no model folder is given")
    corrupt_fraction: float = _f(0.0, "share of training documents turned to noise (characters shuffled, seeded) - a data-quality factor for sweeps; validation untouched")
    duplicate_fraction: float = _f(0.0, "share of training documents repeated once more (seeded) - a data-quality factor for sweeps")
    loss_on: str = _f("assistant", "fine-tuning data: train on the assistant turns (and a completion) only, or on all tokens",
                      choices=LOSS_ON)
    text_field: str | None = _f(None, "fine-tuning data: the field holding plain text (default: 'text')", metavar="NAME")
    messages_field: str | None = _f(None, "fine-tuning data: the field holding a chat's message list (default: 'messages')",
                                    metavar="NAME")
    packing: str = _f("auto", "fine-tuning data: several examples per row with restarting position ids (positions), one "
                      "example per row padded (padding), or positions where the model keeps packed examples apart (auto)",
                      choices=("auto", *PACKING))

    def __post_init__(self) -> None:
        _one_of(self, "loss_on")
        _one_of(self, "packing")
        if self.text_field is not None and self.messages_field is not None:
            raise ConfigError(f"give either {flag_of(self, 'text_field')} or {flag_of(self, 'messages_field')}, not both")
        for name in ("corrupt_fraction", "duplicate_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{flag_of(self, name)} must be in [0, 1], got {getattr(self, name)}")
        _positive(self, "context")
        _positive(self, "vocab_size")
        if self.vocab_size < 300:
            raise ConfigError(f"{flag_of(self, 'vocab_size')} must be at least 300 (256 bytes plus merges), got {self.vocab_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"{flag_of(self, 'val_fraction')} must be in (0, 1), got {self.val_fraction}")


@dataclass
class ModelConfig:
    """Which model to train: a preset built from a transformers config, or a local HF folder."""

    preset: str | None = _f(None, "model preset to build from scratch (default: tiny); see `steadylm presets`")
    path: str | None = _f(None, "a local Hugging Face causal-LM folder or .gguf file to fine-tune", flag="--model", metavar="DIR")
    dropout: float = _f(0.0, "dropout rate set on every dropout field the model's config has")
    trust_remote_code: bool = _f(False, "allow a model folder's own Python code to run (only if you trust it)")
    overrides: dict = _f({}, "extra fields for the preset's transformers config (TOML table [model.overrides])", flag=None)
    attn_softcap: float | None = _f(None, "soft-cap attention logits at CAP, cap * tanh(x / cap) (Gemma 2; architectures "
                                    "that support it, e.g. --preset tiny-gemma2)", metavar="CAP")
    final_softcap: float | None = _f(None, "soft-cap the output logits at CAP (Gemma 2)", metavar="CAP")

    def __post_init__(self) -> None:
        preset, path = flag_of(self, "preset"), flag_of(self, "path")
        if self.preset is not None and self.path is not None:
            raise ConfigError(f"give either {preset} or {path}, not both")
        if self.preset is not None:
            from .models.presets import PRESETS

            if self.preset not in PRESETS:
                raise ConfigError(f"unknown {preset} {self.preset!r}; known: {', '.join(PRESETS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{flag_of(self, 'dropout')} must be in [0, 1), got {self.dropout}")
        if self.overrides:
            if self.path is not None:
                raise ConfigError(f"model.overrides apply to a {preset} only; a {path} folder keeps its own config")
            self._check_overrides()
        _positive(self, "attn_softcap")
        _positive(self, "final_softcap")

    def _check_overrides(self) -> None:
        """Each override names a field of the preset's transformers config and has the type of that
        field's default, and a structural size is positive - before anything is built or trained."""
        from .models.presets import SIZE_FIELDS, preset_config_defaults

        preset = self.preset or "tiny"
        cls_name, defaults = preset_config_defaults(preset)
        for key, value in self.overrides.items():
            where = f"model.overrides.{key}"
            if key not in defaults:
                close = difflib.get_close_matches(key, list(defaults), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{where}: {cls_name} (preset {preset!r}) has no such field{hint}")
            default = defaults[key]
            check_value(value, _SCALAR if default is None else type(default), where)
            if key in SIZE_FIELDS and value is not None and value < 1:
                raise ConfigError(f"{where} must be positive, got {value}")


#: ``--optimizer`` choices (`steadylm.train.optimizers` builds them; config imports nothing from train)
OPTIMIZER_NAMES = ("adamw", "spam", "stable-spam", "muon")


@dataclass
class OptimConfig:
    """AdamW with decoupled weight decay, optional coupled L2/L1 penalties, warm-up + cosine."""

    lr: float = _f(3e-3, "peak learning rate", flag_help="peak learning rate (default: 0.003 from scratch; 5e-05 when fine-tuning a --model, 0.0002 with --lora-r)")
    min_lr_ratio: float = _f(0.1, "final learning rate of the cosine schedule, as a share of --lr")
    warmup_steps: int | None = _f(None, "linear warm-up steps (default: 5% of --steps, at least 1)")
    batch_size: int = _f(16, "sequences per micro-batch")
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    eps: float = _f(1e-8, "AdamW epsilon")
    weight_decay: float = _f(0.1, "decoupled weight decay (AdamW); never applied to biases or norm weights")
    decay_embeddings: bool = _f(True, "apply weight decay to the embedding matrices too", flag="--no-decay-embeddings",
                                flag_help="no weight decay on embedding matrices (OLMo 2)")
    l2: float = _f(0.0, "coupled L2 penalty lambda: loss + lambda * sum(w^2) over decayed weights")
    l1: float = _f(0.0, "L1 penalty lambda: loss + lambda * sum(|w|) over decayed weights")
    optimizer: str = _f("adamw", "adamw (fused torch AdamW); spam or stable-spam (pytorch-optimizer: momentum reset and "
                        "spike-aware clipping, Huang et al. 2025); muon (torch.optim.Muon on hidden matrices, AdamW on the "
                        "rest; with --qk-clip this is MuonClip)", choices=OPTIMIZER_NAMES)
    spam_reset_every: int | None = _f(None, "SPAM / Stable-SPAM: steps between momentum resets (default: the library's, 500 / 1000)")

    def __post_init__(self) -> None:
        for name in ("lr", "batch_size", "grad_accum", "eps"):
            _positive(self, name)
        for name in ("warmup_steps", "weight_decay", "l2", "l1"):
            _positive(self, name, allow_zero=True)
        _one_of(self, "optimizer")
        _positive(self, "spam_reset_every")
        if self.spam_reset_every is not None and self.optimizer not in ("spam", "stable-spam"):
            raise ConfigError(f"{flag_of(self, 'spam_reset_every')} applies to --optimizer spam or stable-spam only")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"{flag_of(self, 'min_lr_ratio')} must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{flag_of(self, name)} must be in [0, 1), got {getattr(self, name)}")


#: what an override of a transformers field whose default is None may be
_SCALAR = bool | int | float | str | None


CLIP_METHODS = ("none", "norm", "value", "autoclip", "zclip", "agc")
ZCLIP_MODES = ("zscore", "percentile")
ZCLIP_OPTIONS = ("adaptive_scaling", "mean")


@dataclass
class ClipConfig:
    """Gradient clipping applied before every optimizer step (see `steadylm.train.clip`)."""

    method: str = _f("norm", "gradient clipping: " + ", ".join(CLIP_METHODS), flag="--clip", choices=CLIP_METHODS)
    max_norm: float = _f(1.0, "threshold of --clip norm (global L2 norm of all gradients); also ZClip's absolute cap (its max_grad_norm)")
    clip_value: float = _f(1.0, "threshold of --clip value (each gradient element to [-V, V])")
    percentile: float = _f(10.0, "AutoClip: clip to this percentile of the history of gradient norms, in (0, 100]")
    history: int = _f(1000, "AutoClip: how many past norms to keep")
    alpha: float = _f(0.97, "ZClip: EMA smoothing factor of the norm's mean and variance, in (0, 1)")
    z_thresh: float = _f(2.5, "ZClip: z-score above which a norm is a spike")
    zclip_warmup: int = _f(25, "ZClip: steps of plain --max-norm clipping that seed the statistics",
                           flag_help="ZClip: steps of plain --max-norm clipping that seed the statistics "
                                     "(default: 25; fine-tuning a --model: min(25, max(5, steps/4)))")
    zclip_mode: str = _f("zscore", "ZClip mode: " + ", ".join(ZCLIP_MODES), choices=ZCLIP_MODES)
    zclip_option: str = _f("adaptive_scaling", "ZClip clip_option in zscore mode: " + ", ".join(ZCLIP_OPTIONS), choices=ZCLIP_OPTIONS)
    zclip_factor: float = _f(1.0, "ZClip clip_factor: scales the adaptive threshold")
    zclip_skip_on_spike: bool = _f(False, "ZClip skip_update_on_spike: leave the statistics alone on a spike")
    agc_clipping: float = _f(0.01, "AGC: lambda, the largest allowed ratio of unit-wise gradient norm to weight norm")
    agc_eps: float = _f(1e-3, "AGC: floor on the weight norm")
    agc_skip_output: bool = _f(True, "AGC: leave the output layer unclipped (as the paper does for the classifier)",
                               flag="--agc-clip-output", flag_help="AGC: clip the output layer too")

    def __post_init__(self) -> None:
        _one_of(self, "method")
        _positive(self, "max_norm")
        _positive(self, "clip_value")
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"{flag_of(self, 'percentile')} must be in (0, 100], got {self.percentile}")
        _positive(self, "history")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"{flag_of(self, 'alpha')} must be in (0, 1), got {self.alpha}")
        for name in ("z_thresh", "zclip_factor", "agc_clipping", "agc_eps"):
            _positive(self, name)
        _positive(self, "zclip_warmup", allow_zero=True)
        _one_of(self, "zclip_mode")
        _one_of(self, "zclip_option")

    def clipper_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the clipper ``method`` names (AGC's exclusions come from the model)."""
        return {
            "none": {},
            "norm": {"max_norm": self.max_norm},
            "value": {"clip_value": self.clip_value},
            "autoclip": {"percentile": self.percentile, "history": self.history},
            "zclip": {"alpha": self.alpha, "z_thresh": self.z_thresh, "max_grad_norm": self.max_norm,
                      "warmup_steps": self.zclip_warmup, "mode": self.zclip_mode, "clip_option": self.zclip_option,
                      "clip_factor": self.zclip_factor, "skip_update_on_spike": self.zclip_skip_on_spike},
            "agc": {"clipping": self.agc_clipping, "eps": self.agc_eps},
        }[self.method]


GUARD_ACTIONS = ("off", "skip", "rollback")
PRECISIONS = ("fp32", "bf16", "fp16")
_INJECT = re.compile(r"^(nan)@(\d+)$|^(spike|lr)@(\d+):([0-9eE.+-]+)$")


@dataclass(frozen=True)
class Injection:
    """One injected fault (``--inject``; see `steadylm.train.spikes`)."""

    kind: str
    step: int
    factor: float = 1.0

    @property
    def spec(self) -> str:
        return f"{self.kind}@{self.step}" if self.kind == "nan" else f"{self.kind}@{self.step}:{self.factor:g}"


def parse_injection(spec: str) -> Injection:
    """``nan@STEP``, ``spike@STEP:FACTOR`` or ``lr@STEP:FACTOR`` (steps count from 1)."""
    flag = flag_of(GuardConfig, "inject")
    m = _INJECT.match(spec.strip())
    if not m:
        raise ConfigError(f"{flag} {spec!r} does not parse; use nan@STEP, spike@STEP:FACTOR or lr@STEP:FACTOR")
    if m.group(1):
        kind, step, factor = "nan", int(m.group(2)), 1.0
    else:
        kind, step = m.group(3), int(m.group(4))
        try:
            factor = float(m.group(5))
        except ValueError:
            raise ConfigError(f"{flag} {spec!r}: FACTOR must be a number") from None
        if not math.isfinite(factor) or factor <= 0:
            raise ConfigError(f"{flag} {spec!r}: FACTOR must be a positive finite number")
    if step < 1:
        raise ConfigError(f"{flag} {spec!r}: STEP counts from 1")
    return Injection(kind, step, factor)


def check_guard(action: str, sigma: float, window: int, min_samples: int, max_consecutive: int) -> None:
    """The settings of a `steadylm.train.spikes.SpikeGuard`, checked as `GuardConfig` checks them."""
    GuardConfig(action=action, sigma=sigma, window=window, min_samples=min_samples, max_consecutive=max_consecutive)


@dataclass
class GuardConfig:
    """Loss-spike and NaN guard (see `steadylm.train.spikes`); defaults from OLMo-core."""

    action: str = _f("skip", "on a NaN/Inf or a spike: " + ", ".join(GUARD_ACTIONS), flag="--guard", choices=GUARD_ACTIONS)
    sigma: float = _f(6.0, "a loss or grad norm this many standard deviations above the rolling mean is a spike", flag="--guard-sigma")
    window: int = _f(128, "rolling window of steps for the spike statistics", flag="--guard-window")
    min_samples: int = _f(20, "values needed in the window before spikes are judged", flag="--guard-min-samples",
                          flag_help="values needed in the window before spikes are judged "
                                    "(default: 20; fine-tuning a --model: min(20, max(5, steps/4)))")
    max_consecutive: int = _f(5, "stop the run after this many incidents in a row", flag="--guard-max-consecutive")
    rollback_lr_factor: float = _f(1.0, "after a rollback, multiply the learning rate by this factor (in (0, 1]) for --rollback-lr-steps steps")
    rollback_lr_steps: int = _f(0, "steps after a rollback that run at the lowered learning rate (0: none)")
    max_rollbacks: int | None = _f(None, "stop the run after this many rollbacks in all (default: no limit)", flag="--guard-max-rollbacks")
    inject: list[str] = _f([], "faults to inject for tests and demos: nan@STEP, spike@STEP:FACTOR, lr@STEP:FACTOR (repeatable)",
                           metavar="SPEC")

    def __post_init__(self) -> None:
        _one_of(self, "action")
        _positive(self, "sigma")
        for name in ("window", "min_samples"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{flag_of(self, name)} must be at least 2, got {getattr(self, name)}")
        _positive(self, "max_consecutive")
        if not 0.0 < self.rollback_lr_factor <= 1.0:
            raise ConfigError(f"{flag_of(self, 'rollback_lr_factor')} must be in (0, 1], got {self.rollback_lr_factor}")
        _positive(self, "rollback_lr_steps", allow_zero=True)
        _positive(self, "max_rollbacks")
        if self.action != "rollback" and (self.rollback_lr_factor != 1.0 or self.rollback_lr_steps or self.max_rollbacks is not None):
            named = ", ".join(flag_of(self, n) for n in ("rollback_lr_factor", "rollback_lr_steps"))
            raise ConfigError(f"{named} and {flag_of(self, 'max_rollbacks')} need {flag_of(self, 'action')} rollback")
        if not isinstance(self.inject, list):
            raise ConfigError("inject must be a list of specs like 'nan@10'")
        for spec in self.inject:
            parse_injection(str(spec))


@dataclass
class CheckpointConfig:
    """How often to write checkpoints and how many to keep."""

    every: int = _f(100, "write a checkpoint every K optimizer steps (and at the end)", flag="--checkpoint-every")
    keep: int = _f(3, "keep the newest K checkpoints", flag="--keep-checkpoints")

    def __post_init__(self) -> None:
        _positive(self, "every")
        _positive(self, "keep")


@dataclass
class LoraConfig:
    """LoRA adapters through peft (Hu et al. 2021): only low-rank updates of the chosen projections train."""

    r: int = _f(0, "LoRA rank; 0 trains every weight (a full fine-tune); needs --model", flag="--lora-r")
    alpha: float = _f(16.0, "LoRA alpha: the update is scaled by alpha / r", flag="--lora-alpha")
    dropout: float = _f(0.05, "dropout on the LoRA branch's input", flag="--lora-dropout")
    targets: list[str] = _f([], "modules to adapt, by name (repeatable or comma-separated; default: the attention and MLP "
                                "projections the model has: q/k/v/o_proj, gate/up/down_proj or c_attn/c_proj/c_fc)",
                            flag="--lora-targets", metavar="NAME")

    def __post_init__(self) -> None:
        _positive(self, "r", allow_zero=True)
        _positive(self, "alpha")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{flag_of(self, 'dropout')} must be in [0, 1), got {self.dropout}")
        if isinstance(self.targets, list):  # "q_proj,v_proj" and repeated flags alike
            self.targets = [t.strip() for item in self.targets for t in str(item).split(",") if t.strip()]


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run folder."""

    out: str = _f("runs/train", "run folder to write", flag=None)  # train's own --out (and --resume)
    steps: int = _f(300, "optimizer steps")
    seed: int = _f(0, "seed for initialisation, data order and dropout")
    eval_batch_size: int = _f(16, "windows per batch in the final validation perplexity")
    threads: int | None = _f(None, "torch CPU threads (default: torch's choice)")
    device: str | None = _f(None, "cpu, cuda or cuda:N (default: cuda when available, under accelerate launch cuda:LOCAL_RANK; else cpu)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    z_loss: float = _f(0.0, "z-loss coefficient C: adds C * log^2 Z per token (PaLM uses 1e-4); 0 turns it off")
    ema: float = _f(0.0, "keep an exponential moving average of the weights with this decay (e.g. 0.999); 0 turns it off")
    monitor_every: int = _f(0, "every N steps also log the update-to-weight ratio per parameter group, the max attention logit and the output log Z; 0 turns it off")
    precision: str = _f("fp32", "forward-pass precision: fp32, bf16 (autocast) or fp16 (autocast with dynamic loss scaling); weights and optimizer state stay fp32",
                        choices=PRECISIONS)
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass instead of keeping them (less memory, about a third more compute)")
    compile: bool = _f(False, "compile the model with torch.compile (opt-in; the first steps are slow while it compiles)")
    qk_clip: float | None = _f(None, "QK-Clip (Kimi K2): after each update, scale the query and key weights of every head "
                               "whose max attention logit passed TAU by sqrt(TAU / max) each (off by default)", metavar="TAU")
    fsdp: bool = _f(False, "shard parameters, gradients and optimizer state over the processes with FSDP2 (needs a launcher: "
                           "accelerate launch or torchrun; accelerate's own FSDP setting, ACCELERATE_USE_FSDP, does the same)")

    def __post_init__(self) -> None:
        _positive(self, "z_loss", allow_zero=True)
        _positive(self, "qk_clip")
        _positive(self, "monitor_every", allow_zero=True)
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"{flag_of(self, 'ema')} must be in [0, 1), got {self.ema}")
        _one_of(self, "precision")
        _positive(self, "steps")
        _positive(self, "eval_batch_size")
        if self.threads is not None:
            check_threads(self.threads, what=flag_of(self, "threads"))
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"{flag_of(self, 'seed')} must be between 0 and {SEED_MAX} (2**32 - 1), got {self.seed}")
        if self.lora.r and self.model.path is None:
            raise ConfigError(f"{flag_of(LoraConfig, 'r')} adapts a pretrained model: give {flag_of(ModelConfig, 'path')} "
                              f"(a {flag_of(ModelConfig, 'preset')} model starts from random weights and trains in full)")

    @property
    def warmup_steps(self) -> int:
        if self.optim.warmup_steps is not None:
            return self.optim.warmup_steps
        return max(1, self.steps // 20)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, origin: str = "config") -> "TrainConfig":
        """Build from a dict (a file, ``--set`` overrides, a saved ``config.json``), every key and
        type checked first; ``origin`` names the source in errors."""
        check_dict(cls, d, origin)
        return _build(cls, finetune_defaults(d))


def finetune_defaults(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with the fine-tuning defaults filled in where it sets nothing, when it fine-tunes a
    ``model.path``: a pretrained model wants a learning rate ~60x below the from-scratch one
    (SmolLM2-135M-Instruct at 3e-3 went from loss 3.58 to 8.43 in three steps; at 5e-5 it
    improves), and a short fine-tune must leave the ZClip and guard warm-ups (25 and 20 steps
    seed their statistics; a 20-step run never left them). LoRA adapters start at zero and train
    few weights: 2e-4, the rate the LoRA/QLoRA papers and peft's examples use (SmolLM2, 5 steps:
    validation loss 3.048 at 2e-4 vs 3.064 at 5e-5). A saved ``config.json`` sets every field, so
    a resumed run keeps what it started with."""
    if not (d.get("model") or {}).get("path"):
        return d
    steps = d.get("steps", _field(TrainConfig, "steps").default)
    lora = bool((d.get("lora") or {}).get("r"))
    filled = {"optim": {"lr": 2e-4 if lora else 5e-5},
              "clip": {"zclip_warmup": min(_field(ClipConfig, "zclip_warmup").default, max(5, steps // 4))},
              "guard": {"min_samples": min(_field(GuardConfig, "min_samples").default, max(5, steps // 4))}}
    return merge(filled, d)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "clip": ClipConfig, "checkpoint": CheckpointConfig,
            "guard": GuardConfig, "lora": LoraConfig}


class Option(typing.NamedTuple):
    """One ``steadylm train`` flag and the field of ``cls`` it sets (``section`` None: top level)."""

    flag: str
    section: str | None
    cls: type
    field: dataclasses.Field


@functools.cache
def train_options() -> tuple[Option, ...]:
    """Every flag of `TrainConfig` and its sections, in field order: what the CLI generates."""
    out: list[Option] = []
    for f in dataclasses.fields(TrainConfig):
        section, cls = (f.name, SECTIONS[f.name]) if f.name in SECTIONS else (None, TrainConfig)
        fields = dataclasses.fields(cls) if section else (f,)
        out += [Option(flag_of(cls, g.name), section, cls, g) for g in fields if flag_of(cls, g.name) is not None]
    return tuple(out)


def _build(cls: type, d: dict[str, Any]) -> Any:
    """``cls`` from a dict `check_dict` accepted (sections built from their tables)."""
    hints = field_types(cls)
    return cls(**{k: _build(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v for k, v in d.items()})


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a plain dict, its keys and types checked against
    `TrainConfig` (errors name the file); the domains are checked when the config is built."""
    from .io import MAX_JSON_DEPTH, json_depth, loads_json, read_text

    p = Path(path)
    text = read_text(p, error=ConfigError, what="--config")
    if p.suffix == ".json":
        data = loads_json(text, f"--config {path}", error=ConfigError)
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config {path}: invalid TOML: {e}") from None
        except RecursionError:  # tomllib recurses per level of nesting
            data = None
        if data is None or json_depth(data) > MAX_JSON_DEPTH:
            raise ConfigError(f"--config {path}: TOML nested deeper than {MAX_JSON_DEPTH} levels; refused")
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table at the top level")
    check_dict(TrainConfig, data, str(path))
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (tables merge, scalars replace)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "overrides":
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def help_of(cls: type, name: str) -> str:
    """The help of a field's flag, with the field's default (not where the flag's name reads the
    other way: ``--no-decay-embeddings`` says what it does)."""
    f = _field(cls, name)
    default = f.default if f.default is not dataclasses.MISSING and not f.metadata.get("flag_help") else None
    text = (f.metadata.get("flag_help") or f.metadata.get("help", "")).replace("%", "%%")  # argparse formats help with %
    return f"{text} (default: {default})" if default not in (None, [], {}) else text
