"""One place for progress bars: `rich`, on stderr, only when stderr is a terminal."""

from __future__ import annotations

import os
import sys


def progress_enabled() -> bool:
    if os.environ.get("STEADYLM_PROGRESS") == "1":
        return True
    if os.environ.get("STEADYLM_PROGRESS") == "0":
        return False
    return sys.stderr.isatty()


def make_progress(transient: bool = False):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
        refresh_per_second=2,  # a 10 Hz redraw costs ~3% of a core on a 2-core machine (benchmarks/train_overhead.py)
        disable=not progress_enabled(),
    )
