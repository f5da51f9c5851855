"""Statistics of the evaluation: t-intervals over seeds and goodput from an attainment sweep."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats as _st

CONFIDENCE = 0.95
CI_METHOD = ("95% Student-t interval over seeds: mean +/- t(0.975, n-1) x s / sqrt(n), s the sample "
             "standard deviation (n = number of seeds; no interval for n = 1)")


@dataclass(frozen=True)
class Interval:
    """Mean over seeds with its 95% t-interval. ``half`` is NaN when n < 2 (no interval)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def to_dict(self) -> dict:
        return {**asdict(self), "low": self.low, "high": self.high}


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and half-width of the two-sided Student-t confidence interval of the mean.

    NaN values are left out (n counts the rest); no values gives NaN mean, n = 0. Identical
    values give a zero-width interval.
    """
    a = np.asarray([v for v in values if v is not None and v == v], dtype=float)
    n = int(a.size)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = float(a.mean())
    if n < 2:
        return Interval(mean, math.nan, 1)
    sd = float(a.std(ddof=1))
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, half, n)


@dataclass(frozen=True)
class Goodput:
    """Goodput of one attainment sweep.

    Attributes:
        rate: the highest rate at which attainment is still >= the threshold, in the sweep's
            unit (req/s, or trace rate scale), linearly interpolated between the last passing
            and the first failing swept rate; 0 when the lowest rate already fails.
        censored: "below" (the lowest swept rate fails: goodput < rates[0]), "above" (every rate
            passes: goodput >= rates[-1]) or None.
    """

    rate: float
    censored: Optional[str]


def format_interval(d: dict, fmt: str = "{:.2f}") -> str:
    """``mean [low, high]`` of an ``Interval.to_dict()``."""
    return f"{fmt.format(d['mean'])} [{fmt.format(d['low'])}, {fmt.format(d['high'])}]"


def goodput(rates: Sequence[float], attainment: Sequence[float], threshold: float = 0.9) -> Goodput:
    """Goodput from attainment measured at ascending ``rates`` (the first crossing below
    ``threshold``, linearly interpolated; see :class:`Goodput`)."""
    r = [float(x) for x in rates]
    a = [float(x) for x in attainment]
    if len(r) != len(a) or not r:
        raise ValueError(f"need one attainment per rate (got {len(r)} rates, {len(a)} values)")
    if any(r[i] >= r[i + 1] for i in range(len(r) - 1)):
        raise ValueError(f"rates must be strictly ascending: {r}")
    if not a[0] >= threshold:
        return Goodput(0.0, "below")
    for i in range(1, len(r)):
        if not a[i] >= threshold:
            frac = (a[i - 1] - threshold) / (a[i - 1] - a[i]) if a[i] == a[i] else 0.0
            return Goodput(r[i - 1] + frac * (r[i] - r[i - 1]), None)
    return Goodput(r[-1], "above")
