"""Krippendorff's alpha: agreement among any number of raters, with missing ratings.

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

Why our own forty lines rather than the ``krippendorff`` package: it is one more dependency for
a formula this short, and we want the undefined case (no variation at all: ``D_e = 0``) to be an
explicit ``None`` with a reason rather than a NaN or a division warning.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["LEVELS", "krippendorff_alpha"]

LEVELS = ("nominal", "ordinal", "interval", "ratio")


def _value(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


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
