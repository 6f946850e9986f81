"""LoRA adapters through ``peft`` (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models"; the reference implementation is peft's ``LoraModel``).

peft does the work: `add_lora` is ``get_peft_model`` with a ``LoraConfig``, which freezes every base
weight and wraps the chosen projections. What steadylm adds around it:

* the default targets - the attention and MLP projections the model has (Llama-style
  ``q/k/v/o_proj``, ``gate/up/down_proj``; GPT-2-style ``c_attn``, ``c_proj``, ``c_fc``), read from
  its linear layers - and one error line naming targets the model lacks and what it has;
* the adapter's initialisation seeded by the run's seed, so a run is a function of its config;
* checkpoints that hold the adapter alone (`load_adapter_weights` reads them back bit for bit):
  the base is frozen and is loaded again from ``--model`` on a resume, its hash checked;
* the outputs: ``adapter/`` (peft's ``save_pretrained``) and a merged plain HF folder
  (`merged`), which every eval command reads unchanged. The run's final export merges in place:
  training is over, and a copy would hold a second set of base weights at the process's peak.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

from ..config import LoraConfig, flag_of
from ..errors import CheckpointError, ConfigError
from .checkpoint import ADAPTER

#: the projections adapted when ``--lora-targets`` is not given, where the model has them
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn", "c_proj", "c_fc")


def linear_names(model) -> list[str]:
    """The last name parts of the layers peft can adapt (``nn.Linear`` and GPT-2's ``Conv1D``), sorted."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if name and isinstance(m, (nn.Linear, Conv1D))})


def resolve_targets(model, targets: list[str]) -> list[str]:
    """The modules to adapt: ``targets``, each the last name part of a linear layer of ``model``,
    or by default the projections of `DEFAULT_TARGETS` it has; `ConfigError` naming what is missing."""
    have, flag, what = linear_names(model), flag_of(LoraConfig, "targets"), type(model).__name__
    if not targets:
        found = [t for t in DEFAULT_TARGETS if t in have]
        if not found:
            raise ConfigError(f"{flag}: {what} has none of the default projections ({', '.join(DEFAULT_TARGETS)}); "
                              f"name some of its linear layers: {', '.join(have)}")
        return found
    missing = [t for t in targets if t not in have]
    if missing:
        raise ConfigError(f"{flag}: {what} has no linear layer named {', '.join(missing)}; it has: {', '.join(have)}")
    return list(dict.fromkeys(targets))


def add_lora(model, cfg: LoraConfig, *, seed: int):
    """``model`` wrapped by peft with LoRA adapters: base weights frozen, adapters initialised from
    ``seed`` (without touching the global RNG stream)."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=resolve_targets(model, cfg.targets), task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft reads transformers 5's deprecated ``is_gradient_checkpointing``; nothing for a user to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        torch.manual_seed(seed)
        return get_peft_model(model, peft_cfg)


def merged(model, *, in_place: bool):
    """A plain transformers model with the adapters of peft ``model`` merged into its weights
    (peft's ``merge_and_unload``, ``W + s * B @ A`` per adapted layer). ``in_place``: into ``model``'s
    own base weights, which are then the merged ones and no longer the pretrained ones (no copy;
    for the last use of ``model``); otherwise into a copy, and ``model`` keeps training or saving
    as it was."""
    return (model if in_place else copy.deepcopy(model)).merge_and_unload()


def load_adapter_weights(model, path: Path) -> None:
    """Load the adapter weights of a LoRA checkpoint folder into peft ``model`` (the frozen base is
    not in the checkpoint); `CheckpointError` if they are missing or do not fit."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    f = path / ADAPTER
    if not f.is_file():
        raise CheckpointError(f"{path}: not a LoRA checkpoint (no {ADAPTER}); this run trains LoRA adapters")
    try:
        result = set_peft_model_state_dict(model, load_file(str(f)))
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    unfit = list(result.unexpected_keys) + [k for k in result.missing_keys if ".lora_" in k]
    if unfit:
        raise CheckpointError(f"{path}: the adapter does not fit this model ({unfit[0]})")
