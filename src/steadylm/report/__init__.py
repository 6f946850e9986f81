"""Reports of a run: PNG plots (``report.plots``); HTML and Markdown summaries build on them."""

from __future__ import annotations

from .plots import plot_comparison, plot_run

__all__ = ["plot_run", "plot_comparison"]
