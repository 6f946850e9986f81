"""Loss-spike and NaN guard, and fault injection to prove it works.

Detection follows OLMo-core's ``SkipStepOptimizer`` (``olmo_core/optim/skip_step_optimizer.py``):
a step is an *incident* when its loss or its pre-clip gradient norm is not finite, or lies more
than ``sigma`` standard deviations above the mean of the last ``window`` finite values (defaults
6 sigma over 128 steps, as there). Non-finite values never enter the statistics, so one bad step
costs one step. Where we differ: the check is active after ``min_samples`` = 20 values (OLMo-core
waits for half the window), since short fine-tuning runs would otherwise never be guarded.

Actions (``GuardConfig.action``):

* ``skip`` - the optimizer step is not taken: weights and optimizer state are untouched, the
  gradients are dropped (OLMo-core's remedy).
* ``rollback`` - PaLM's remedy (Chowdhery et al. 2022, sec. 5.1): restore the last good
  checkpoint and skip the batches that were consumed since then, the one that caused the
  incident included. Data order stays a pure function of (seed, step, data offset), so a rollback
  is as deterministic as everything else.
* ``off`` - detect and log only.

After ``max_consecutive`` incidents in a row the run stops with a `GuardStop` that says why,
instead of looping.

The decision needs the loss and the norm on the host: one device-to-host copy per step, the same
one the metrics log already makes, so the guard adds no sync of its own to the training loop.

Fault injection (``--inject``): ``nan@STEP`` makes that step's loss NaN, ``spike@STEP:FACTOR``
multiplies its gradients by FACTOR before clipping, ``lr@STEP:FACTOR`` multiplies its learning
rate. Each fires once per run (a rollback does not replay it), like a real transient fault.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from ..config import GUARD_ACTIONS, Injection, check_guard, parse_injection  # noqa: F401 - Injection and parse_injection live on here
from ..errors import SteadyError

ACTIONS = GUARD_ACTIONS


class GuardStop(SteadyError):
    """Too many incidents in a row: the run stops with a report instead of looping."""


@dataclass
class Incident:
    """What the guard saw at one step."""

    step: int
    kind: str
    """nonfinite_loss, nonfinite_grad, loss_spike or grad_spike"""
    value: float
    threshold: float
    action: str = ""
    batches: list = field(default_factory=list)


class _Rolling:
    """Mean and sample std of the last ``n`` finite values."""

    def __init__(self, n: int):
        self.values: deque[float] = deque(maxlen=n)

    def add(self, v: float) -> None:
        if math.isfinite(v):
            self.values.append(v)

    def threshold(self, sigma: float, min_samples: int) -> float:
        k = len(self.values)
        if k < max(2, min_samples):
            return math.inf
        mean = sum(self.values) / k
        var = sum((x - mean) ** 2 for x in self.values) / (k - 1)
        return mean + sigma * math.sqrt(var)


class SpikeGuard:
    """Judge each step's loss and pre-clip gradient norm; `check` returns the incidents."""

    def __init__(self, action: str = "skip", *, sigma: float = 6.0, window: int = 128, min_samples: int = 20, max_consecutive: int = 5):
        check_guard(action, sigma, window, min_samples, max_consecutive)
        self.action, self.sigma, self.window, self.min_samples, self.max_consecutive = action, sigma, window, min_samples, max_consecutive
        self.losses = _Rolling(window)
        self.norms = _Rolling(window)
        self.consecutive = 0

    def check(self, step: int, loss: float, grad_norm: float) -> list[Incident]:
        """Incidents of this step (empty if healthy); updates the rolling statistics."""
        found: list[Incident] = []
        if not math.isfinite(loss):
            found.append(Incident(step, "nonfinite_loss", loss, math.nan))
        if not math.isfinite(grad_norm):
            found.append(Incident(step, "nonfinite_grad", grad_norm, math.nan))
        if not found:
            t = self.losses.threshold(self.sigma, self.min_samples)
            if loss > t:
                found.append(Incident(step, "loss_spike", loss, t))
            t = self.norms.threshold(self.sigma, self.min_samples)
            if grad_norm > t:
                found.append(Incident(step, "grad_spike", grad_norm, t))
        # Like OLMo-core, the history holds every finite value, flagged or not: a lasting shift
        # in scale becomes the new normal instead of an endless run of incidents.
        self.losses.add(loss)
        self.norms.add(grad_norm)
        if self.action == "off":
            return found
        self.consecutive = self.consecutive + 1 if found else 0
        for inc in found:
            inc.action = self.action
        return found

    def over_limit(self) -> bool:
        return self.action != "off" and self.consecutive >= self.max_consecutive

    def state_dict(self) -> dict:
        return {"losses": list(self.losses.values), "norms": list(self.norms.values), "consecutive": self.consecutive}

    def load_state_dict(self, d: dict) -> None:
        self.losses.values.clear()
        self.losses.values.extend(d["losses"])
        self.norms.values.clear()
        self.norms.values.extend(d["norms"])
        self.consecutive = int(d["consecutive"])
