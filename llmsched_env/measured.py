"""A cost model fitted to real step measurements: ``llmsched calibrate --measurements DIR``.

``llmsched profile`` (``profiling.py``) times each batch composition with two layer counts l.
The fitted model has the terms of ``CalibratedCostModel``, all from the measurements:

    T(l) = fixed + l x per_layer
    fixed     = overhead_s + emb_tokens(N) + lm_head(num_emit)          (once per step)
    per_layer = layer_tokens(N) + attention.prefill_s + attention.decode_s
    attention.prefill_s = prefill_pair_s x sum(c*k + c(c+1)/2) + prefill_kv_s x sum(k + c)
                          + prefill_seq_s x #prefills
    attention.decode_s  = decode_kv_s x sum(k + 1) + decode_seq_s x #decodes

and ``batch_time`` = T(model layers). ``layer_tokens`` and ``lm_head`` are monotone piecewise-linear
tables (knots at up to 12 / 6 token counts of the data, log-spaced; slope past the last knot =
the last segment's), ``emb_tokens`` is linear. Attention is a sum of a compute term (query x key
pairs, causal) and a memory term (KV tokens read), where the analytic ``AttentionModel`` takes the
max of the two; the comparison printed by ``calibrate`` converts both to effective FLOP/s and
bytes/s.

The fit: non-negative least squares on relative error (every coefficient >= 0, which also makes
the tables non-decreasing), over both layer counts of every fitted composition at once.

Held-out split: in grid order, every K-th composition of each kind (prefill-only, decode-only,
mixed; indices K-1, 2K-1, ...; K = ``--holdout-every``, default 4) is held out of the fit. The
errors reported are on held-out compositions, per kind, against the full-model time that the
profiler extrapolated from its two layer counts, and against the time measured at the deepest
layer count (no extrapolation).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import nnls

from .cost_model import BatchShape, PiecewiseLinear
from .hardware import ModelShape

# The measurement format (what llmsched_env/profiling.py writes and this module reads).
SHAPE_FIELDS = list(BatchShape._fields)
CSV_COLUMNS = (["kind"] + SHAPE_FIELDS +
               ["seconds", "layers_timed", "seconds_fewer", "layers_fewer", "seconds_full_model",
                "model_layers", "repetitions", "device", "composition"])
MEASUREMENTS_CSV = "measurements.csv"
MANIFEST_JSON = "manifest.json"


def write_measurements(out: Path | str, rows: Sequence[dict]) -> Path:
    """Write rows (dicts with ``CSV_COLUMNS``) to ``out/measurements.csv``; floats at full precision."""
    path = Path(out) / MEASUREMENTS_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return path


PRESET_FORMAT = "llmsched-measured-preset/1"
KINDS = ("prefill", "decode", "mixed")
MAX_TOKEN_KNOTS = 12
MAX_EMIT_KNOTS = 6


class MeasurementError(ValueError):
    """A missing, malformed or unusable measurements folder or measured preset."""


def read_json(path: Path):
    """The JSON document in ``path``; a MeasurementError naming the file if it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise MeasurementError(f"{path}: not valid JSON ({e})") from None


# ---------------------------------------------------------------------------------------------
# The model


def _pairs(s: BatchShape) -> float:
    return s.prefill_ck + 0.5 * (s.prefill_c2 + s.prefill_tokens)


@dataclass
class MeasuredAttention:
    """Per-layer attention time, seconds, from measured coefficients (see the module docstring).

    Attributes:
        prefill_pair_s: per causal (query token x key token) pair of a prefill chunk.
        prefill_kv_s: per KV token a prefill chunk reads (its context plus its chunk).
        prefill_seq_s: per prefill request.
        decode_kv_s: per KV token a decode attends to (k + 1).
        decode_seq_s: per decode request.
    """

    prefill_pair_s: float
    prefill_kv_s: float
    prefill_seq_s: float
    decode_kv_s: float
    decode_seq_s: float
    source: str = "fitted to measurements"

    def prefill_s(self, s: BatchShape) -> float:
        if not s.num_prefills:
            return 0.0
        return (self.prefill_pair_s * _pairs(s) + self.prefill_kv_s * (s.prefill_ctx + s.prefill_tokens)
                + self.prefill_seq_s * s.num_prefills)

    def decode_s(self, s: BatchShape) -> float:
        if not s.num_decodes:
            return 0.0
        return self.decode_kv_s * s.decode_kv + self.decode_seq_s * s.num_decodes

    def to_dict(self) -> dict:
        return asdict(self)


