"""`StabilityCallback`: steadylm's clippers and spike/NaN guard in a stock ``transformers.Trainer``.

::

    from transformers import Trainer, TrainingArguments
    from steadylm.train import ZClip
    from steadylm.train.spikes import SpikeGuard
    from steadylm.train.hf import StabilityCallback

    args = TrainingArguments("out", max_grad_norm=0, ...)      # the callback clips instead
    cb = StabilityCallback(clipper=ZClip(), guard=SpikeGuard("skip"))
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()

How it hooks in (``transformers`` 5.x ``Trainer._run_epoch``): after the last micro-batch's backward
the Trainer clips to ``max_grad_norm`` (when > 0), measures the norm, calls the callbacks'
``on_pre_optimizer_step(args, state, control, model=, optimizer=, ...)`` and then
``optimizer.step()``. This callback clips there, so ``max_grad_norm`` must be 0 - otherwise the
Trainer would clip first and the clipper (and the guard) would see already-clipped gradients; a
non-zero value is a `ConfigError` when the Trainer is built (or at the start of ``train()``).

* Loss: callbacks do not get the loss before the optimizer step (``on_step_end`` is too late and
  gets no loss either). A forward hook on the model records each training micro-batch's
  ``outputs.loss`` (train mode, grad enabled: evaluation passes are ignored). The step's loss is
  their mean, or their sum when the Trainer passed ``num_items_in_batch`` (then each is already
  a share of the accumulated batch's token mean), scaled as the Trainer scales it, and averaged
  across ranks so every rank takes the same decision. A loss computed outside the model
  (``compute_loss_func``, label smoothing) is not seen: the guard then judges the gradient norm only
  (a NaN loss still shows as a NaN norm), and a warning says so once.
* Skip: every ``p.grad`` is set to ``None`` before ``optimizer.step()``; torch optimizers skip
  parameters without a gradient, so weights and optimizer state stay untouched (with fp16 the
  Trainer's ``GradScaler`` has already unscaled, so it steps nothing too). The learning-rate
  scheduler still advances, as in ``steadylm train``. Not for DeepSpeed, whose engine steps on
  its own gradient buffers and clips by itself.
* ``rollback`` is refused (`ConfigError`): the Trainer owns the checkpoints; use ``skip``.
* Logs: each training log line gets ``clip_threshold`` (last step), ``clipped_steps``,
  ``guard_incidents`` and ``skipped_steps`` (since the previous log line); the Trainer's own
  ``grad_norm`` is the pre-clip norm when ``max_grad_norm=0``. Callbacks run in list order and the
  Trainer puts reporters (TensorBoard, W&B) before user callbacks, so they miss these keys unless
  the callback goes first: ``trainer.callback_handler.callbacks.insert(0, cb)``. The keys always
  reach ``trainer.state.log_history``. ``cb.reports`` holds every step's `StepReport`, ``cb.incidents``
  every incident.
* Checkpoints: ``on_save`` writes the clipper and guard state to ``steadylm_stability.pt`` in the
  Trainer's ``checkpoint-N`` folder; a run resumed from that folder picks it up before its first step.
* One mechanism: the callback hands the gradients to `Stabilizer.judge` (the same unscale, clip,
  host read and guard decision as ``steadylm train`` and a plain loop); only ``backward`` and
  ``optimizer.step()`` stay the Trainer's.
* Host-device sync: one per optimizer step (loss, norm, threshold and flag in one copy), which the
  guard needs; the Trainer already syncs for its own ``grad_norm``.
* Distributed: as for `Stabilizer` - with DDP the gradients are averaged before the callback runs,
  so every rank clips the global gradient and keeps identical state.
"""

from __future__ import annotations

import math
import os
import warnings

import torch
from transformers import TrainerCallback

from ..errors import ConfigError
from .clip import NormClip
from .spikes import Incident
from .stabilizer import Stabilizer, StepReport, global_mean_

STATE_FILE = "steadylm_stability.pt"


