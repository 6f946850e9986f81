"""Configuration: one dataclass per concern, validated in ``__post_init__``.

Each field carries its one-line help in ``metadata["help"]``; the CLI builds its flags' help
from these, so a default is written exactly once. Invalid values raise `ConfigError` (a
`ValueError` and a `SteadyError`), never an ``assert``.

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
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text, so the CLI can reuse it."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _positive(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = "zero or more" if allow_zero else "positive"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes training blocks."""

    source: str = _f("builtin:pydoc", "training text: builtin:pydoc, a .txt file, a folder of .txt files, or a .jsonl file with a 'text' field")
    val_fraction: float = _f(0.1, "share of documents held out for validation (split by document, deterministic)")
    context: int = _f(128, "tokens per training sequence")
    vocab_size: int = _f(4096, "vocabulary size of the byte-level BPE trained when no model folder is given")
    corrupt_fraction: float = _f(0.0, "share of training documents turned to noise (characters shuffled, seeded) - a data-quality factor for sweeps; validation untouched")
    duplicate_fraction: float = _f(0.0, "share of training documents repeated once more (seeded) - a data-quality factor for sweeps")

    def __post_init__(self) -> None:
        for name, v in (("--corrupt-fraction", self.corrupt_fraction), ("--duplicate-fraction", self.duplicate_fraction)):
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {v}")
        _positive("--context", self.context)
        _positive("--vocab-size", self.vocab_size)
        if self.vocab_size < 300:
            raise ConfigError(f"--vocab-size must be at least 300 (256 bytes plus merges), got {self.vocab_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class ModelConfig:
    """Which model to train: a preset built from a transformers config, or a local HF folder."""

    preset: str | None = _f(None, "model preset to build from scratch (default: tiny); see `steadylm presets`")
    path: str | None = _f(None, "a local Hugging Face causal-LM folder to fine-tune")
    dropout: float = _f(0.0, "dropout rate set on every dropout field the model's config has")
    trust_remote_code: bool = _f(False, "allow a model folder's own Python code to run (only if you trust it)")
    overrides: dict = _f({}, "extra fields for the preset's transformers config (TOML table [model.overrides])")

    def __post_init__(self) -> None:
        if self.preset is not None and self.path is not None:
            raise ConfigError("give either --preset or --model, not both")
        if self.preset is not None:
            from .models.presets import PRESETS

            if self.preset not in PRESETS:
                raise ConfigError(f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")


@dataclass
class OptimConfig:
    """AdamW with decoupled weight decay, optional coupled L2/L1 penalties, warm-up + cosine."""

    lr: float = _f(3e-3, "peak learning rate")
    min_lr_ratio: float = _f(0.1, "final learning rate of the cosine schedule, as a share of --lr")
    warmup_steps: int | None = _f(None, "linear warm-up steps (default: 5% of --steps, at least 1)")
    batch_size: int = _f(16, "sequences per micro-batch")
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    eps: float = _f(1e-8, "AdamW epsilon")
    weight_decay: float = _f(0.1, "decoupled weight decay (AdamW); never applied to biases or norm weights")
    decay_embeddings: bool = _f(True, "apply weight decay to the embedding matrices too")
    l2: float = _f(0.0, "coupled L2 penalty lambda: loss + lambda * sum(w^2) over decayed weights")
    l1: float = _f(0.0, "L1 penalty lambda: loss + lambda * sum(|w|) over decayed weights")

    def __post_init__(self) -> None:
        _positive("--lr", self.lr)
        _positive("--batch-size", self.batch_size)
        _positive("--grad-accum", self.grad_accum)
        _positive("--warmup-steps", self.warmup_steps, allow_zero=True)
        _positive("--weight-decay", self.weight_decay, allow_zero=True)
        _positive("--l2", self.l2, allow_zero=True)
        _positive("--l1", self.l1, allow_zero=True)
        _positive("--eps", self.eps)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name, b in (("--beta1", self.beta1), ("--beta2", self.beta2)):
            if not 0.0 <= b < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {b}")


CLIP_METHODS = ("none", "norm", "value", "autoclip", "zclip", "agc")
ZCLIP_MODES = ("zscore", "percentile")
ZCLIP_OPTIONS = ("adaptive_scaling", "mean")


@dataclass
class ClipConfig:
    """Gradient clipping applied before every optimizer step (see `steadylm.train.clip`)."""

    method: str = _f("norm", "gradient clipping: " + ", ".join(CLIP_METHODS))
    max_norm: float = _f(1.0, "threshold of --clip norm (global L2 norm of all gradients); also ZClip's absolute cap (its max_grad_norm)")
    clip_value: float = _f(1.0, "threshold of --clip value (each gradient element to [-V, V])")
    percentile: float = _f(10.0, "AutoClip: clip to this percentile of the history of gradient norms, in (0, 100]")
    history: int = _f(1000, "AutoClip: how many past norms to keep")
    alpha: float = _f(0.97, "ZClip: EMA smoothing factor of the norm's mean and variance, in (0, 1)")
    z_thresh: float = _f(2.5, "ZClip: z-score above which a norm is a spike")
    zclip_warmup: int = _f(25, "ZClip: steps of plain --max-norm clipping that seed the statistics")
    zclip_mode: str = _f("zscore", "ZClip mode: " + ", ".join(ZCLIP_MODES))
    zclip_option: str = _f("adaptive_scaling", "ZClip clip_option in zscore mode: " + ", ".join(ZCLIP_OPTIONS))
    zclip_factor: float = _f(1.0, "ZClip clip_factor: scales the adaptive threshold")
    zclip_skip_on_spike: bool = _f(False, "ZClip skip_update_on_spike: leave the statistics alone on a spike")
    agc_clipping: float = _f(0.01, "AGC: lambda, the largest allowed ratio of unit-wise gradient norm to weight norm")
    agc_eps: float = _f(1e-3, "AGC: floor on the weight norm")
    agc_skip_output: bool = _f(True, "AGC: leave the output layer unclipped (as the paper does for the classifier)")

    def __post_init__(self) -> None:
        if self.method not in CLIP_METHODS:
            raise ConfigError(f"unknown --clip {self.method!r}; choose one of: {', '.join(CLIP_METHODS)}")
        _positive("--max-norm", self.max_norm)
        _positive("--clip-value", self.clip_value)
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"--percentile must be in (0, 100], got {self.percentile}")
        _positive("--history", self.history)
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"--alpha must be in (0, 1), got {self.alpha}")
        _positive("--z-thresh", self.z_thresh)
        _positive("--zclip-warmup", self.zclip_warmup, allow_zero=True)
        _positive("--zclip-factor", self.zclip_factor)
        _positive("--agc-clipping", self.agc_clipping)
        _positive("--agc-eps", self.agc_eps)
        if self.zclip_mode not in ZCLIP_MODES:
            raise ConfigError(f"unknown --zclip-mode {self.zclip_mode!r}; choose one of: {', '.join(ZCLIP_MODES)}")
        if self.zclip_option not in ZCLIP_OPTIONS:
            raise ConfigError(f"unknown --zclip-option {self.zclip_option!r}; choose one of: {', '.join(ZCLIP_OPTIONS)}")

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


