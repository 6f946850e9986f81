"""Gradient clipping with one interface: ``clipper.clip_(parameters) -> ClipStats``.

* `NormClip` - scale all gradients together when their global L2 norm exceeds ``max_norm``
  (Pascanu et al. 2013); exactly ``torch.nn.utils.clip_grad_norm_``, which it calls. The seed's
  worked example: ``[1, 2, 3]`` clipped to norm 2 is ``[1, 2, 3] * 2/sqrt(14)`` =
  ``[0.534, 1.069, 1.604]``.
* `ValueClip` - clamp every gradient element to ``[-clip_value, clip_value]``
  (``torch.nn.utils.clip_grad_value_``); the pre-clip global norm is still measured for the log.
* `NoClip` - measures the norm and leaves the gradients alone.

Like ``clip_grad_norm_``, the stats hold tensors on the gradients' device: nothing here forces a
host-device sync. Reading ``float(stats.norm)`` for the log is the caller's (single) sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass
class ClipStats:
    """What a clipper saw and did in one step."""

    norm: torch.Tensor
    """pre-clip global L2 norm of all gradients (0-dim tensor)"""
    threshold: float
    """the threshold applied (a norm for norm clippers, an element bound for `ValueClip`)"""
    clipped: torch.Tensor
    """whether any gradient was changed (0-dim bool tensor)"""


def _grads(parameters: Iterable[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]


def total_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients of ``params`` (the norm ``clip_grad_norm_`` computes)."""
    if not params:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0, foreach=None)


class NoClip:
    """Measure the gradient norm, change nothing."""

    threshold = math.inf

    def clip_(self, parameters) -> ClipStats:
        norm = total_norm(_grads(parameters))
        return ClipStats(norm=norm, threshold=math.inf, clipped=torch.zeros((), dtype=torch.bool, device=norm.device))


class NormClip:
    """Clip by global L2 norm to ``max_norm`` (same numbers as ``torch.nn.utils.clip_grad_norm_``)."""

    def __init__(self, max_norm: float = 1.0):
        if not (max_norm > 0 and math.isfinite(max_norm)):
            raise ValueError(f"max_norm must be positive, got {max_norm}")
        self.max_norm = float(max_norm)

    def clip_(self, parameters) -> ClipStats:
        params = _grads(parameters)
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm) if params else torch.zeros(())
        return ClipStats(norm=norm, threshold=self.max_norm, clipped=norm > self.max_norm)


class ValueClip:
    """Clamp each gradient element to ``[-clip_value, clip_value]``."""

    def __init__(self, clip_value: float = 1.0):
        if not (clip_value > 0 and math.isfinite(clip_value)):
            raise ValueError(f"clip_value must be positive, got {clip_value}")
        self.clip_value = float(clip_value)

    def clip_(self, parameters) -> ClipStats:
        params = _grads(parameters)
        norm = total_norm(params)
        if not params:
            return ClipStats(norm=norm, threshold=self.clip_value, clipped=torch.zeros((), dtype=torch.bool))
        grads = [p.grad for p in params]
        max_abs = torch.stack([g.detach().abs().amax() for g in grads]).amax()
        torch.nn.utils.clip_grad_value_(params, self.clip_value)
        return ClipStats(norm=norm, threshold=self.clip_value, clipped=max_abs > self.clip_value)


def make_clipper(method: str, *, max_norm: float = 1.0, clip_value: float = 1.0):
    """The clipper a `ClipConfig` names."""
    if method == "none":
        return NoClip()
    if method == "norm":
        return NormClip(max_norm)
    if method == "value":
        return ValueClip(clip_value)
    raise ValueError(f"unknown clipping method {method!r}")
