"""Fitting the cost model's token-level part to Vidur-format operator profiles.

A profile row times every token-level operator of one transformer layer (milliseconds) at one
``num_tokens`` and tensor-parallel degree. We take, per distinct ``num_tokens``, the median over
repetitions of the summed operator medians, and fit a monotone piecewise-linear function
(isotonic regression, then linear interpolation between the fitted knots). A monotone table
rather than a smooth curve because GEMM kernel selection makes the measured curve step-like:
a two-parameter roofline ``max(floor, a + b n)`` misses the held-out points by 2-5%, the
isotonic table by 1.6-2.8% (both reported by ``llmsched calibrate``). The roofline coefficients
(memory-bound floor, compute-bound slope) are fitted too; the slope extrapolates past the grid.
"""
from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import isotonic_regression, least_squares

from .cost_model import PiecewiseLinear

EMB_OP = "emb"


class ProfileError(ValueError):
    """A malformed or unusable profile file (named with row and column)."""


@dataclass
class OperatorProfile:
    """Per-``num_tokens`` medians from one profile at one TP degree.

    Attributes:
        path: source file.
        tp: tensor-parallel degree.
        num_tokens: distinct token counts, sorted.
        layer_ms: per-layer token-level time (all operators except the embedding), ms.
        emb_ms: embedding time, ms.
        shape: the profile's shape columns (n_head, n_embd, ...).
    """

    path: str
    tp: int
    num_tokens: np.ndarray
    layer_ms: np.ndarray
    emb_ms: np.ndarray
    shape: dict

    @property
    def total_ms(self) -> np.ndarray:
        return self.layer_ms + self.emb_ms


