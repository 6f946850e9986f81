"""`Stabilizer`: clipping and the spike/NaN guard for any PyTorch loop, in one call per batch.

::

    from steadylm.train import Stabilizer, ZClip
    from steadylm.train.spikes import SpikeGuard

    stab = Stabilizer(model, optimizer, clipper=ZClip(), guard=SpikeGuard("skip"))
    for x, y in data:
        loss = model(x, labels=y).loss
        report = stab.step(loss)   # backward, clip, guard, optimizer.step(), zero_grad

This is the one place where a loss becomes an update: ``steadylm train`` (`steadylm.train.loop`),
the Trainer callback (`steadylm.train.hf`) and a user's loop all go through it:
``backward (scaled) -> [accumulate] -> unscale -> clipper.clip_ -> one host read -> guard.check ->
optimizer.step() or skip -> EMA -> zero_grad -> scaler.update() -> scheduler.step()``. The
numbers are the same as writing those lines by hand.

* Skip (OLMo-core's ``SkipStepOptimizer`` remedy): the gradients are dropped and
  ``optimizer.step()`` is not called, so weights *and* optimizer state (Adam moments, step counts)
  are untouched. The scheduler still advances: the learning rate is a function of the number of
  batches consumed, as in ``steadylm train`` and in ``transformers.Trainer``.
* Rollback needs checkpoints, which a loop-agnostic helper does not own: ``SpikeGuard("rollback")``
  is refused unless the caller owns them (``owns_checkpoints=True``, as ``steadylm train`` does):
  the step is then skipped and the caller restores a checkpoint when the report says ``rollback``.
* Host-device sync: one per optimizer step. The guard must decide on the host whether to call
  ``optimizer.step()``, so the loss, the pre-clip norm, the threshold, the post-clip norm, the loss
  scale and the caller's ``extras`` (z-loss, penalty) are copied together, in one transfer (the
  clippers themselves never sync). Micro-batches of a gradient accumulation do not sync.
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

Mixed precision: run the forward pass under ``torch.autocast`` yourself and pass
``scaler=torch.amp.GradScaler()`` for fp16. The loss is scaled for ``backward``, the gradients are
unscaled before clipping (the clippers and the guard see true gradients), and a step whose
gradients overflowed is skipped *by the scaler* and reported as ``overflow`` with its loss scale -
it is not a guard incident (a non-finite *loss* still is). Why not ``scaler.step(optimizer)``: it
reads the inf flag on the host, a second sync per step; the pre-clip norm is non-finite exactly
when a gradient is, and it is already in the step's one host read. ``scaler.update()`` runs every
step, on the device.

Hooks (fault injection, the monitor): objects with any of ``on_gradients(stab, params)`` (the
micro-batches are summed, before unscaling and clipping), ``before_update(stab, params)`` and
``after_update(stab, params)`` (around ``optimizer.step()``, only when it is taken). They see the
step, they do not change its arithmetic unless they mean to (an injected spike does).

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
import math
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
    """pre-clip global L2 norm of the (unscaled) gradients"""
    threshold: float
    """the clipper's bound this step (see `ClipStats.threshold`)"""
    clipped: bool
    """whether the clipper changed the gradients"""
    skipped: bool
    """whether the optimizer step was not taken (guard, rollback or loss-scaler overflow)"""
    lr: float | None = None
    """learning rate of the first parameter group for this step"""
    incidents: list[Incident] = field(default_factory=list)
    """what the guard flagged (empty when healthy or without a guard)"""
    post_norm: float | None = None
    """post-clip global norm, where the clipper gives it for free"""
    overflow: bool = False
    """fp16: the gradients overflowed at this loss scale, so the scaler skipped the step (not a guard incident)"""
    loss_scale: float | None = None
    """fp16: the loss scale this step's gradients were computed with"""
    extras: dict[str, float] = field(default_factory=dict)
    """the caller's own per-step values (z-loss, penalty), read in the same host copy"""

    @property
    def action(self) -> str:
        """What was done: ``none`` (stepped), ``overflow``, or the guard's action on an incident."""
        if self.overflow:
            return "overflow"
        return self.incidents[0].action if self.incidents else "none"

    def as_dict(self) -> dict:
        """A flat dict for a metrics line (incidents as their kinds; fp16 fields only with a scaler)."""
        d = {"step": self.step, "loss": self.loss, "grad_norm": self.grad_norm, "threshold": self.threshold,
             "clipped": self.clipped, "skipped": self.skipped, "lr": self.lr}
        if self.incidents:
            d["incidents"] = [i.kind for i in self.incidents]
        if self.loss_scale is not None:
            d["loss_scale"] = self.loss_scale
            d["overflow"] = self.overflow
        return d


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DDP (or DataParallel, or torch.compile) wrapper, so parameter names carry no prefix."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module under DDP / torch.compile wrappers (public: the loop saves this one)."""
    return _unwrap(model)


