"""The LM head at the loss positions only.

A fine-tuning batch of chat conversations carries loss on the assistant tokens alone: in the
SmolLM2 benchmark's data a third of the positions are system and user turns and padding, labelled
-100. A causal LM still projects every position onto its vocabulary (SmolLM2: 49,152 x 576, about a
fifth of the forward FLOPs) and the cross-entropy then ignores a third of those logits.
`LossPositions` puts a forward pre-hook on the model's output embeddings that hands them the
hidden states of the loss positions only, flattened to one row (1, N, H): the model's own post-head
operations (Gemma 2's final soft-cap, a logit scale) are elementwise and still apply, and the model
returns logits (1, N, V) in the order of the flattened (B*T) positions, so the cross-entropy runs
against the labels at the same positions. In ``benchmarks/trainer_smollm2.py`` (SmolLM2, chat rows
with 66% of positions labelled, one CPU thread) it took steadylm from parity with
``transformers.Trainer`` to 1.09x its tokens/s for a full fine-tune and 1.06x for LoRA; the losses
agree with the full head's to float rounding (the head's matmul runs on other shapes).

Why a hook and not transformers' ``logits_to_keep``: that argument keeps one set of sequence
positions for the whole batch, while the loss positions differ from row to row.

The indices are computed on the host from the labels before they move to the device, so selecting
the rows adds no host read to the step. A micro-batch whose every position carries loss (text
blocks) runs the model unchanged. If the head is not called exactly once by a forward pass (a model
that does something else with it), that pass is run again in full, and so is every later one.

`logits` is the one entry point: the training loop and `data.sft.heldout_loss` call it."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch


class LossPositions:
    """Runs ``model``'s output embeddings on the loss positions only, while `only` is active."""

    def __init__(self, model: torch.nn.Module, *, enabled: bool = True):
        head = model.get_output_embeddings() if enabled and hasattr(model, "get_output_embeddings") else None
        self.enabled = head is not None
        self.rows: torch.Tensor | None = None  # (N,) indices into the flattened (B*T) positions
        self.positions = 0  # B*T of the batch `only` narrows
        self.calls = 0
        self._handle = head.register_forward_pre_hook(self._hook, with_kwargs=True) if head is not None else None

    def logits(self, model, batch: dict, labels: torch.Tensor, ignore: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
        """``model(**batch)``'s logits with the labels they predict: (1, N, V) and (N,) at the N
        positions of ``labels`` (B, T) that carry loss, or (B, T, V) and (B*T,) when all do. Both on
        ``batch``'s device; ``labels`` may still be on the host (so the indices cost no host read)."""
        labels = labels.reshape(-1)
        rows = self.select(labels, ignore)
        dev = batch["input_ids"].device
        if rows is not None:
            with self.only(rows.to(dev, non_blocking=True), positions=labels.numel()):
                out = model(**batch, use_cache=False).logits
            if self.took():
                return out, labels[rows.to(labels.device)].to(dev, non_blocking=True)
            del out  # the head was not called once: turned off, run it in full
        return model(**batch, use_cache=False).logits, labels.to(dev, non_blocking=True)

    def select(self, labels: torch.Tensor, ignore: int) -> torch.Tensor | None:
        """The indices (N,) of the positions of ``labels`` (any shape, on the host) that carry loss, or
        None when every one does (or the mechanism is off): then the full head runs."""
        if not self.enabled:
            return None
        on = labels.reshape(-1).cpu().numpy() != ignore  # numpy: no tensor read (labels are on the host)
        if on.all():
            return None
        return torch.from_numpy(np.flatnonzero(on))

    @contextmanager
    def only(self, rows: torch.Tensor | None, *, positions: int):
        """Within the block the head sees the positions ``rows`` (on the model's device) of the
        batch's ``positions`` (B*T) alone; ``rows`` None leaves the model unchanged."""
        self.rows, self.positions, self.calls = rows, positions, 0
        try:
            yield self
        finally:
            self.rows = None

    def took(self) -> bool:
        """Whether the last `only` block's forward pass called the head exactly once, as this needs;
        if not, the mechanism turns itself off for good and the caller reruns the forward pass."""
        if self.calls == 1:
            return True
        self.enabled = False
        self.remove()
        return False

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module, args, kwargs):
        if self.rows is None:
            return None
        self.calls += 1
        if args:
            h, rest = args[0], args[1:]
        else:
            h, rest, kwargs = kwargs["input"], (), {k: v for k, v in kwargs.items() if k != "input"}
        if self.calls > 1 or h.dim() < 2 or h.numel() != self.positions * h.size(-1):
            self.calls += 1  # not the one call on every position: `took` says no, the pass reruns in full
            return None
        picked = h.reshape(-1, h.size(-1)).index_select(0, self.rows).unsqueeze(0)  # (1, N, H)
        return (picked, *rest), kwargs
