"""Memory readings the benchmark scripts share: fields of ``/proc/self/status``.

Read from the kernel's own accounting rather than a library (psutil is not a steadylm dependency,
and ``VmHWM`` - the peak resident set so far - is what the benchmarks compare)."""

from __future__ import annotations

import re
from pathlib import Path


def status_kib(key: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``); None off Linux or when absent."""
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None