def _plain(value):
    """A DTensor's full value as a plain tensor (FSDP2 clip statistics are replicated: no communication)."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def host_values(*values) -> list[float]:
    """Tensors and numbers as host floats, in one device-to-host copy (None stays None)."""
    tensors = [_plain(v) for v in values if isinstance(v, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    slots = [torch.as_tensor(_plain(v), dtype=torch.float64, device=device).detach().reshape(())
             for v in values if v is not None]
    read = iter(torch.stack(slots).tolist()) if slots else iter(())
    return [None if v is None else next(read) for v in values]


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


def _call(hooks, name: str, *args) -> None:
    for h in hooks:
        fn = getattr(h, name, None)
        if fn is not None:
            fn(*args)


class Stabilizer:
    """Backward, clip, guard and optimizer step for one batch of any PyTorch loop.

    ``model`` is the module whose parameters are clipped (a DDP-wrapped one is fine); ``optimizer``
    any ``torch.optim.Optimizer`` (or ``accelerate``'s wrapper); ``clipper`` any steadylm clipper
    (default ``NormClip(1.0)``, as ``steadylm train`` and ``transformers.Trainer``; ``NoClip()`` only
    measures); ``guard`` a `SpikeGuard` with action ``"skip"`` or ``"off"`` (``"rollback"`` with
    ``owns_checkpoints=True``; default none: never skip); ``scheduler`` an lr scheduler stepped after
    every optimizer step; ``accum_steps`` micro-batches per optimizer step; ``accelerator`` an
    ``accelerate.Accelerator`` whose ``backward`` to use; ``scaler`` a ``torch.amp.GradScaler`` for
    fp16; ``ema`` a decay for an exponential moving average of the weights (0: none; `ema_params`);
    ``hooks`` objects called around the step (see the module docstring); ``stop_hint`` what the
    `GuardStop` message suggests.
    """

    def __init__(self, model: torch.nn.Module, optimizer, clipper=None, guard=None, *, scheduler=None,
                 accum_steps: int = 1, accelerator=None, scaler=None, ema: float = 0.0, hooks=(),
                 owns_checkpoints: bool = False,
                 stop_hint: str = "lower the learning rate, clip harder, or raise the guard's max_consecutive"):
        if guard is not None and guard.action == "rollback" and not owns_checkpoints:
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
        if scaler is not None and accelerator is not None and getattr(accelerator, "scaler", None) is not None:
            raise ConfigError("the Accelerator already scales the loss (mixed_precision='fp16'); do not pass a scaler too")
        if not 0.0 <= ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1), got {ema}")
        self.model = model
        self.optimizer = optimizer
        self.clipper = clipper if clipper is not None else NormClip(1.0)
        self.guard = guard
        self.scheduler = scheduler
        self.accum_steps = int(accum_steps)
        self.accelerator = accelerator
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.hooks = list(hooks)
        self.stop_hint = stop_hint
        self.steps = 0
        """optimizer steps taken or skipped so far"""
        self.incidents: list[Incident] = []
        """every incident the guard has reported"""
        self.ema_decay = float(ema)
        self.ema_params = [p.detach().clone() for p in self._trained()] if ema else None
        """the EMA of the trained parameters (in the optimizer's order), or None"""
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

    def _trained(self) -> list[torch.Tensor]:
        groups = getattr(self.optimizer, "param_groups", None) or []
        return [p for g in groups for p in g["params"]]

    def step(self, loss: torch.Tensor, *, aux: torch.Tensor | None = None,
             extras: dict[str, torch.Tensor] | None = None) -> StepReport | None:
        """Backpropagate ``loss`` (+ ``aux``); at the end of an accumulation clip, judge and step.

        ``loss`` is what the guard judges and the report shows (the micro-batch's mean data loss);
        ``aux`` regularization terms (z-loss, a weight penalty) added to what is backpropagated and
        averaged over the accumulation like the loss, but not judged; ``extras`` 0-dim tensors read
        with the step's one host copy into `StepReport.extras` (pass them on the updating call).
        Returns a `StepReport` on the call that ends an accumulation (every call when
        ``accum_steps == 1``), else ``None``. Raises `GuardStop` after the guard's
        ``max_consecutive`` incidents in a row."""
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        objective = loss if aux is None else loss + aux
        scaled = objective / self.accum_steps if self.accum_steps > 1 else objective
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        if self.accelerator is not None:
            self.accelerator.backward(scaled)
        else:
            scaled.backward()
        self._micro += 1
        if self._micro < self.accum_steps:
            return None
        loss_mean = global_mean_(self._loss_sum / self.accum_steps)
        self._micro, self._loss_sum = 0, None
        return self._update(loss_mean, extras or {})

    def judge(self, loss: torch.Tensor, extras: dict[str, torch.Tensor] | None = None) -> StepReport:
        """Unscale and clip the gradients and let the guard decide, without stepping the optimizer.

        For loops that step the optimizer themselves (the Trainer callback): if the report says
        ``skipped``, drop the gradients (``p.grad = None``) so the optimizer leaves weights and
        state alone. Call `finish` after the optimizer step."""
        opt = self.optimizer
        params = self._named_parameters()
        _call(self.hooks, "on_gradients", self, params)
        if self.scaler is not None:
            self.scaler.unscale_(opt)  # fp16: clip and judge the true gradients
        elif self.accelerator is not None and getattr(self.accelerator, "scaler", None) is not None:
            self.accelerator.unscale_gradients()
        stats = self.clipper.clip_(params)
        names = list(extras or {})
        scale = getattr(self.scaler, "_scale", None) if self.scaler is not None else None  # a tensor: no sync
        loss_v, norm, threshold, clipped, post, scale_v, *extra_v = host_values(
            loss, stats.norm, stats.threshold, stats.clipped, stats.post_norm, scale, *(extras or {}).values())
        self.steps += 1
        # Under a scaler a step with non-finite gradients is never taken (GradScaler's rule). With a
        # finite loss that is an fp16 overflow, the scaler's to handle: no guard incident. A
        # non-finite loss is the guard's to report (once), and the scaler skips the step too.
        scaler_skips = self.scaler is not None and not math.isfinite(norm)
        overflow = scaler_skips and math.isfinite(loss_v)
        incidents = self.guard.check(self.steps, loss_v, norm) if self.guard is not None and not overflow else []
        skipped = scaler_skips or (bool(incidents) and self.guard.action in ("skip", "rollback"))
        lr = opt.param_groups[0].get("lr") if getattr(opt, "param_groups", None) else None
        self.incidents.extend(incidents)
        return StepReport(step=self.steps, loss=loss_v, grad_norm=norm, threshold=threshold, clipped=bool(clipped),
                          skipped=skipped, lr=lr, incidents=incidents, post_norm=post, overflow=overflow,
                          loss_scale=scale_v, extras=dict(zip(names, extra_v)))

    def call_hooks(self, name: str) -> None:
        """Run the hooks' ``before_update`` or ``after_update`` around an optimizer step the caller
        makes itself (the Trainer callback); `step` calls them on its own."""
        _call(self.hooks, name, self, self._trained())

    def finish(self, report: StepReport) -> None:
        """After the step: the scaler's update, the scheduler, and the guard's stop rule."""
        if self.scaler is not None:
            self.scaler.update()  # halves the scale after an overflow, on the device
        if self.scheduler is not None:
            self.scheduler.step()
        if self.guard is not None and self.guard.over_limit():
            last = report.incidents[-1]
            stop = GuardStop(f"stopped at step {report.step}: {self.guard.consecutive} incidents in a row "
                             f"(last: {last.kind} {last.value:.4g}); {self.stop_hint}")
            stop.report = report  # the step that stopped the run, for the caller's log
            raise stop

    def _update(self, loss_mean: torch.Tensor, extras: dict[str, torch.Tensor]) -> StepReport:
        opt = self.optimizer
        report = self.judge(loss_mean, extras)
        if not report.skipped:
            params = self._trained()
            _call(self.hooks, "before_update", self, params)
            opt.step()
            if self.ema_params is not None:
                torch._foreach_lerp_(self.ema_params, [p.detach() for p in params], 1.0 - self.ema_decay)
            _call(self.hooks, "after_update", self, params)
        opt.zero_grad(set_to_none=True)  # a skipped step drops its gradients: weights and optimizer state untouched
        self.finish(report)
        return report

    def state_dict(self) -> dict:
        """Clipper, guard, scaler and EMA state and the step count (the model, optimizer and
        scheduler are yours to save)."""
        return {"steps": self.steps, "clipper": self.clipper.state_dict(),
                "guard": self.guard.state_dict() if self.guard is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": [e.clone() for e in self.ema_params] if self.ema_params is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved (between optimizer steps, not mid-accumulation)."""
        self.steps = int(state["steps"])
        self.clipper.load_state_dict(state["clipper"])
        if self.guard is not None and state.get("guard") is not None:
            self.guard.load_state_dict(state["guard"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema_params is not None and state.get("ema") is not None:
            for e, saved in zip(self.ema_params, state["ema"]):
                e.copy_(saved)
        self._micro, self._loss_sum = 0, None
