"""Evidence: a statistic, its 95% CI and a two-sided p-value against the null, and how they were got.

Three ways to get one, by what varies between replications:
- `from_boots`: a statistic and its bootstrap replicates (resampling the crux's unit: batches,
  groups, instances); percentile CI, p from the share of replicates on each side of the null.
- `from_refits`: one statistic per independent fit (SAE seeds, trained toys, random networks),
  optionally with the sampling variance of their mean over shared evaluation data; a t interval
  with S - 1 degrees of freedom, so 3 refits give an honest (wide) interval, not [min, max].
- `exact`: a value with no sampling error (a property of the set-up); only harness checks use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

LEVEL = 0.95


@dataclass(frozen=True)
class Evidence:
    """What one pipeline run measured for one crux on one subject (or control)."""

    statistic: float
    ci: tuple[float, float]
    p: float
    """Two-sided p-value of "statistic = null" (NaN where undefined)."""
    null: float
    how: str
    """The interval's construction, for the note: 't over 3 refits + batch bootstrap', ..."""
    n_units: int = 0
    """Independent units behind the CI (refits, groups, batches)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Side numbers worth keeping (medians, per-seed values)."""

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "ci": list(self.ci), "p": self.p, "null": self.null,
                "how": self.how, "n_units": self.n_units, "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evidence:
        nan = math.nan
        ci = d.get("ci") or [nan, nan]
        return cls(_f(d.get("statistic")), (_f(ci[0]), _f(ci[1])), _f(d.get("p")), _f(d.get("null")),
                   str(d.get("how", "")), int(d.get("n_units", 0)), dict(d.get("extra") or {}))


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def boot_p(boots: np.ndarray, null: float) -> float:
    """Two-sided bootstrap p-value: twice the smaller share of replicates on either side of the null
    (with the +1 correction, so it is never 0); NaN without finite replicates."""
    b = np.asarray(boots, dtype=float)
    b = b[np.isfinite(b)]
    if b.size == 0:
        return math.nan
    below, above = np.sum(b <= null), np.sum(b >= null)
    return float(min(1.0, 2 * (min(below, above) + 1) / (b.size + 1)))


def from_boots(statistic: float, boots: np.ndarray, null: float, how: str, n_units: int = 0,
               extra: dict[str, Any] | None = None) -> Evidence:
    """Percentile CI and bootstrap p from replicates `boots` (B,) of `statistic`."""
    b = np.asarray(boots, dtype=float)
    b = b[np.isfinite(b)]
    if b.size == 0:
        ci = (math.nan, math.nan)
    else:
        a = (1 - LEVEL) / 2
        lo, hi = np.quantile(b, [a, 1 - a])
        ci = (float(lo), float(hi))
    return Evidence(float(statistic), ci, boot_p(b, null), float(null), how, n_units, dict(extra or {}))


def bootstrap_units(units: Any, null: float, how: str, stat: Any = np.mean, n_boot: int = 2000,
                    seed: int = 0, extra: dict[str, Any] | None = None) -> Evidence:
    """`stat` over independent units (n,) or (n, ...) with a percentile bootstrap over the first axis."""
    x = np.asarray(units, dtype=float)
    if x.shape[0] == 0:
        return Evidence(math.nan, (math.nan, math.nan), math.nan, float(null), how, 0, dict(extra or {}))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], size=(n_boot, x.shape[0]))  # (n_boot, n)
    boots = np.array([float(stat(x[i])) for i in idx])  # (n_boot,)
    return from_boots(float(stat(x)), boots, null, how, int(x.shape[0]), extra)


def from_refits(per_fit: Any, null: float, how: str, sampling_var: float = 0.0,
                extra: dict[str, Any] | None = None) -> Evidence:
    """Mean over S independent fits with a t interval (S - 1 degrees of freedom).

    The variance of the mean is var(per_fit) / S plus `sampling_var`, the variance of the fits'
    mean that comes from the evaluation data when every fit is scored on the same data (that part
    is common to all fits and does not show in their spread; pass 0 when each fit drew its own).
    With a single fit the interval rests on `sampling_var` alone and uses a normal quantile; it is
    NaN (inconclusive) when that is 0 too.
    """
    x = np.asarray(per_fit, dtype=float)
    x = x[np.isfinite(x)]
    s = x.size
    info = {"per_fit": x.tolist(), **(extra or {})}
    if s == 0:
        return Evidence(math.nan, (math.nan, math.nan), math.nan, float(null), how, 0, info)
    mean = float(x.mean())
    var = (float(x.var(ddof=1)) / s if s > 1 else 0.0) + max(0.0, float(sampling_var))
    if var <= 0 and s < 2:
        return Evidence(mean, (math.nan, math.nan), math.nan, float(null), how, s, info)
    se = math.sqrt(var)
    q = sps.t.ppf(0.5 + LEVEL / 2, s - 1) if s > 1 else sps.norm.ppf(0.5 + LEVEL / 2)
    if se == 0:
        p = 1.0 if mean == null else 0.0
    else:
        z = abs(mean - null) / se
        p = float(2 * (sps.t.sf(z, s - 1) if s > 1 else sps.norm.sf(z)))
    return Evidence(mean, (float(mean - q * se), float(mean + q * se)), p, float(null), how, s, info)


def exact(value: float, null: float, how: str = "exact: a property of the set-up, no sampling error",
          extra: dict[str, Any] | None = None) -> Evidence:
    """A value without uncertainty. Only a harness check may rest on it."""
    v = float(value)
    return Evidence(v, (v, v), math.nan, float(null), how, 0, dict(extra or {}))
