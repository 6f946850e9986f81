"""How a number is written, in every table steadylm prints or renders (terminal, HTML, Markdown).

One place, so a value reads the same in the terminal summary and in the report: four significant
digits, ``-`` for a missing value, ``yes``/``no`` for booleans, and a mean with its bootstrap
interval as ``mean [low, high]``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fmt", "fmt_ci", "fmt_ci_n"]


def fmt(v: Any) -> str:
    """One value: ``-`` for None, ``yes``/``no``, floats to 4 significant digits (``nan``, ``inf`` as such)."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fmt_ci(d: Any, *, gap: str = "  ", show_n: bool = False) -> str:
    """A ``{"mean", "ci_low", "ci_high", "n"}`` summary as ``mean<gap>[low, high]``, with `` (n=N)``
    when ``show_n``; ``-`` when there is no mean. Terminal tables use two spaces, the report one."""
    if not isinstance(d, dict) or d.get("mean") is None:
        return "-"
    lo, hi = d.get("ci_low"), d.get("ci_high")
    s = fmt(d["mean"]) if lo is None or hi is None else f"{fmt(d['mean'])}{gap}[{fmt(lo)}, {fmt(hi)}]"
    return s + (f" (n={d['n']})" if show_n and isinstance(d.get("n"), int) else "")


def fmt_ci_n(d: Any) -> str:
    """The report's form of a summary: ``mean [low, high] (n=N)``."""
    return fmt_ci(d, gap=" ", show_n=True)
