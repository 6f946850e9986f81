"""Moved to `steadylm.stats` (statistics are the ground floor, shared by metrics and reports);
this module keeps the old import path."""

from ..stats import bootstrap_ci, summarize

__all__ = ["bootstrap_ci", "summarize"]
