"""Regularization: AdamW parameter groups and the coupled L2 / L1 penalties.

* Decoupled weight decay (Loshchilov & Hutter 2019) is AdamW's ``weight_decay``; `param_groups`
  puts biases and normalisation weights (every tensor with fewer than 2 dimensions) in a group
  without decay, as nanoGPT and most LLM stacks do, and embeddings in the decayed group unless
  ``decay_embeddings=False`` (OLMo 2 turns it off).
* The coupled L2 penalty adds ``lambda * sum(w^2)`` to the loss, so its gradient ``2*lambda*w`` goes
  through Adam's normalisation - not the same as decoupled decay, which is why both exist. The
  seed's example: lambda = 0.1, w = [1, 2, 3] adds 0.1 * 14 = 1.4.
* L1 adds ``lambda * sum(|w|)``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, *, decay_embeddings: bool = True) -> list[dict]:
    """AdamW groups: ``[{decayed, weight_decay}, {not decayed, 0.0}]`` with parameter names."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))  # tied weights appear once
        if p.ndim < 2 or (not decay_embeddings and id(p) in embedding_params):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": decay, "names": decay_names, "weight_decay": weight_decay},
        {"params": no_decay, "names": no_decay_names, "weight_decay": 0.0},
    ]


def l2_penalty(params: Iterable[torch.Tensor], lam: float) -> torch.Tensor:
    """``lam * sum(w^2)`` over ``params`` (a 0-dim tensor in the graph)."""
    params = list(params)
    if lam == 0 or not params:
        return torch.zeros(())
    return lam * torch.stack([p.pow(2).sum() for p in params]).sum()


def l1_penalty(params: Iterable[torch.Tensor], lam: float) -> torch.Tensor:
    """``lam * sum(|w|)`` over ``params`` (a 0-dim tensor in the graph)."""
    params = list(params)
    if lam == 0 or not params:
        return torch.zeros(())
    return lam * torch.stack([p.abs().sum() for p in params]).sum()