def _pl_from_dict(d: dict) -> PiecewiseLinear:
    return PiecewiseLinear(d["knots"], d["values_s"], d["tail_slope_s_per_token"])


@dataclass
class MeasuredCostModel:
    """The cost model fitted by ``calibrate --measurements`` (CostModel protocol; seconds).

    Attributes:
        num_layers: transformer layers L of the model.
        layer_tokens: per-layer token-level time vs batch tokens N (projections, MLP, norms, rope).
        emb_tokens: embedding time vs N (once per step).
        lm_head: final norm + LM head + argmax time vs rows emitting a token (0 when none).
        attention: per-layer attention.
        overhead_s: fixed per-step time (launches, Python), seconds.
        provenance: where the numbers come from.
    """

    num_layers: int
    layer_tokens: PiecewiseLinear
    emb_tokens: PiecewiseLinear
    lm_head: PiecewiseLinear
    attention: MeasuredAttention
    overhead_s: float
    provenance: dict = field(default_factory=dict)

    def token_level_s(self, n: int) -> float:
        """Token-level layers x L + embedding, seconds."""
        return self.num_layers * self.layer_tokens(n) + self.emb_tokens(n)

    def lm_head_s(self, num_emit: int) -> float:
        return self.lm_head(num_emit) if num_emit > 0 else 0.0

    def fixed_s(self, s: BatchShape) -> float:
        """The part of a step that does not grow with the layer count, seconds."""
        return self.overhead_s + self.emb_tokens(s.num_tokens) + self.lm_head_s(s.num_emit)

    def per_layer_s(self, s: BatchShape) -> float:
        """One layer's time for this batch, seconds."""
        att = self.attention
        return self.layer_tokens(s.num_tokens) + att.prefill_s(s) + att.decode_s(s)

    def time_at(self, s: BatchShape, layers: int) -> float:
        """Step time of the model truncated to ``layers`` layers, seconds."""
        return self.fixed_s(s) + layers * self.per_layer_s(s)

    def batch_time(self, s: BatchShape) -> float:
        return self.time_at(s, self.num_layers)

    def terms(self, s: BatchShape) -> dict:
        """The step time split as in ``CalibratedCostModel``, seconds."""
        att, L = self.attention, self.num_layers
        return {"overhead_s": self.overhead_s, "token_level_s": self.token_level_s(s.num_tokens),
                "lm_head_s": self.lm_head_s(s.num_emit), "attn_prefill_s": L * att.prefill_s(s),
                "attn_decode_s": L * att.decode_s(s)}

    def describe(self) -> dict:
        return {"kind": "measured", "num_layers": self.num_layers, "tp": 1, "overhead_s": self.overhead_s,
                "layer_tokens": self.layer_tokens.to_dict(), "emb_tokens": self.emb_tokens.to_dict(),
                "lm_head": self.lm_head.to_dict(), "attention": self.attention.to_dict(),
                "provenance": self.provenance}

    @classmethod
    def from_dict(cls, d: dict) -> "MeasuredCostModel":
        """Inverse of ``describe()``."""
        att = {k: v for k, v in d["attention"].items()}
        return cls(num_layers=int(d["num_layers"]), layer_tokens=_pl_from_dict(d["layer_tokens"]),
                   emb_tokens=_pl_from_dict(d["emb_tokens"]), lm_head=_pl_from_dict(d["lm_head"]),
                   attention=MeasuredAttention(**att), overhead_s=float(d["overhead_s"]),
                   provenance=dict(d.get("provenance", {})))


# ---------------------------------------------------------------------------------------------
# Reading measurements


