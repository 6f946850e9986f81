"""Confidence intervals over items: the percentile bootstrap of a mean.

Reference: Efron & Tibshirani (1993), "An Introduction to the Bootstrap", ch. 13 (percentile
interval). sacrebleu's ``--confidence`` (``sacrebleu/significance.py``) bootstraps *corpus*
statistics; here the values are already per item (one number per prompt), so we resample items
and take the mean, with numpy's ``default_rng(seed)`` so a seed gives the same interval on every
machine. Missing values (None, NaN) are dropped first: an item without a score is not a zero.
``scipy.stats.bootstrap(..., method="percentile")`` computes the same interval, but scipy is not a
steadylm dependency and the vectorised numpy version is a dozen lines.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from ..errors import ConfigError

# Upper bound on resampled indices held at once (n_resamples x n), to bound memory on big sets.
_CHUNK_ELEMENTS = 4_000_000


def _clean(values: Iterable[Any]) -> np.ndarray:
    kept = []
    for v in values:
        if v is None:
            continue
        f = float(v)
        if not math.isnan(f):
            kept.append(f)
    return np.asarray(kept, dtype=np.float64)


def bootstrap_ci(values: Iterable[Any], *, n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile-bootstrap ``level`` interval ``(low, high)`` of the mean of ``values``.

    None and NaN are dropped; no value left -> ``(None, None)``; one value v -> ``(v, v)``.
    """
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ConfigError(f"bootstrap resamples must be an integer >= 1, got {n_resamples!r}")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence level must be in (0, 1), got {level!r}")
    x = _clean(values)
    n = x.size
    if n == 0:
        return None, None
    if n == 1:
        v = float(x[0])
        return v, v
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, step):
        stop = min(start + step, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))  # (R, n)
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(values: Iterable[Any], **kw: Any) -> dict[str, float | int | None]:
    """``{"mean", "ci_low", "ci_high", "n"}`` of ``values`` (None/NaN dropped; plain floats or None,
    ready for JSON). Keyword arguments go to ``bootstrap_ci``."""
    x = _clean(values)
    low, high = bootstrap_ci(x, **kw)
    return {"mean": float(x.mean()) if x.size else None, "ci_low": low, "ci_high": high, "n": int(x.size)}
