"""Per-step metrics: one JSON line per step in ``metrics.jsonl``, TensorBoard events beside it.

Step records carry ``step``, ``loss``, ``grad_norm`` and the rest; event records (incidents,
rollbacks, injected faults) carry an ``event`` key as well, and are kept across rollbacks.

On resume the log is cut back to the checkpoint's step (rewritten atomically) and TensorBoard is
told to purge later events, so every step appears exactly once however often the run was killed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..errors import DataError, SteadyError
from ..fsutil import to_json, write_text_atomic
from ..io import iter_jsonl, loads_json


def truncate_metrics(path: Path, last_step: int, *, keep_events: bool = False) -> int:
    """Keep only complete lines with ``step <= last_step`` (and, with ``keep_events``, every
    event line - incidents, rollbacks - whatever its step); return how many remain."""
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = loads_json(line, str(path))
        except DataError:
            continue  # a line cut by a kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and (rec["step"] <= last_step or (keep_events and "event" in rec)):
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))
    return len(kept)


class MetricsLogger:
    """Appends JSON lines (flushed every write) and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: str | os.PathLike, *, resume_step: int | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.tensorboard = tensorboard
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        self._f = open(self.path, "a", encoding="utf-8")
        self._tb = self._writer(resume_step)

    def _writer(self, last_step: int | None):
        if not self.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a core dependency, but never fail a run over a log
            return None
        purge = last_step + 1 if last_step is not None else None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)

    def rewind(self, last_step: int) -> None:
        """After a rollback: forget step records after ``last_step`` (events stay)."""
        self._f.close()
        truncate_metrics(self.path, last_step, keep_events=True)
        self._f = open(self.path, "a", encoding="utf-8")
        if self._tb is not None:
            self._tb.close()
            self._tb = self._writer(last_step)

    def log(self, record: dict[str, Any]) -> None:
        # NaN and Inf are not JSON: write null and keep the spelling beside it (plots mark them).
        for k, v in list(record.items()):
            if isinstance(v, float) and not math.isfinite(v):
                record[k] = None
                record[f"{k}_nonfinite"] = str(v)
        self._f.write(to_json(record) + "\n")  # strict, nested values too
        self._f.flush()
        if self._tb is not None and "step" in record and "event" not in record:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str | os.PathLike, *, events: bool = False) -> list[dict[str, Any]]:
    """The step records of a run (or, with ``events=True``, its event records)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [rec for _, rec in iter_jsonl(path, error=SteadyError)
            if isinstance(rec, dict) and ("event" in rec) == events]


class AttentionProbe:
    """Max pre-softmax attention logit per step: the first sign of attention-logit growth.

    Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training
    instabilities") show attention logits growing without bound before a divergence, and
    QK-layernorm preventing it. Fast attention kernels never materialise the logits, so on the
    steps it is armed for, this probe recomputes ``q k^T * scaling`` (causal positions only) from
    each attention module's inputs, with the module's own projections, q/k norms and rotary
    embedding - Llama-, Qwen- and OLMo-style attention in ``transformers``, LoRA-wrapped projections
    included. Other architectures report nothing rather than a wrong number.

    ``per_head=True`` also keeps each module's maximum per query head in `heads` (read with
    `take_heads`): what QK-Clip (`steadylm.train.qkclip`) needs, from the same recomputation.
    """

    def __init__(self, model, *, per_head: bool = False):
        import importlib

        self.value = None
        self.armed = False
        self.per_head = per_head
        self.heads: dict = {}
        """attention module -> its max logit per query head, ``(H,)``, since the last `take_heads`"""
        self.modules: list = []
        """the attention modules watched, in model order"""
        self._handles = []
        for module in model.modules():
            if not all(hasattr(module, a) for a in ("q_proj", "k_proj", "head_dim")):
                continue
            mod = importlib.import_module(type(module).__module__)
            rope = getattr(mod, "apply_rotary_pos_emb", None)
            if rope is None:
                continue
            self._handles.append(module.register_forward_pre_hook(self._hook(rope), with_kwargs=True))
            self.modules.append(module)

    @property
    def supported(self) -> bool:
        return bool(self._handles)

    def _hook(self, rope):
        import torch

        def hook(module, args, kwargs):
            if not self.armed:
                return None
            h = kwargs.get("hidden_states", args[0] if args else None)
            pe = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
            if h is None or pe is None:
                return None
            # no_grad, and the RNG as it was: projections with dropout (LoRA's) draw the same masks
            # again in the module's own forward, so watching a run does not change it
            with torch.no_grad(), torch.random.fork_rng(devices=[h.device] if h.device.type == "cuda" else []):
                shape = (*h.shape[:-1], -1, module.head_dim)
                q = module.q_proj(h).view(shape)
                k = module.k_proj(h).view(shape)
                if hasattr(module, "q_norm"):
                    q, k = module.q_norm(q), module.k_norm(k)
                q, k = rope(q.transpose(1, 2), k.transpose(1, 2), *pe)  # (B, H, T, D), (B, Hkv, T, D)
                if k.shape[1] != q.shape[1]:  # grouped-query attention
                    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
                scale = getattr(module, "scaling", module.head_dim ** -0.5)
                logits = (q @ k.transpose(-1, -2)) * scale  # (B, H, T, T)
                T = logits.shape[-1]
                causal = torch.ones(T, T, dtype=torch.bool, device=logits.device).tril()
                masked = logits.masked_fill(~causal, float("-inf"))
                m = masked.amax()
                self.value = m if self.value is None else torch.maximum(self.value, m)
                if self.per_head:
                    per = masked.amax(dim=(0, 2, 3))  # (H,)
                    seen = self.heads.get(module)
                    self.heads[module] = per if seen is None else torch.maximum(seen, per)
            return None

        return hook

    def take(self) -> float | None:
        """The maximum seen since the last call (None if nothing was measured)."""
        v, self.value = self.value, None
        return None if v is None else float(v)

    def take_heads(self) -> dict:
        """Per-head maxima since the last call, ``{module: (H,) tensor}`` on the device (no host read)."""
        heads, self.heads = self.heads, {}
        return heads

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def update_ratios(before: list, params_by_group: list[list], names: list[str]) -> dict[str, float]:
    """``||w_after - w_before|| / ||w_before||`` per parameter group (the update-to-weight ratio)."""
    import torch

    out = {}
    i = 0
    for name, group in zip(names, params_by_group):
        num = den = 0.0
        for p in group:
            b = before[i]
            i += 1
            num += float(torch.linalg.vector_norm(p.detach() - b)) ** 2
            den += float(torch.linalg.vector_norm(b)) ** 2
        out[f"update_ratio/{name}"] = math.sqrt(num) / math.sqrt(den) if den > 0 else 0.0
    return out