@dataclass
class Measurements:
    """One profiler run: rows of (kind, BatchShape, seconds at two layer counts, full-model seconds)."""

    folder: Path
    manifest: dict
    kinds: list[str]
    shapes: list[BatchShape]
    seconds: np.ndarray
    layers_timed: np.ndarray
    seconds_fewer: np.ndarray
    layers_fewer: np.ndarray
    seconds_full: np.ndarray
    labels: list[str]

    @property
    def model_layers(self) -> int:
        return int(self.manifest["model_layers"])


def load_measurements(folder: str | Path) -> Measurements:
    """Read and check ``measurements.csv`` and ``manifest.json`` written by ``llmsched profile``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"measurements folder not found: {folder}; run `llmsched profile "
                                f"--model-shape ... --out {folder}` first")
    csv_path, man_path = folder / MEASUREMENTS_CSV, folder / MANIFEST_JSON
    for p in (csv_path, man_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: {folder} is not a folder written by `llmsched profile`")
    manifest = read_json(man_path)
    for k in ("shape", "model_layers", "device"):
        if k not in manifest:
            raise MeasurementError(f"{man_path}: missing key {k!r}")
    num_cols = SHAPE_FIELDS + ["seconds", "layers_timed", "seconds_fewer", "layers_fewer", "seconds_full_model"]
    kinds, shapes, vals, labels = [], [], [], []
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ["kind"] + num_cols if c not in (reader.fieldnames or [])]
        if missing:
            raise MeasurementError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected the columns "
                                   f"{', '.join(CSV_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            rec = {}
            for c in num_cols:
                raw = row[c]
                try:
                    v = float(raw)
                except (TypeError, ValueError):
                    raise MeasurementError(f"{csv_path}, row {line}, column {c}: {raw!r} is not a number") from None
                if not math.isfinite(v) or (v < 0 and c != "seconds_full_model"):
                    raise MeasurementError(f"{csv_path}, row {line}, column {c}: {v} must be finite and >= 0")
                rec[c] = v
            if row["kind"] not in KINDS:
                raise MeasurementError(f"{csv_path}, row {line}, column kind: {row['kind']!r} is not one of {KINDS}")
            s = BatchShape(*(int(rec[c]) for c in SHAPE_FIELDS))
            if s.num_tokens != s.prefill_tokens + s.num_decodes or s.num_tokens < 1:
                raise MeasurementError(f"{csv_path}, row {line}: num_tokens {s.num_tokens} must be >= 1 and equal "
                                       f"prefill_tokens + num_decodes ({s.prefill_tokens} + {s.num_decodes})")
            if rec["seconds"] <= 0 or rec["seconds_fewer"] <= 0:
                raise MeasurementError(f"{csv_path}, row {line}: seconds must be > 0")
            if rec["layers_timed"] <= rec["layers_fewer"]:
                raise MeasurementError(f"{csv_path}, row {line}: layers_timed must exceed layers_fewer")
            kinds.append(row["kind"])
            shapes.append(s)
            vals.append([rec[c] for c in num_cols[len(SHAPE_FIELDS):]])
            labels.append(row.get("composition") or "")
    if not shapes:
        raise MeasurementError(f"{csv_path}: no measurement rows")
    v = np.array(vals)
    return Measurements(folder, manifest, kinds, shapes, v[:, 0], v[:, 1].astype(int), v[:, 2],
                        v[:, 3].astype(int), v[:, 4], labels)


def heldout_mask(kinds: Sequence[str], every: int) -> np.ndarray:
    """True for held-out rows: the K-th, 2K-th, ... composition of each kind, in file order."""
    if every < 2:
        raise ValueError(f"--holdout-every must be >= 2 (got {every}); 1 would hold out everything")
    seen = {k: 0 for k in KINDS}
    out = []
    for k in kinds:
        seen[k] += 1
        out.append(seen[k] % every == 0)
    return np.array(out)


# ---------------------------------------------------------------------------------------------
# Fitting


def _knots(values: np.ndarray, k_max: int) -> np.ndarray:
    u = np.unique(values[values > 0])
    if len(u) <= k_max:
        return u.astype(float)
    targets = np.geomspace(u[0], u[-1], k_max)
    return np.unique([u[np.argmin(np.abs(np.log(u) - np.log(t)))] for t in targets]).astype(float)


def _ramps(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Columns of a monotone piecewise-linear basis: ramp j rises with slope 1 between knots j-1 and j
    (the last one without end)."""
    cols = []
    for j in range(1, len(knots)):
        hi = np.inf if j == len(knots) - 1 else knots[j] - knots[j - 1]
        cols.append(np.clip(x - knots[j - 1], 0, hi))
    return np.array(cols).T.reshape(len(x), len(cols))