@dataclass
class GuardConfig:
    """Loss-spike and NaN guard (see `steadylm.train.spikes`); defaults from OLMo-core."""

    action: str = _f("skip", "on a NaN/Inf or a spike: " + ", ".join(GUARD_ACTIONS))
    sigma: float = _f(6.0, "a loss or grad norm this many standard deviations above the rolling mean is a spike")
    window: int = _f(128, "rolling window of steps for the spike statistics")
    min_samples: int = _f(20, "values needed in the window before spikes are judged")
    max_consecutive: int = _f(5, "stop the run after this many incidents in a row")
    inject: list = _f([], "faults to inject for tests and demos: nan@STEP, spike@STEP:FACTOR, lr@STEP:FACTOR (repeatable)")

    def __post_init__(self) -> None:
        from .train.spikes import SpikeGuard, parse_injection

        SpikeGuard(self.action, sigma=self.sigma, window=self.window, min_samples=self.min_samples, max_consecutive=self.max_consecutive)
        if not isinstance(self.inject, list):
            raise ConfigError("inject must be a list of specs like 'nan@10'")
        for spec in self.inject:
            parse_injection(str(spec))


@dataclass
class CheckpointConfig:
    """How often to write checkpoints and how many to keep."""

    every: int = _f(100, "write a checkpoint every K optimizer steps (and at the end)")
    keep: int = _f(3, "keep the newest K checkpoints")

    def __post_init__(self) -> None:
        _positive("--checkpoint-every", self.every)
        _positive("--keep-checkpoints", self.keep)


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run folder."""

    out: str = _f("runs/train", "run folder to write")
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
    z_loss: float = _f(0.0, "z-loss coefficient C: adds C * log^2 Z per token (PaLM uses 1e-4); 0 turns it off")
    ema: float = _f(0.0, "keep an exponential moving average of the weights with this decay (e.g. 0.999); 0 turns it off")
    monitor_every: int = _f(0, "every N steps also log the update-to-weight ratio per parameter group, the max attention logit and the output log Z; 0 turns it off")

    def __post_init__(self) -> None:
        _positive("--z-loss", self.z_loss, allow_zero=True)
        _positive("--monitor-every", self.monitor_every, allow_zero=True)
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"--ema must be in [0, 1), got {self.ema}")
        _positive("--steps", self.steps)
        _positive("--eval-batch-size", self.eval_batch_size)
        _positive("--threads", self.threads)
        if self.seed < 0:
            raise ConfigError(f"--seed must be zero or more, got {self.seed}")

    @property
    def warmup_steps(self) -> int:
        if self.optim.warmup_steps is not None:
            return self.optim.warmup_steps
        return max(1, self.steps // 20)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, origin: str = "config") -> "TrainConfig":
        return _build(cls, d, origin)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "clip": ClipConfig, "checkpoint": CheckpointConfig,
            "guard": GuardConfig}


def _build(cls: type, d: dict[str, Any], origin: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{origin}: expected a table, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key not in names:
            raise ConfigError(f"{origin}: unknown key {key!r}; known: {', '.join(sorted(names))}")
        if cls is TrainConfig and key in SECTIONS:
            kwargs[key] = _build(SECTIONS[key], value, f"{origin} [{key}]")
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{origin}: {e}") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a plain dict (validated later by `TrainConfig`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not UTF-8 text") from None
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config {path}: invalid TOML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table at the top level")
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
    """The help text and default of a field, for the CLI."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = f.default if f.default is not dataclasses.MISSING else None
    text = f.metadata.get("help", "")
    text = text.replace("%", "%%")  # argparse formats help with %
    return f"{text} (default: {default})" if default not in (None, [], {}) else text
