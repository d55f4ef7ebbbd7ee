"""Per-batch sufficient statistics, pooled estimates and their bootstrap CIs over evaluation batches.

Every yardstick number is a function of sums over tokens (FVU = SSE / total variance, CE score =
a ratio of summed losses, ...). Averaging per-batch ratios would weight batches wrongly and is one
of the published FVU mistakes, so each metric keeps, per evaluation batch, the sums it needs; the
estimate is the function applied to the sums over all batches, and its CI comes from applying the
same function to the sums over batches resampled with replacement (a percentile bootstrap that
treats the batch, not the token, as the independent unit: tokens of one window are correlated).

Metrics cannot import `interplab.experiments` (data flows one way), hence this small helper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

Stats = Mapping[str, np.ndarray]
Statistic = Callable[[Stats], np.ndarray]
"""fn(sums) -> value: takes arrays with any number of leading (resample) axes in front of each
statistic's own shape and returns one value per leading index; write it with `[...]` and `axis=-1`."""

_CHUNK_FLOATS = 4_000_000  # floats per bootstrap chunk: bounds memory for (m, labels) matrices


class Estimate(NamedTuple):
    """A pooled value and its percentile-bootstrap CI over evaluation batches (NaN with < 2 batches)."""

    value: float
    low: float
    high: float


class BatchStats:
    """Named float64 arrays, one row per evaluation batch; `estimate(fn)` pools and bootstraps."""

    def __init__(self) -> None:
        self._rows: dict[str, list[np.ndarray]] = {}

    @classmethod
    def from_stacked(cls, stacked: Stats) -> BatchStats:
        """Statistics already stacked as (n_batches, *shape) arrays."""
        out = cls()
        out._rows = {k: list(np.asarray(v, dtype=np.float64)) for k, v in stacked.items()}
        return out

    def add(self, **stats: np.ndarray | float) -> None:
        """Record one batch's statistics (every batch must give the same names and shapes)."""
        if self._rows and set(stats) != set(self._rows):
            raise ValueError(f"batch statistics {sorted(stats)} differ from earlier {sorted(self._rows)}")
        for name, value in stats.items():
            self._rows.setdefault(name, []).append(np.asarray(value, dtype=np.float64))

    @property
    def n_batches(self) -> int:
        return len(next(iter(self._rows.values()), []))

    def stacked(self) -> dict[str, np.ndarray]:
        """Each statistic as (n_batches, *shape)."""
        return {k: np.stack(v) for k, v in self._rows.items()}

    def sums(self) -> dict[str, np.ndarray]:
        """Each statistic summed over batches."""
        return {k: np.sum(v, axis=0) for k, v in self.stacked().items()}

    def value(self, fn: Statistic) -> float:
        return float(fn(self.sums()))

    def estimate(self, fn: Statistic, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
        """fn of the pooled sums, with a percentile CI from `n_boot` resamples of the batches."""
        stacked = self.stacked()
        value = float(fn({k: v.sum(0) for k, v in stacked.items()})) + 0.0  # + 0.0: no "-0.0" in JSON
        boots = resample(stacked, fn, n_boot, seed)
        return Estimate(value, *percentile_ci(boots, level))


def boot_counts(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """How often each of `n` batches is drawn in each of `n_boot` resamples: (n_boot, n) float64."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def resample(stacked: Stats, fn: Statistic, n_boot: int = 1000, seed: int = 0,
             counts: np.ndarray | None = None) -> np.ndarray:
    """fn on `n_boot` bootstrap resamples of the batches: (n_boot,) (empty below 2 batches).

    A resample is a vector of counts (how often each batch was drawn), so the resampled sums are a
    matrix product; resamples are processed in chunks that keep the largest statistic in memory.
    `counts` (n_boot, n) from `boot_counts` fixes the resamples (then n_boot and seed are unused):
    statistics of several methods on the same batches, resampled with the same counts, are paired.
    """
    n = len(next(iter(stacked.values())))
    if n < 2 or (n_boot < 1 and counts is None):
        return np.empty(0)
    counts = boot_counts(n, n_boot, seed) if counts is None else np.asarray(counts, dtype=np.float64)
    n_boot = counts.shape[0]
    biggest = max(int(np.prod(v.shape[1:])) for v in stacked.values())
    chunk = max(1, _CHUNK_FLOATS // max(1, biggest))
    out = []
    for i in range(0, n_boot, chunk):
        c = counts[i : i + chunk]  # (c, n)
        sums = {k: np.tensordot(c, v, axes=(1, 0)) for k, v in stacked.items()}  # (c, *shape)
        out.append(np.asarray(fn(sums), dtype=np.float64).reshape(c.shape[0]))
    return np.concatenate(out)  # (n_boot,)


def percentile_ci(boots: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap values, ignoring NaN resamples; NaN when there are none."""
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return float(low), float(high)


def safe_div(num: np.ndarray, den: np.ndarray, fill: float = math.nan) -> np.ndarray:
    """num / den elementwise, `fill` where den == 0 (no warnings)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, fill, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out
