"""Per-step metrics: one JSON line per step in ``metrics.jsonl``, TensorBoard events beside it.

On resume the log is cut back to the checkpoint's step (rewritten atomically) and TensorBoard is
told to purge later events, so every step appears exactly once however often the run was killed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..fsutil import write_text_atomic


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep only complete lines with ``step <= last_step``; return how many remain."""
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= last_step:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))
    return len(kept)


class MetricsLogger:
    """Appends JSON lines (flushed every write) and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: str | os.PathLike, *, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        self._f = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a core dependency, but never fail a run over a log
                SummaryWriter = None
            if SummaryWriter is not None:
                purge = resume_step + 1 if resume_step is not None else None
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        if self._tb is not None and "step" in record:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out