def _table(knots: np.ndarray, base: float, slopes: np.ndarray) -> PiecewiseLinear:
    vals = [base]
    for j in range(1, len(knots)):
        vals.append(vals[-1] + slopes[j - 1] * (knots[j] - knots[j - 1]))
    tail = float(slopes[-1]) if len(slopes) else 0.0
    return PiecewiseLinear(list(knots), vals, tail)


ATTN_TERMS = ("prefill_pair_s", "prefill_kv_s", "prefill_seq_s", "decode_kv_s", "decode_seq_s")


def _design(shapes: Sequence[BatchShape], layers: np.ndarray, tok_knots: np.ndarray, emit_knots: np.ndarray
            ) -> tuple[np.ndarray, list[str]]:
    n = np.array([s.num_tokens for s in shapes], dtype=float)
    e = np.array([s.num_emit for s in shapes], dtype=float)
    has_e = (e > 0).astype(float)
    att = np.array([[_pairs(s) if s.num_prefills else 0.0, s.prefill_ctx + s.prefill_tokens, s.num_prefills,
                     s.decode_kv, s.num_decodes] for s in shapes], dtype=float)
    L = layers.astype(float)[:, None]
    fixed = np.column_stack([np.ones_like(n), n, has_e, _ramps(e, emit_knots) * has_e[:, None]])
    per_layer = np.column_stack([np.ones_like(n), _ramps(n, tok_knots), att]) * L
    names = (["overhead_s", "emb_per_token_s", "lm_head_base_s"]
             + [f"lm_head_slope{j}" for j in range(1, len(emit_knots))]
             + ["layer_base_s"] + [f"layer_slope{j}" for j in range(1, len(tok_knots))] + list(ATTN_TERMS))
    return np.column_stack([fixed, per_layer]), names


def fit_measured(m: Measurements, fit: np.ndarray) -> MeasuredCostModel:
    """Fit every coefficient on the rows where ``fit`` is True (both layer counts of each)."""
    idx = np.flatnonzero(fit)
    shapes = [m.shapes[i] for i in idx]
    n = np.array([s.num_tokens for s in shapes], dtype=float)
    e = np.array([s.num_emit for s in shapes], dtype=float)
    tok_knots = _knots(n, MAX_TOKEN_KNOTS)
    emit_knots = _knots(e, MAX_EMIT_KNOTS) if (e > 0).any() else np.array([1.0])
    if len(emit_knots) == 0:
        emit_knots = np.array([1.0])
    layers = np.concatenate([m.layers_fewer[idx], m.layers_timed[idx]])
    y = np.concatenate([m.seconds_fewer[idx], m.seconds[idx]])
    A, names = _design(shapes + shapes, layers, tok_knots, emit_knots)
    if len(y) < A.shape[1]:
        raise MeasurementError(f"{m.folder}: {len(idx)} compositions to fit ({len(y)} timings) but the model has "
                               f"{A.shape[1]} coefficients; profile a larger grid (drop --quick) or lower "
                               "--holdout-every")
    Aw = A / y[:, None]  # relative error
    scale = np.abs(Aw).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(Aw / scale, np.ones_like(y), maxiter=50 * A.shape[1])
    c = {k: float(v) for k, v in zip(names, coef / scale)}
    ne = len(emit_knots) - 1
    nt = len(tok_knots) - 1
    lm = _table(emit_knots, c["lm_head_base_s"], np.array([c[f"lm_head_slope{j}"] for j in range(1, ne + 1)]))
    layer = _table(tok_knots, c["layer_base_s"], np.array([c[f"layer_slope{j}"] for j in range(1, nt + 1)]))
    man = m.manifest
    return MeasuredCostModel(
        num_layers=m.model_layers, layer_tokens=layer,
        emb_tokens=PiecewiseLinear([0.0], [0.0], c["emb_per_token_s"]), lm_head=lm,
        attention=MeasuredAttention(*(c[t] for t in ATTN_TERMS),
                                    source=f"fitted to measurements on {man.get('device_name', man['device'])}"),
        overhead_s=c["overhead_s"],
        provenance={"measurements": str(m.folder), "device": man.get("device_name", man["device"]),
                    "dtype": man.get("dtype"), "torch": man.get("torch_version"),
                    "layers_timed": [int(m.layers_fewer[0]), int(m.layers_timed[0])],
                    "fit": "NNLS on relative error, both layer counts"})