class StabilityCallback(TrainerCallback):
    """Clip with any steadylm clipper and guard against spikes/NaNs inside ``transformers.Trainer``.

    ``clipper``: default ``NormClip(1.0)``, the Trainer's own default (``NoClip()`` to measure only);
    ``guard``: a `SpikeGuard` with action ``"skip"`` or ``"off"`` (default none); ``hooks``:
    `Stabilizer` hooks such as `steadylm.train.qkclip.QKClip` (called around the Trainer's own
    ``optimizer.step()``).
    """

    def __init__(self, clipper=None, guard=None, hooks=()):
        if guard is not None and guard.action == "rollback":
            raise ConfigError("StabilityCallback cannot roll back (the Trainer owns the checkpoints); use SpikeGuard('skip')")
        self.clipper = clipper if clipper is not None else NormClip(1.0)
        self.guard = guard
        self.hooks = list(hooks)
        self.reports: list[StepReport] = []
        self.incidents: list[Incident] = []
        self._micro: list[tuple[torch.Tensor, bool]] = []  # (loss, scaled by num_items_in_batch)
        self._hook = None
        self._hooked: torch.nn.Module | None = None
        self._warned_no_loss = False
        self._stabilizer: Stabilizer | None = None
        self._restore_checked = False
        self._since_log = {"clipped_steps": 0, "guard_incidents": 0, "skipped_steps": 0}

    # ------------------------------------------------------------------ checks and hook
    @staticmethod
    def _check_args(args) -> None:
        if args.max_grad_norm:
            raise ConfigError(
                f"TrainingArguments.max_grad_norm is {args.max_grad_norm}: set it to 0 when using StabilityCallback, "
                "which clips itself (the Trainer would clip first and hide the true norm); "
                "pass clipper=NormClip(1.0) for the Trainer's default clipping"
            )

    def on_init_end(self, args, state, control, **kwargs):
        self._check_args(args)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._check_args(args)  # also when added after the Trainer was built
        if model is not None and model is not self._hooked:
            self._remove_hook()
            self._hook = model.register_forward_hook(self._capture, with_kwargs=True)
            self._hooked = model
        self._micro.clear()
        self._restore_checked = False

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._hooked = None, None

    def _capture(self, module, args, kwargs, output) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return  # evaluation or generation
        loss = None
        if isinstance(output, dict):  # ModelOutput is a dict
            loss = output.get("loss")
        else:
            loss = getattr(output, "loss", None)
        if loss is None:
            if not self._warned_no_loss:
                warnings.warn("StabilityCallback: the model returned no loss (computed outside the model?); "
                              "the guard judges the gradient norm only", stacklevel=2)
                self._warned_no_loss = True
            return
        self._micro.append((loss.detach().float().mean(), "num_items_in_batch" in kwargs))

    def on_step_begin(self, args, state, control, **kwargs):
        self._micro.clear()

    # ------------------------------------------------------------------ the step
    def _step_loss(self, args, device) -> torch.Tensor:
        """The step's loss as the Trainer reports it, averaged across ranks (0 when none was seen)."""
        if not self._micro:
            loss = torch.zeros((), device=device)
        else:
            values = torch.stack([v.to(device) for v, _ in self._micro])  # (micro-batches,)
            if all(scaled for _, scaled in self._micro):
                # Each is sum/num_items of the whole accumulated batch (of all ranks when
                # average_tokens_across_devices): the Trainer multiplies by the number of processes.
                loss = values.sum()
                if getattr(args, "average_tokens_across_devices", False) and args.world_size > 1:
                    loss = loss * args.world_size
            else:
                loss = values.mean()
        self._micro.clear()
        return global_mean_(loss)

    def _maybe_restore(self, args, state) -> None:
        self._restore_checked = True
        if state.global_step == 0:
            return
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
        if os.path.isfile(path):
            self.load_state_dict(torch.load(path, weights_only=True))

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not self._restore_checked:
            self._maybe_restore(args, state)
        stab = self._stabilizer
        if stab is None or stab.model is not model or stab.optimizer is not optimizer:
            # the Trainer owns backward and optimizer.step(); the Stabilizer clips and judges (one mechanism)
            stab = self._stabilizer = Stabilizer(model, optimizer, self.clipper, self.guard, hooks=self.hooks)
        stab.steps = state.global_step  # the Trainer's count (a resume starts past 0)
        loss = self._step_loss(args, device=next(model.parameters()).device)
        report = stab.judge(loss)
        if report.skipped:
            for p in model.parameters():
                p.grad = None  # optimizer.step() then leaves weights and state alone
        else:
            stab.call_hooks("before_update")
        self.reports.append(report)
        self.incidents.extend(report.incidents)
        self._since_log["clipped_steps"] += int(report.clipped)
        self._since_log["guard_incidents"] += len(report.incidents)
        self._since_log["skipped_steps"] += int(report.skipped)
        stab.finish(report)  # GuardStop after too many incidents in a row

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._stabilizer is not None and self.reports and not self.reports[-1].skipped:
            self._stabilizer.call_hooks("after_update")  # QK-Clip rescales the heads the update pushed past tau

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or not self.reports:
            return  # evaluation metrics, or nothing measured yet
        extra = dict(self._since_log)
        if math.isfinite(self.reports[-1].threshold):  # no inf in JSON logs (NoClip, ZClip warm-up uncapped)
            extra["clip_threshold"] = self.reports[-1].threshold
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)  # the Trainer appended a copy of logs before on_log
        self._since_log = dict.fromkeys(self._since_log, 0)

    # ------------------------------------------------------------------ state
    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            tmp = os.path.join(folder, STATE_FILE + ".tmp")
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, os.path.join(folder, STATE_FILE))

    def state_dict(self) -> dict:
        """Clipper and guard state."""
        return {"clipper": self.clipper.state_dict(),
                "guard": self.guard.state_dict() if self.guard is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.clipper.load_state_dict(state["clipper"])
        if self.guard is not None and state.get("guard") is not None:
            self.guard.load_state_dict(state["guard"])

