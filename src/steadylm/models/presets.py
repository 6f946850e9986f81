"""Model presets built from standard ``transformers`` configs, and HF-folder I/O.

Every preset is a stock ``transformers`` architecture, so a folder steadylm writes loads with
``AutoModelForCausalLM.from_pretrained`` in lm-eval-harness, vLLM or any other tool. Weights are
always written and read as safetensors; a folder's own code runs only with ``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError

# name -> (transformers config class name, fields, one-line description)
PRESETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "nano": (
        "LlamaConfig",
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2),
        "Llama-style, ~0.3 M parameters at vocab 4096: for tests",
    ),
    "tiny": (
        "LlamaConfig",
        dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
        "Llama-style, ~1.8 M parameters at vocab 4096: the demo model",
    ),
    "tiny-qknorm": (
        "Qwen3Config",
        dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, head_dim=32),
        "Qwen3-style (RMSNorm on queries and keys), same size as tiny",
    ),
    "nano-qknorm": (
        "Qwen3Config",
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=16),
        "Qwen3-style QK-norm, same size as nano: for tests",
    ),
    "small": (
        "LlamaConfig",
        dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6),
        "Llama-style, ~13 M parameters at vocab 4096",
    ),
    "medium": (
        "LlamaConfig",
        dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=8),
        "Llama-style, ~35 M parameters at vocab 1024: the GPU instability study's model",
    ),
    "medium-qknorm": (
        "Qwen3Config",
        dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=8,
             head_dim=64),
        "Qwen3-style QK-norm, same size as medium",
    ),
    # Gemma 2 is the stock architecture with logit soft-capping; the caps start off (None, not
    # Gemma 2's 50 / 30) so that --attn-softcap / --final-softcap alone decide (`apply_softcaps`).
    # query_pre_attn_scalar = head_dim: the usual 1/sqrt(head_dim) logit scale, as in Llama.
    "tiny-gemma2": (
        "Gemma2Config",
        dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
             head_dim=32, query_pre_attn_scalar=32, attn_logit_softcapping=None, final_logit_softcapping=None),
        "Gemma-2-style (logit soft-capping with --attn-softcap / --final-softcap), same size as tiny",
    ),
    "nano-gemma2": (
        "Gemma2Config",
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
             head_dim=16, query_pre_attn_scalar=16, attn_logit_softcapping=None, final_logit_softcapping=None),
        "Gemma-2-style soft-capping, same size as nano: for tests",
    ),
}

#: transformers config fields that soft-cap logits, ``cap * tanh(x / cap)`` (Gemma 2): what `apply_softcaps` sets
SOFTCAP_FIELDS = {"attn": "attn_logit_softcapping", "final": "final_logit_softcapping"}


#: transformers config fields that are sizes of the network: an override must be positive
SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "max_position_embeddings", "vocab_size", "max_window_layers", "sliding_window")


@functools.cache
def _config_defaults(cls_name: str) -> dict[str, Any]:
    import transformers

    return {k: v for k, v in getattr(transformers, cls_name)().to_dict().items() if not k.startswith("_")}


def preset_config_defaults(preset: str) -> tuple[str, dict[str, Any]]:
    """(transformers config class, its fields with their defaults) of a preset: what
    ``model.overrides`` may set, and the type each must have."""
    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    cls_name = PRESETS[preset][0]
    return cls_name, _config_defaults(cls_name)


@functools.cache
def _declared_fields(config_cls) -> frozenset[str]:
    # A transformers config keeps any keyword it is given (LlamaConfig(attn_logit_softcapping=5)
    # is accepted and ignored by the model), so ask a default instance what the class declares.
    return frozenset(config_cls().to_dict())


def apply_softcaps(config, attn: float | None = None, final: float | None = None) -> dict[str, float]:
    """Set logit soft-capping (``cap * tanh(x / cap)``, Gemma 2) on a transformers config before
    the model is built from it: ``attn`` on the pre-softmax attention logits, ``final`` on the output
    logits; None leaves a cap as it is. Returns the fields set. `ConfigError` naming the
    architecture when its config has no such field (the model would silently ignore it)."""
    wanted = {SOFTCAP_FIELDS[k]: v for k, v in (("attn", attn), ("final", final)) if v is not None}
    flag = {SOFTCAP_FIELDS["attn"]: "--attn-softcap", SOFTCAP_FIELDS["final"]: "--final-softcap"}
    for field, cap in wanted.items():
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0:
            raise ConfigError(f"{flag[field]} must be a positive number, got {cap!r}")
        if field not in _declared_fields(type(config)):
            raise ConfigError(f"{flag[field]}: the {type(config).__name__} architecture "
                              f"({getattr(config, 'model_type', '?')}) has no {field}; use a preset that does "
                              f"({', '.join(n for n, (c, _, _) in PRESETS.items() if c == 'Gemma2Config')})")
    for field, cap in wanted.items():
        setattr(config, field, float(cap))
    return {k: float(v) for k, v in wanted.items()}


def _dropout_fields(config) -> list[str]:
    return [k for k in config.to_dict() if k.endswith("dropout") or k.endswith("pdrop") or k.endswith("dropout_prob")]


def set_dropout(config, rate: float) -> list[str]:
    """Set every dropout field of a transformers config to ``rate``; return the fields set.

    Llama- and Qwen-style configs have only ``attention_dropout``; GPT-2-style ones have
    residual, embedding and attention dropout."""
    fields = _dropout_fields(config)
    for k in fields:
        setattr(config, k, rate)
    return fields


def build_model(preset: str, *, vocab_size: int, context: int, dropout: float = 0.0, seed: int = 0,
                bos_token_id: int | None = None, eos_token_id: int | None = None, overrides: dict | None = None,
                attn_softcap: float | None = None, final_softcap: float | None = None):
    """A freshly initialised causal LM from a preset (deterministic for a given seed), with the
    Gemma 2 soft-caps where asked (`apply_softcaps`)."""
    import torch
    import transformers

    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    cls_name, fields, _ = PRESETS[preset]
    kwargs = dict(fields)
    kwargs.update(
        vocab_size=vocab_size,
        max_position_embeddings=context,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides or {})
    try:
        config = getattr(transformers, cls_name)(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelError(f"preset {preset!r}: bad config override ({e})") from None
    set_dropout(config, dropout)
    apply_softcaps(config, attn_softcap, final_softcap)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def _is_causal_lm(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = getattr(config, "architectures", None) or []
    if archs:  # the folder says what it holds: believe it
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    return getattr(config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def gguf_file(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``(folder, file name)`` of a ``--model`` given as a ``.gguf`` file, ``(path, None)`` for a
    folder: transformers reads a GGUF file as ``from_pretrained(folder, gguf_file=name)``, model
    and tokenizer alike (needs the ``gguf`` package). `ModelError` for a missing file or package."""
    p = Path(path)
    if p.suffix.lower() != ".gguf":
        return p, None
    if not p.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    try:
        import gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError:
        raise ModelError(f"{path}: reading a .gguf file needs the gguf package (pip install gguf)") from None
    return p.parent, p.name


