"""`Stabilizer`: clipping and the spike/NaN guard for any PyTorch loop, in one call per batch.

::

    from steadylm.train import Stabilizer, ZClip
    from steadylm.train.spikes import SpikeGuard

    stab = Stabilizer(model, optimizer, clipper=ZClip(), guard=SpikeGuard("skip"))
    for x, y in data:
        loss = model(x, labels=y).loss
        report = stab.step(loss)   # backward, clip, guard, optimizer.step(), zero_grad

One optimizer step is what ``steadylm train`` does (`steadylm.train.loop`), without its data,
checkpoints or logs: ``backward -> clipper.clip_ -> guard.check -> optimizer.step() or skip ->
zero_grad -> scheduler.step()``. The numbers are the same as writing those lines by hand.

* Skip (OLMo-core's ``SkipStepOptimizer`` remedy): the gradients are dropped and
  ``optimizer.step()`` is not called, so weights *and* optimizer state (Adam moments, step counts)
  are untouched. The scheduler still advances: the learning rate is a function of the number of
  batches consumed, as in ``steadylm train`` and in ``transformers.Trainer``.
* Rollback needs checkpoints, which a loop-agnostic helper does not own: ``SpikeGuard("rollback")``
  is refused; use ``"skip"`` here, or ``steadylm train --guard rollback``.
* Host-device sync: one per optimizer step. The guard must decide on the host whether to call
  ``optimizer.step()``, so the loss and the pre-clip norm are copied together, in one transfer
  (the clippers themselves never sync). Micro-batches of a gradient accumulation do not sync.
* Distributed, DDP (``accelerate`` or ``torch.nn.parallel``): gradients are averaged across ranks
  during ``backward``, so every rank clips the same global gradient (the norm a single process
  would see) and keeps identical clipper state. The loss is local to a rank, so it is averaged
  across ranks (one tiny ``all_reduce``) before the guard judges it: every rank then takes the same
  skip decision. Tested: 2 gloo ranks on halves of a batch give one process's norms, thresholds
  and weights (ZClip, NormClip, AGC; ``tests/test_distributed.py``).
* FSDP2 (``fully_shard``): gradients are DTensor shards. ``torch.nn.utils.get_total_norm`` reduces
  the norm across shards, and every clipper turns its statistics into full values
  (``full_tensor()``, one all-reduce each), so all of them give one process's numbers (tested on
  CPU with gloo). AGC's unit-wise norms are rows of the weight, which FSDP2 shards by rows
  (dim 0), so they are local except for 1-D parameters.

Gradient accumulation: ``Stabilizer(..., accum_steps=N)``; call ``step(loss)`` once per micro-batch
with the micro-batch's mean loss. It backpropagates ``loss / N`` and updates on every N-th call
(returning a `StepReport`); the calls in between return ``None``. With DDP, wrap the forward pass in
``with stab.accumulate():`` to skip the gradient all-reduce on the micro-batches that do not update
(DDP decides that during the forward pass, so `step` cannot do it for you).

Why not ``accelerate``'s own ``clip_grad_norm_``/``accumulate``: they clip to a fixed norm and have
no notion of skipping a step; `Stabilizer` works with or without an ``Accelerator``
(pass ``accelerator=`` to route ``backward`` through it, for mixed precision; DeepSpeed, which
steps and clips inside its engine, is not supported).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from .clip import NormClip
from .spikes import GuardStop, Incident


@dataclass
class StepReport:
    """What one optimizer step saw and did (host values, ready to log)."""

    step: int
    """optimizer step, counting from 1 (skipped steps count)"""
    loss: float
    """mean loss over the step's micro-batches (and ranks)"""
    grad_norm: float
    """pre-clip global L2 norm of the gradients"""
    threshold: float
    """the clipper's bound this step (see `ClipStats.threshold`)"""
    clipped: bool
    """whether the clipper changed the gradients"""
    skipped: bool
    """whether the optimizer step was skipped by the guard"""
    lr: float | None = None
    """learning rate of the first parameter group for this step"""
    incidents: list[Incident] = field(default_factory=list)
    """what the guard flagged (empty when healthy or without a guard)"""

    def as_dict(self) -> dict:
        """A flat dict for a metrics line (incidents as their kinds)."""
        d = {"step": self.step, "loss": self.loss, "grad_norm": self.grad_norm, "threshold": self.threshold,
             "clipped": self.clipped, "skipped": self.skipped, "lr": self.lr}
        if self.incidents:
            d["incidents"] = [i.kind for i in self.incidents]
        return d


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DDP (or DataParallel) wrapper, so parameter names carry no ``module.``."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def _plain(value):
    """A DTensor's full value as a plain tensor (FSDP2 clip statistics are replicated: no communication)."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def host_values(loss: torch.Tensor, stats) -> tuple[float, float, float, bool]:
    """(loss, pre-clip norm, threshold, clipped) on the host, in one device-to-host copy."""
    norm = _plain(stats.norm).detach()
    values = torch.stack([loss.detach().to(norm.device, torch.float64), norm.double(),
                          torch.as_tensor(_plain(stats.threshold), dtype=torch.float64, device=norm.device),
                          torch.as_tensor(_plain(stats.clipped), dtype=torch.float64, device=norm.device)]).tolist()
    return values[0], values[1], values[2], bool(values[3])


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_mean_(value: torch.Tensor) -> torch.Tensor:
    """Average a 0-dim tensor across ranks in place (no-op in a single process); NaN anywhere -> NaN."""
    world = _world()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(value, op=dist.ReduceOp.SUM)  # gloo has no AVG
        value.div_(world)
    return value


class Stabilizer:
    """Backward, clip, guard and optimizer step for one batch of any PyTorch loop.

    ``model`` is the module whose parameters are clipped (a DDP-wrapped one is fine); ``optimizer``
    any ``torch.optim.Optimizer`` (or ``accelerate``'s wrapper); ``clipper`` any steadylm clipper
    (default ``NormClip(1.0)``, as ``steadylm train`` and ``transformers.Trainer``; ``NoClip()`` only
    measures); ``guard`` a `SpikeGuard` with action
    ``"skip"`` or ``"off"`` (default none: never skip); ``scheduler`` an lr scheduler stepped after
    every optimizer step; ``accum_steps`` micro-batches per optimizer step; ``accelerator`` an
    ``accelerate.Accelerator`` whose ``backward`` to use.
    """

    def __init__(self, model: torch.nn.Module, optimizer, clipper=None, guard=None, *, scheduler=None,
                 accum_steps: int = 1, accelerator=None):
        if guard is not None and guard.action == "rollback":
            raise ConfigError(
                "Stabilizer cannot roll back (that needs checkpoints of the whole run); "
                "use SpikeGuard('skip') here, or `steadylm train --guard rollback`"
            )
        if isinstance(accum_steps, bool) or int(accum_steps) != accum_steps or accum_steps < 1:
            raise ConfigError(f"accum_steps must be a positive integer, got {accum_steps}")
        if accelerator is not None and getattr(accelerator, "gradient_accumulation_steps", 1) > 1:
            raise ConfigError(
                "Accelerator(gradient_accumulation_steps>1) would scale the loss and gate optimizer.step() a second "
                "time; leave it at 1 and pass accum_steps to the Stabilizer"
            )
        self.model = model
        self.optimizer = optimizer
        self.clipper = clipper if clipper is not None else NormClip(1.0)
        self.guard = guard
        self.scheduler = scheduler
        self.accum_steps = int(accum_steps)
        self.accelerator = accelerator
        self.steps = 0
        """optimizer steps taken or skipped so far"""
        self.incidents: list[Incident] = []
        """every incident the guard has reported"""
        self._micro = 0
        self._loss_sum: torch.Tensor | None = None

    @property
    def will_update(self) -> bool:
        """Whether the next `step` call ends an accumulation and updates the weights."""
        return self._micro + 1 == self.accum_steps

    def accumulate(self):
        """Context for the forward pass: DDP's ``no_sync`` on micro-batches that do not update.

        A no-op for a model without ``no_sync`` or on the micro-batch that ends the accumulation."""
        if self.will_update or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        # Looked up every step: FSDP2 and friends may replace the parameters after construction.
        return list(_unwrap(self.model).named_parameters())

    def step(self, loss: torch.Tensor) -> StepReport | None:
        """Backpropagate ``loss``; at the end of an accumulation clip, judge and step the optimizer.

        Returns a `StepReport` on the call that ends an accumulation (every call when
        ``accum_steps == 1``), else ``None``. Raises `GuardStop` after the guard's
        ``max_consecutive`` incidents in a row."""
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        scaled = loss / self.accum_steps if self.accum_steps > 1 else loss
        if self.accelerator is not None:
            self.accelerator.backward(scaled)
        else:
            scaled.backward()
        self._micro += 1
        if self._micro < self.accum_steps:
            return None
        loss_mean = global_mean_(self._loss_sum / self.accum_steps)
        self._micro, self._loss_sum = 0, None
        return self._update(loss_mean)

    def _update(self, loss_mean: torch.Tensor) -> StepReport:
        opt = self.optimizer
        if self.accelerator is not None and getattr(self.accelerator, "scaler", None) is not None:
            self.accelerator.unscale_gradients()  # fp16: clip the true gradients
        params = self._named_parameters()
        stats = self.clipper.clip_(params)
        self.steps += 1
        loss_val, norm_val, threshold, clipped = host_values(loss_mean, stats)
        incidents = self.guard.check(self.steps, loss_val, norm_val) if self.guard is not None else []
        skip = bool(incidents) and self.guard.action == "skip"
        lr = opt.param_groups[0].get("lr") if getattr(opt, "param_groups", None) else None
        if skip:
            opt.zero_grad(set_to_none=True)  # drop the gradients: weights and optimizer state untouched
        else:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.incidents.extend(incidents)
        report = StepReport(step=self.steps, loss=loss_val, grad_norm=norm_val, threshold=threshold,
                            clipped=clipped, skipped=skip, lr=lr, incidents=incidents)
        if self.guard is not None and self.guard.over_limit():
            last = incidents[-1]
            raise GuardStop(f"stopped at step {self.steps}: {self.guard.consecutive} incidents in a row "
                            f"(last: {last.kind} {last.value:.4g}); lower the learning rate, clip harder, "
                            "or raise the guard's max_consecutive")
        return report

    def state_dict(self) -> dict:
        """Clipper and guard state and the step count (the model, optimizer and scheduler are yours to save)."""
        return {"steps": self.steps, "clipper": self.clipper.state_dict(),
                "guard": self.guard.state_dict() if self.guard is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved (between optimizer steps, not mid-accumulation)."""
        self.steps = int(state["steps"])
        self.clipper.load_state_dict(state["clipper"])
        if self.guard is not None and state.get("guard") is not None:
            self.guard.load_state_dict(state["guard"])
        self._micro, self._loss_sum = 0, None
