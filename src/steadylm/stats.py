"""Statistics shared by every layer: bootstrap confidence intervals over items, and
Krippendorff's alpha for agreement among raters. Ground floor: it imports nothing of steadylm but
`errors`, so metrics, the rating import and reports may all use it.

Bootstrap: confidence intervals over items, the percentile bootstrap of a mean.

Reference: Efron & Tibshirani (1993), "An Introduction to the Bootstrap", ch. 13 (percentile
interval). sacrebleu's ``--confidence`` (``sacrebleu/significance.py``) bootstraps *corpus*
statistics; here the values are already per item (one number per prompt), so we resample items
and take the mean, with numpy's ``default_rng(seed)`` so a seed gives the same interval on every
machine. Missing values (None, NaN) are dropped first: an item without a score is not a zero.
``scipy.stats.bootstrap(..., method="percentile")`` computes the same interval, but scipy is not a
steadylm dependency and the vectorised numpy version is a dozen lines.

Krippendorff's alpha: agreement among any number of raters, with missing ratings.

Reference: Krippendorff, K. (2011). "Computing Krippendorff's Alpha-Reliability". Annenberg School
for Communication, University of Pennsylvania (Departmental Papers, ASC). We follow its recipe:

* reliability data: ``m`` raters (rows) by ``N`` units (columns); a missing rating is ``None``/NaN;
* only *pairable* values count: units with at least two ratings;
* coincidence matrix ``o_ck = Σ_u (number of c-k pairs of raters in unit u) / (m_u - 1)``, with
  marginals ``n_c = Σ_k o_ck`` and ``n = Σ_c n_c``;
* ``α = 1 - D_o / D_e = 1 - (n - 1) · Σ o_ck δ²_ck / Σ n_c n_k δ²_ck``;
* difference functions: nominal ``δ² = [c ≠ k]``; ordinal
  ``δ² = (Σ_{g=c..k} n_g - (n_c + n_k) / 2)²``; interval ``(c - k)²``; ratio ``((c - k) / (c + k))²``.

The paper's worked example (4 observers, 12 units, missing values) gives α = 0.743 (nominal),
0.815 (ordinal), 0.849 (interval) and 0.797 (ratio); ``tests/test_report.py`` pins those values.

Why our own forty lines rather than the ``krippendorff`` package (PyPI, 0.9.0): its numbers are the
same - on the 2011 example it gives 0.743421, 0.815388, 0.849107 and 0.797403, equal to ours to
1e-15 - but it raises ``ValueError`` on the two undefined cases (no pairable unit; every value the
same) where a rating import must go on and report ``None`` with the reason, and it returns alpha
alone, not the pairable counts that ``human.json`` shows. A wrapper counting those and catching
its errors would be about as long as the formula, plus one more dependency.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import ConfigError

__all__ = ["LEVELS", "bootstrap_ci", "krippendorff_alpha", "summarize"]

# Upper bound on resampled indices held at once (n_resamples x n), to bound memory on big sets.
_CHUNK_ELEMENTS = 4_000_000


def _value(v: Any) -> float | None:
    """A number, or None for a missing one (None or NaN)."""
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def _clean(values: Iterable[Any]) -> np.ndarray:
    return np.asarray([f for f in map(_value, values) if f is not None], dtype=np.float64)


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


# --------------------------------------------------------------------------- Krippendorff's alpha

LEVELS = ("nominal", "ordinal", "interval", "ratio")


def _delta2(values: np.ndarray, n_c: np.ndarray, level: str) -> np.ndarray:
    """The squared difference ``δ²_ck`` between every pair of the (sorted) values that occur."""
    c, k = values[:, None], values[None, :]
    if level == "nominal":
        return (c != k).astype(np.float64)
    if level == "interval":
        return (c - k) ** 2
    if level == "ratio":
        s = c + k
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(s == 0, 0.0, (c - k) / np.where(s == 0, 1.0, s))
        return d ** 2
    # ordinal: ranks between c and k weighted by how often each value was used
    cum = np.cumsum(n_c)
    lo = np.minimum.outer(np.arange(len(values)), np.arange(len(values)))
    hi = np.maximum.outer(np.arange(len(values)), np.arange(len(values)))
    between = cum[hi] - cum[lo] + n_c[lo]  # Σ_{g=lo..hi} n_g
    return (between - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2


def krippendorff_alpha(data: Sequence[Sequence[Any]], level: str = "ordinal") -> dict[str, Any]:
    """Krippendorff's alpha of ``data[rater][unit]`` (``None`` or NaN = not rated).

    Returns ``{"alpha", "level", "units", "pairable_values", "raters"}``; ``alpha`` is ``None``
    (with a ``reason``) when fewer than two values are pairable or when every pairable value is the
    same (``D_e = 0``: agreement cannot be told from chance)."""
    if level not in LEVELS:
        raise ConfigError(f"Krippendorff's alpha: level must be one of {', '.join(LEVELS)}, got {level!r}")
    rows = [[_value(v) for v in row] for row in data]
    n_units = max((len(r) for r in rows), default=0)
    units = [[r[u] for r in rows if u < len(r) and r[u] is not None] for u in range(n_units)]
    units = [vals for vals in units if len(vals) >= 2]  # only pairable values count
    out: dict[str, Any] = {"alpha": None, "level": level, "units": len(units),
                           "pairable_values": sum(len(v) for v in units), "raters": len(rows)}
    if not units:
        out["reason"] = "no unit has two or more ratings"
        return out
    values = np.array(sorted({v for vals in units for v in vals}), dtype=np.float64)
    index = {v: i for i, v in enumerate(values.tolist())}
    o = np.zeros((len(values), len(values)))  # coincidence matrix
    for vals in units:
        counts = np.zeros(len(values))
        for v in vals:
            counts[index[v]] += 1
        o += (np.outer(counts, counts) - np.diag(counts)) / (len(vals) - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    d2 = _delta2(values, n_c, level)
    expected = float((np.outer(n_c, n_c) * d2).sum())
    if expected == 0.0:
        out["reason"] = "every rating has the same value: agreement cannot be told from chance"
        return out
    out["alpha"] = float(1.0 - (n - 1.0) * float((o * d2).sum()) / expected)
    return out