def load_model(path: str | os.PathLike, *, dtype: str = "float32", trust_remote_code: bool = False, dropout: float | None = None,
               attn_softcap: float | None = None, final_softcap: float | None = None):
    """Load a local HF causal-LM folder with safetensors weights, or a ``.gguf`` file (dequantized
    to float); `ModelError` if it is not one."""
    p, gguf = gguf_file(path)
    if gguf is None:
        if not p.exists():
            raise ModelError(f"{path}: no such model folder")
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ModelError(f"{path}: not a Hugging Face model folder (no config.json)")
        if not any(p.glob("*.safetensors")):
            raise ModelError(f"{path}: no safetensors weights (steadylm does not unpickle .bin files)")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with quiet_progress():
            config = AutoConfig.from_pretrained(p, local_files_only=True, trust_remote_code=trust_remote_code, gguf_file=gguf)
    except Exception as e:
        what = "not a GGUF file transformers can read" if gguf else "unreadable config.json"
        raise ModelError(f"{path}: {what} ({type(e).__name__}: {_first_line(e)})") from None
    if not _is_causal_lm(config):
        raise ModelError(f"{path}: model type {getattr(config, 'model_type', '?')!r} is not a causal language model")
    qc = getattr(config, "quantization_config", None)
    if (qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)) == "gguf":
        # A folder saved from a GGUF-loaded model: its safetensors hold dequantized floats, and the
        # leftover marker would only make transformers refuse to save it again (at the first checkpoint).
        del config.quantization_config
    if dropout is not None:
        set_dropout(config, dropout)
    apply_softcaps(config, attn_softcap, final_softcap)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ModelError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
    try:
        with quiet_progress():  # steadylm draws its own bars; transformers' "Loading weights" is noise
            if gguf is not None:
                return _from_gguf(p, gguf, config, torch_dtype)
            model = AutoModelForCausalLM.from_pretrained(
                p, config=config, local_files_only=True, trust_remote_code=trust_remote_code,
                use_safetensors=True, dtype=torch_dtype,
            )
    except Exception as e:
        raise ModelError(f"{path}: cannot load weights ({type(e).__name__}: {_first_line(e)})") from None
    return model


def _from_gguf(folder: Path, name: str, config, dtype):
    """A GGUF file's weights, dequantized, in a model built from ``config``: transformers marks a
    GGUF-loaded model as not serializable, and a fine-tune must save checkpoints and ``model/``."""
    import torch
    from transformers import AutoModelForCausalLM

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    # its "Converting and de-quantizing" bar is a bare tqdm that transformers' switch does not reach
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config, local_files_only=True,
                                                      dtype=dtype)
    finally:
        gguf_utils.tqdm = bar
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict(), assign=True)
    for name, buf in loaded.named_buffers():  # non-persistent buffers (rotary inv_freq) are in no state dict
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner).register_buffer(leaf, buf, persistent=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = loaded.generation_config
    return model.eval()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else "no detail"


def model_context(config) -> int | None:
    """The longest sequence a model accepts, from its config (None if it does not say)."""
    for k in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, k, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def model_hash(path: str | os.PathLike) -> str:
    """sha256 (first 12 hex digits) over the folder's safetensors files, in name order (or over
    the ``.gguf`` file)."""
    h = hashlib.sha256()
    p = Path(path)
    for f in [p] if p.suffix.lower() == ".gguf" else sorted(p.glob("*.safetensors")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


@contextlib.contextmanager
def quiet_progress():
    """Silence transformers' own progress bars (steadylm draws its own) for one block."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_model(model, tokenizer, out: str | os.PathLike) -> Path:
    """Write an HF folder (safetensors + tokenizer) atomically: a temporary folder, then rename."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with quiet_progress():
        model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
