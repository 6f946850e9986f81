"""Per-step metrics: one JSON line per step in ``metrics.jsonl``, TensorBoard events beside it.

Step records carry ``step``, ``loss``, ``grad_norm`` and the rest; event records (incidents,
rollbacks, injected faults) carry an ``event`` key as well, and are kept across rollbacks.

On resume the log is cut back to the checkpoint's step (rewritten atomically) and TensorBoard is
told to purge later events, so every step appears exactly once however often the run was killed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..fsutil import write_text_atomic


def truncate_metrics(path: Path, last_step: int, *, keep_events: bool = False) -> int:
    """Keep only complete lines with ``step <= last_step`` (and, with ``keep_events``, every
    event line - incidents, rollbacks - whatever its step); return how many remain."""
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
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
        # NaN and Inf are not JSON: write null and keep the spelling beside it.
        for k, v in list(record.items()):
            if isinstance(v, float) and not math.isfinite(v):
                record[k] = None
                record[f"{k}_nonfinite"] = str(v)
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
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
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if ("event" in rec) == events:
                out.append(rec)
    return out