def _ape_stats(pred: np.ndarray, truth: np.ndarray) -> dict:
    if len(truth) == 0:
        return {"n": 0, "median_ape_pct": None, "mean_ape_pct": None, "max_ape_pct": None}
    ape = np.abs(pred - truth) / truth * 100
    return {"n": int(len(truth)), "median_ape_pct": float(np.median(ape)), "mean_ape_pct": float(ape.mean()),
            "max_ape_pct": float(ape.max())}


def error_table(model: MeasuredCostModel, m: Measurements, rows: np.ndarray) -> dict:
    """APE (%) per kind and overall on ``rows``: vs the full-model time (``full_model``) and vs the
    time measured at the deepest layer count (``timed_layers``)."""
    out = {}
    for target in ("full_model", "timed_layers"):
        per = {}
        for kind in KINDS + ("all",):
            sel = [i for i in np.flatnonzero(rows) if kind == "all" or m.kinds[i] == kind]
            if target == "full_model":
                # A non-positive extrapolated time means the two layer counts were timed within
                # noise of each other: no reference to score against.
                sel = [i for i in sel if m.seconds_full[i] > 0]
                pred = np.array([model.batch_time(m.shapes[i]) for i in sel])
                truth = m.seconds_full[sel]
            else:
                pred = np.array([model.time_at(m.shapes[i], int(m.layers_timed[i])) for i in sel])
                truth = m.seconds[sel]
            per[kind] = _ape_stats(pred, truth)
        out[target] = per
    return out


def synthetic_measurements(model: MeasuredCostModel, comps, out: str | Path, shape: ModelShape,
                           layers: int = 4, fewer: int = 2, device: str = "cpu", noise: float = 0.0,
                           seed: int = 0) -> Path:
    """Write a measurements folder whose times come from ``model`` (times relative noise ~ N(0,
    ``noise``)), for testing the fit: ``comps`` = ``profiling.Composition`` list."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in comps:
        s = c.shape
        t = lambda l: model.time_at(s, l) * (1 + noise * rng.standard_normal())
        t_hi, t_lo = t(layers), t(fewer)
        per = (t_hi - t_lo) / (layers - fewer)
        rows.append({"kind": c.kind, **s._asdict(), "seconds": t_hi, "layers_timed": layers, "seconds_fewer": t_lo,
                     "layers_fewer": fewer, "seconds_full_model": t_lo + (model.num_layers - fewer) * per,
                     "model_layers": model.num_layers, "repetitions": 1, "device": device, "composition": c.label})
    out = Path(out)
    write_measurements(out, rows)
    manifest = {"tool": "synthetic", "model_key": "synthetic", "shape": shape.to_dict(), "device": device,
                "device_name": "synthetic", "device_memory_bytes": 64e9, "dtype": "fp32",
                "layers_timed": layers, "layers_fewer": fewer, "model_layers": model.num_layers}
    (out / MANIFEST_JSON).write_text(json.dumps(manifest, indent=2) + "\n")
    return out
