"""What a metric returns: a `Result` (the number, its confidence interval, the per-item values it
came from, and the settings that made it) or `NotMeasured` (and why not).

After sacrebleu's ``Score`` (``sacrebleu/metrics/base.py``): a metric is an object whose ``score``
gives a typed value that carries its own signature, so no caller assembles an ad-hoc dict or writes
into a shared per-prompt list. Where we differ: the CI is a percentile bootstrap over items
(`stats.summarize`), and ``per_item`` is keyed by item id, so an evaluation lines the items up
itself. ``to_json`` gives the layout ``results.json`` has always had.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

__all__ = ["Result", "NotMeasured", "Measurement", "summarize_items", "summarize_fields", "as_json", "mean"]


@dataclass(frozen=True)
class Result:
    """A measured number and everything needed to trust it."""

    value: Any
    """the number (the mean over items for a per-item metric), or a mapping of named numbers"""
    ci: tuple[float | None, float | None] | None = None
    """95 % percentile-bootstrap interval over items; None for a corpus-level number"""
    per_item: Mapping[str, Any] = field(default_factory=dict)
    """item id -> that item's value (None where the item has one but it is undefined)"""
    signature: Mapping[str, Any] = field(default_factory=dict)
    """the settings that made the number (method, model, tokenizer, ...)"""
    measured: ClassVar[bool] = True

    @property
    def n(self) -> int:
        """Items that count towards the number (None and NaN do not)."""
        return sum(v is not None and v == v for v in self.per_item.values())

    def to_json(self) -> dict[str, Any]:
        """``{"mean", "ci_low", "ci_high", "n"}`` for a per-item number, else the value itself."""
        if self.ci is None:
            return dict(self.value) if isinstance(self.value, Mapping) else self.value
        return {"mean": self.value, "ci_low": self.ci[0], "ci_high": self.ci[1], "n": self.n}


@dataclass(frozen=True)
class NotMeasured:
    """A metric the run could not give, and the one-line reason."""

    reason: str
    measured: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:
        return {"measured": False, "reason": self.reason}


Measurement = Result | NotMeasured


def summarize_items(per_item: Mapping[str, Any], *, n_resamples: int,
                    signature: Mapping[str, Any] | None = None) -> Result:
    """The mean of the per-item values (None skipped) with its bootstrap CI, in item order."""
    from ..stats import summarize

    s = summarize([v for v in per_item.values() if v is not None], n_resamples=n_resamples)
    return Result(s["mean"], (s["ci_low"], s["ci_high"]), dict(per_item), dict(signature or {}))


def summarize_fields(records: Mapping[str, Mapping[str, Any]], keys: tuple[str, ...], *,
                     n_resamples: int) -> dict[str, Result]:
    """One `Result` per key of per-item records (item id -> ``{key: value}``) that give several numbers."""
    return {k: summarize_items({i: r.get(k) for i, r in records.items()}, n_resamples=n_resamples) for k in keys}


def as_json(m: Measurement | Mapping[str, Any]) -> Any:
    """A measurement, or a mapping of named ones, as ``results.json`` holds it."""
    if isinstance(m, (Result, NotMeasured)):
        return m.to_json()
    return {k: as_json(v) if isinstance(v, (Result, NotMeasured, Mapping)) else v for k, v in m.items()}


def mean(values: Any) -> float | None:
    """The plain mean of the values that are not None; None when there is none."""
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None
