"""One statistic with its bootstrap interval, or the reason it has no value.

Every number the analysis reports is an :class:`Estimate`: a value with a percentile
bootstrap confidence interval, or ``None`` with a one-line reason (too few runs, a constant
measure, bootstrap switched off). Statistics that need more data than there is never come
out as a number.

The bootstrap resamples runs with replacement. A resample is represented by its
*multiplicities* ``w`` (how often each run was drawn, summing to n), so statistics over
pairs of runs are quadratic forms in ``w`` and a thousand resamples cost one matrix
product (see :mod:`qgen.analysis.kendall`). Each statistic draws from its own generator,
seeded from the analysis seed and the statistic's name, so adding a measure does not move
the intervals of the others.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: fewest runs for a τ, τ-b or CMI over a set of runs
MIN_RUNS = 3
#: fewest pairs for a paired comparison
MIN_PAIRS = 3
#: most resamples handled at once (bounds the memory of the quadratic forms)
CHUNK = 128


@dataclass(frozen=True)
class Estimate:
    """A statistic: ``value`` with its bootstrap interval [``low``, ``high``] at ``conf``,
    over ``n`` units (runs or pairs). ``value`` is None when the statistic is undefined here,
    and ``reason`` says why; an interval can be None (with a reason) while the value is not.
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0
    conf: float | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """Whether there is a value."""
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)

    @classmethod
    def missing(cls, reason: str, n: int = 0) -> Estimate:
        """No value, and why."""
        return cls(None, n=n, reason=reason)


def too_few(n: int, need: int, what: str = "runs") -> Estimate:
    """The estimate of a statistic over ``n`` units that needs ``need``."""
    return Estimate.missing(f"too few {what} ({n} < {need})", n=n)


def finite_or_none(x: Any) -> float | None:
    """A finite float, or None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def rng_for(seed: int, *keys: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and a stable hash of ``keys`` (the statistic's name)."""
    return np.random.default_rng([int(seed), zlib.crc32("|".join(keys).encode())])


def resample_weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """``n_boot`` bootstrap resamples of ``n`` runs as multiplicities (n_boot × n floats,
    each row summing to n): row b counts how often each run was drawn."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + (np.arange(n_boot) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def percentile_ci(samples: np.ndarray, conf: float) -> tuple[float, float] | None:
    """The percentile interval of bootstrap ``samples`` at ``conf``, ignoring undefined
    (NaN) resamples; None when more than a tenth of the resamples are undefined."""
    samples = np.asarray(samples, dtype=float)
    ok = samples[np.isfinite(samples)]
    if len(samples) == 0 or len(ok) < 0.9 * len(samples):
        return None
    alpha = (1.0 - conf) / 2.0
    lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


WeightedStat = Callable[[np.ndarray], np.ndarray]


def bootstrap_samples(stat: WeightedStat, n: int, n_boot: int,
                      rng: np.random.Generator) -> np.ndarray:
    """``stat`` over ``n_boot`` resamples of ``n`` units (resampled in chunks of
    :data:`CHUNK`); the first axis is the resample."""
    return np.concatenate([stat(resample_weights(rng, n, min(CHUNK, n_boot - start)))
                           for start in range(0, n_boot, CHUNK)])


def estimate_from(value: float | None, samples: np.ndarray | None, n: int, conf: float,
                  what: str = "runs") -> Estimate:
    """An :class:`Estimate` from a value and its bootstrap samples (None: no bootstrap)."""
    value = finite_or_none(value)
    if value is None:
        return Estimate.missing(f"undefined on these {what} (a constant measure or gap, "
                                "or no comparable pairs)", n=n)
    if samples is None:
        return Estimate(value, n=n, reason="no bootstrap (n_boot = 0)")
    ci = percentile_ci(samples, conf)
    if ci is None:
        return Estimate(value, n=n, conf=conf,
                        reason="no interval: over a tenth of the bootstrap resamples "
                               "leave the statistic undefined")
    return Estimate(value, ci[0], ci[1], n=n, conf=conf)


def bootstrap_estimate(stat: WeightedStat, n: int, *, n_boot: int, conf: float,
                       rng: np.random.Generator, value: float | None = None,
                       what: str = "runs") -> Estimate:
    """An :class:`Estimate` of ``stat`` over ``n`` units.

    ``stat(W)`` maps resample multiplicities (B × n) to B values (NaN where undefined); its
    value on the data is ``stat(ones)`` unless ``value`` is given (e.g. from scipy).
    """
    if value is None:
        value = finite_or_none(stat(np.ones((1, n)))[0])
    if value is None or n_boot <= 0:
        return estimate_from(value, None, n, conf, what)
    return estimate_from(value, bootstrap_samples(stat, n, n_boot, rng), n, conf, what)


def nanmean_rows(values: np.ndarray) -> np.ndarray:
    """The mean of each row over its finite entries (NaN for a row without any)."""
    ok = np.isfinite(values)
    count = ok.sum(axis=1)
    total = np.where(ok, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