def load_operator_profile(path: str | Path, tp: int = 1) -> OperatorProfile:
    """Read a Vidur ``mlp.csv`` and reduce it to per-``num_tokens`` medians at degree ``tp``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"profile not found: {path}; expected a Vidur-format mlp.csv "
                                "(see ../shared/data/README.md)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        ops = [c[len("time_stats."):-len(".median")] for c in cols
               if c.startswith("time_stats.") and c.endswith(".median")]
        missing = [c for c in ("num_tokens", "num_tensor_parallel_workers") if c not in cols]
        if missing or not ops:
            raise ProfileError(f"{path}: not a Vidur operator profile: missing column(s) "
                               f"{missing or ['time_stats.<op>.median']}")
        layer = defaultdict(list)
        emb = defaultdict(list)
        tps = set()
        shape = {}
        for line, row in enumerate(reader, start=2):
            try:
                row_tp = int(float(row["num_tensor_parallel_workers"]))
                n = int(float(row["num_tokens"]))
            except (TypeError, ValueError):
                raise ProfileError(f"{path}, row {line}: num_tokens/num_tensor_parallel_workers "
                                   f"not numeric ({row.get('num_tokens')!r}, "
                                   f"{row.get('num_tensor_parallel_workers')!r})") from None
            tps.add(row_tp)
            if row_tp != tp:
                continue
            total = 0.0
            e = 0.0
            for op in ops:
                raw = row[f"time_stats.{op}.median"]
                try:
                    v = float(raw)
                except (TypeError, ValueError):
                    raise ProfileError(f"{path}, row {line}, column time_stats.{op}.median: "
                                       f"{raw!r} is not a number") from None
                if not math.isfinite(v) or v < 0:
                    raise ProfileError(f"{path}, row {line}, column time_stats.{op}.median: "
                                       f"{v} is not a non-negative time")
                if op == EMB_OP:
                    e = v
                else:
                    total += v
            if n < 1:
                raise ProfileError(f"{path}, row {line}, column num_tokens: {n} < 1")
            layer[n].append(total)
            emb[n].append(e)
            if not shape:
                shape = {k: row[k] for k in ("n_head", "n_kv_head", "n_embd", "n_expanded_embd",
                                             "vocab_size", "use_gated_mlp") if k in row}
    if not layer:
        raise ProfileError(f"{path}: no rows with num_tensor_parallel_workers={tp}; "
                           f"available: {sorted(tps)}")
    ns = np.array(sorted(layer))
    return OperatorProfile(str(path), tp, ns,
                           np.array([statistics.median(layer[n]) for n in ns]),
                           np.array([statistics.median(emb[n]) for n in ns]), shape)


def fit_monotone(x: np.ndarray, y: np.ndarray, tail_points: int = 8) -> PiecewiseLinear:
    """Isotonic least-squares fit of y(x), as a PiecewiseLinear (units kept). The tail slope is
    the least-squares slope of the last ``tail_points`` fitted values (clamped at >= 0)."""
    fitted = isotonic_regression(y, increasing=True).x
    k = min(tail_points, len(x))
    slope = float(np.polyfit(x[-k:], fitted[-k:], 1)[0]) if k >= 2 else 0.0
    return PiecewiseLinear(list(x), list(fitted), max(slope, 0.0))


def fit_roofline(x: np.ndarray, y: np.ndarray) -> dict:
    """Fit ``y = max(floor, a + b x)`` minimising relative error. Returns floor, a, b, knee."""
    small = y[x <= np.percentile(x, 10)]
    p0 = [float(np.median(small)), 0.0, float((y[-1] - y[0]) / max(1, x[-1] - x[0]))]

    def resid(p):
        return (np.maximum(p[0], p[1] + p[2] * x) - y) / y

    r = least_squares(resid, p0, bounds=([0, -np.inf, 0], [np.inf, np.inf, np.inf]))
    floor, a, b = (float(v) for v in r.x)
    return {"floor": floor, "intercept": a, "slope_per_token": b,
            "knee_tokens": (floor - a) / b if b > 0 else float("inf")}


def calibrate_profile(path: str | Path, tp: int = 1, holdout_every: int = 4) -> dict:
    """Fit the token-level model and report held-out error.

    Every ``holdout_every``-th distinct ``num_tokens`` (in sorted order: indices K-1, 2K-1, ...)
    is held out; the fit uses the rest. Errors are on the profile's per-row total (all operators,
    embedding included), in percent.
    """
    if holdout_every < 2:
        raise ValueError(f"--holdout-every must be >= 2 (got {holdout_every}); 1 would hold out everything")
    prof = load_operator_profile(path, tp)
    idx = np.arange(len(prof.num_tokens))
    held = idx % holdout_every == holdout_every - 1
    fit = ~held
    if fit.sum() < 2 or held.sum() < 1:
        raise ProfileError(f"{path}: only {len(idx)} distinct num_tokens at TP {tp}; need at least "
                           f"{holdout_every} to fit and hold out")
    x = prof.num_tokens.astype(float)
    layer = fit_monotone(x[fit], prof.layer_ms[fit])
    emb = fit_monotone(x[fit], prof.emb_ms[fit])
    truth = prof.total_ms[held]
    pred = np.array([layer(n) + emb(n) for n in x[held]])
    ape = np.abs(pred - truth) / truth * 100
    roof = fit_roofline(x[fit], prof.total_ms[fit])
    roof_pred = np.maximum(roof["floor"], roof["intercept"] + roof["slope_per_token"] * x[held])
    roof_ape = np.abs(roof_pred - truth) / truth * 100
    return {
        "profile": str(path),
        "tp": tp,
        "holdout_every": holdout_every,
        "n_fit": int(fit.sum()),
        "n_heldout": int(held.sum()),
        "mape_heldout": float(ape.mean()),
        "max_ape_heldout": float(ape.max()),
        "median_ape_heldout": float(np.median(ape)),
        "model": "isotonic piecewise-linear per-layer time (ms) + embedding (ms)",
        "coefficients": {
            "layer_ms": layer.to_dict(),
            "emb_ms": emb.to_dict(),
            "roofline_total_ms": roof,
        },
        "roofline_mape_heldout": float(roof_ape.mean()),
        "shape": prof.shape,
        "_models": (layer, emb),
    }


def load_allreduce_profile(path: str | Path, num_workers: int) -> tuple[list[float], list[float]]:
    """(sizes in bytes, isotonic-fitted median times in seconds) of a Vidur ``all_reduce.csv`` for ``num_workers``
    GPUs all in one node (rows whose ``devices_per_node`` equals ``num_workers``, where that column
    exists): tensor parallelism never spans nodes, and cross-node rows are an order slower."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"network profile not found: {path}")
    by = defaultdict(list)
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                if int(float(row["num_workers"])) != num_workers:
                    continue
                if row.get("devices_per_node") and int(float(row["devices_per_node"])) != num_workers:
                    continue
                by[float(row["size"])].append(float(row["time_stats.all_reduce.median"]) * 1e-3)
            except (KeyError, TypeError, ValueError) as e:
                raise ProfileError(f"{path}, row {line}: bad all-reduce row ({e})") from None
    if not by:
        raise ProfileError(f"{path}: no all-reduce rows for num_workers={num_workers}")
    sizes = sorted(by)
    # Medians wobble with size at small messages; a monotone fit keeps step time monotone in tokens.
    times = isotonic_regression([statistics.median(by[s]) for s in sizes], increasing=True).x
    return sizes, [max(float(t), 1e-7) for t in times]
