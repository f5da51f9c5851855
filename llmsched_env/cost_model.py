"""How long one engine step takes: a batch cost model of GPU inference.

A step's latency, in seconds, is

    overhead                                    fixed per step (scheduling, sampling, launches)
  + tokens(N)                                   token-level layers x L, embedding, TP all-reduce
  + L x [attn_prefill + attn_decode]            attention, per layer
  + lm_head(num_emit)                           logits for the sequences that emit a token

where N is the batch's token count and L the number of layers. ``tokens(N)`` comes from a Vidur
profile fitted by ``calibration.py`` (a monotone table: memory-bound floor at small N,
compute-bound slope at large N). Attention has no shipped profile, so it is a roofline of FLOP and
byte counts against the GPU's peaks with efficiency factors (``AttentionModel``), replaceable by
fitted coefficients. The InferMax constant sets are a second implementation of the same protocol.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Protocol, Sequence


class BatchShape(NamedTuple):
    """The composition of one batch, as the cost model needs it.

    Attributes (tokens unless said otherwise):
        num_tokens: all tokens processed, N = prefill_tokens + num_decodes.
        num_prefills: requests processing a prefill chunk.
        prefill_tokens: sum of chunk sizes c.
        prefill_c2: sum of c^2.
        prefill_ck: sum of c*k, k = the request's context already in KV before the step.
        prefill_ctx: sum of k over prefills.
        num_decodes: requests decoding one token.
        decode_kv: sum of (k + 1) over decodes: KV tokens each decode attends to.
        num_emit: requests emitting a token this step (decodes and completed prefills).
    """

    num_tokens: int
    num_prefills: int
    prefill_tokens: int
    prefill_c2: int
    prefill_ck: int
    prefill_ctx: int
    num_decodes: int
    decode_kv: int
    num_emit: int

    @classmethod
    def from_requests(cls, prefills: Sequence[tuple[int, int]] = (), decode_contexts: Sequence[int] = (),
                      completed_prefills: int = 0) -> "BatchShape":
        """Build from ``prefills`` = [(chunk c, context k)] and ``decode_contexts`` = [k]."""
        c_sum = sum(c for c, _ in prefills)
        return cls(c_sum + len(decode_contexts), len(prefills), c_sum, sum(c * c for c, _ in prefills),
                   sum(c * k for c, k in prefills), sum(k for _, k in prefills), len(decode_contexts),
                   sum(k + 1 for k in decode_contexts), len(decode_contexts) + completed_prefills)


class CostModel(Protocol):
    """Anything that times a batch."""

    def batch_time(self, shape: BatchShape) -> float:
        """Latency of one step with this batch, seconds."""

    def describe(self) -> dict:
        """Coefficients and provenance, JSON-serialisable."""


class PiecewiseLinear:
    """A monotone piecewise-linear function of tokens, extrapolated linearly past the last knot.

    Args:
        knots: increasing token counts.
        values: values at the knots (seconds), non-decreasing.
        tail_slope: seconds per token beyond the last knot (>= 0).
    """

    __slots__ = ("knots", "values", "tail_slope", "_memo")

    def __init__(self, knots: Sequence[float], values: Sequence[float], tail_slope: float):
        if len(knots) != len(values) or not knots:
            raise ValueError("PiecewiseLinear needs as many values as knots, at least one")
        if any(b <= a for a, b in zip(knots, knots[1:])):
            raise ValueError("PiecewiseLinear knots must increase")
        if any(b < a for a, b in zip(values, values[1:])) or tail_slope < 0:
            raise ValueError("PiecewiseLinear must be non-decreasing")
        self.knots = [float(k) for k in knots]
        self.values = [float(v) for v in values]
        self.tail_slope = float(tail_slope)
        self._memo: dict[int, float] = {}

    def __call__(self, n: float) -> float:
        v = self._memo.get(n)
        if v is not None:
            return v
        ks, vs = self.knots, self.values
        if n <= ks[0]:
            v = vs[0]
        elif n >= ks[-1]:
            v = vs[-1] + (n - ks[-1]) * self.tail_slope
        else:
            i = bisect.bisect_right(ks, n)
            x0, x1, y0, y1 = ks[i - 1], ks[i], vs[i - 1], vs[i]
            v = y0 + (y1 - y0) * (n - x0) / (x1 - x0)
        if len(self._memo) < 1 << 16:
            self._memo[n] = v
        return v

    def to_dict(self) -> dict:
        return {"knots": self.knots, "values_s": self.values, "tail_slope_s_per_token": self.tail_slope}


@dataclass
class AttentionModel:
    """Per-layer attention time on one GPU, seconds.

    Prefill of a chunk of c tokens over k cached: FLOPs = 4 x H x d x (c*k + c(c+1)/2) (QK^T and PV,
    causal), bytes = KV of (k + c) tokens read once. Decode: FLOPs = 4 x H x d x (k+1), bytes = KV of
    (k + 1) tokens. Time = max(FLOPs / (peak x flops_eff), bytes / (bandwidth x bw_eff)) summed
    over the batch, plus ``per_seq_s`` per sequence (kernel bookkeeping). H and KV heads are per GPU
    (divided by TP).

    Default efficiencies (documented guesses, to be replaced by ``llmsched calibrate --measurements``):
    prefill reaches 45% of peak FLOP/s (FlashAttention-2/3 forward on Hopper/Ampere sustains
    35-70% depending on head dim and chunk size), decode reaches 70% of HBM bandwidth (paged
    decode kernels at long context).
    """

    num_heads: float  # per GPU
    num_kv_heads: float  # per GPU
    head_dim: int
    dtype_bytes: int
    peak_flops: float
    mem_bandwidth: float
    prefill_flops_eff: float = 0.45
    prefill_bw_eff: float = 0.7
    decode_bw_eff: float = 0.7
    decode_flops_eff: float = 0.3
    per_seq_s: float = 0.0
    source: str = "analytic roofline (FLOP and byte counts, efficiency factors)"

    def __post_init__(self) -> None:
        d = self.head_dim
        self._f = 4.0 * self.num_heads * d  # FLOPs per (query token x key token)
        self._b = 2.0 * self.num_kv_heads * d * self.dtype_bytes  # KV bytes per cached token
        self._pf = self._f / (self.peak_flops * self.prefill_flops_eff)
        self._pb = self._b / (self.mem_bandwidth * self.prefill_bw_eff)
        self._df = self._f / (self.peak_flops * self.decode_flops_eff)
        self._db = self._b / (self.mem_bandwidth * self.decode_bw_eff)

    def prefill_s(self, s: BatchShape) -> float:
        if not s.num_prefills:
            return 0.0
        pairs = s.prefill_ck + 0.5 * (s.prefill_c2 + s.prefill_tokens)
        kv_tokens = s.prefill_ctx + s.prefill_tokens
        return max(self._pf * pairs, self._pb * kv_tokens) + self.per_seq_s * s.num_prefills

    def decode_s(self, s: BatchShape) -> float:
        if not s.num_decodes:
            return 0.0
        return max(self._df, self._db) * s.decode_kv + self.per_seq_s * s.num_decodes

    def to_dict(self) -> dict:
        return asdict(self)


class AllReduceModel:
    """Tensor-parallel all-reduce time from a Vidur network profile, seconds per call.

    ``sizes`` in bytes, ``times`` in seconds (medians); interpolated log-log, extrapolated at
    the profile's largest bandwidth.
    """

    def __init__(self, sizes: Sequence[float], times: Sequence[float], num_workers: int, topology: str):
        pts = sorted(zip(sizes, times))
        self.sizes = [math.log(p[0]) for p in pts]
        self.times = [math.log(p[1]) for p in pts]
        self.num_workers = num_workers
        self.topology = topology
        self._big_bw = pts[-1][0] / pts[-1][1]
        self._max = pts[-1][0]
        self._memo: dict[float, float] = {}

    def __call__(self, size_bytes: float) -> float:
        v = self._memo.get(size_bytes)
        if v is None:
            if size_bytes >= self._max:
                v = size_bytes / self._big_bw
            else:
                ls = math.log(max(size_bytes, 1.0))
                if ls <= self.sizes[0]:
                    v = math.exp(self.times[0])
                else:
                    i = bisect.bisect_right(self.sizes, ls)
                    x0, x1, y0, y1 = self.sizes[i - 1], self.sizes[i], self.times[i - 1], self.times[i]
                    v = math.exp(y0 + (y1 - y0) * (ls - x0) / (x1 - x0))
            self._memo[size_bytes] = v
        return v

    def to_dict(self) -> dict:
        return {"topology": self.topology, "num_workers": self.num_workers,
                "points": len(self.sizes)}


@dataclass
class CalibratedCostModel:
    """The default cost model (see the module docstring for the formula).

    Attributes:
        num_layers: transformer layers L.
        layer_tokens: per-layer token-level time (projections, MLP, norms, rope, adds) vs N, seconds.
        emb_tokens: embedding time vs N, seconds (once per step).
        attention: per-layer attention model.
        allreduce: TP all-reduce model (None at TP 1); two all-reduces of N x hidden activations
            per layer.
        hidden_size, vocab_size, dtype_bytes, tp: shape facts for the all-reduce and LM head.
        peak_flops, mem_bandwidth: GPU peaks for the LM-head roofline.
        lm_head_eff: efficiency of the LM-head GEMM (both limits).
        overhead_s: fixed per-step time, seconds.
        provenance: where each part came from.
    """

    num_layers: int
    layer_tokens: PiecewiseLinear
    emb_tokens: PiecewiseLinear
    attention: AttentionModel
    allreduce: AllReduceModel | None
    hidden_size: int
    vocab_size: int
    dtype_bytes: int
    tp: int
    peak_flops: float
    mem_bandwidth: float
    lm_head_eff: float = 0.65
    overhead_s: float = 1.0e-3
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._tok_memo: dict[int, float] = {}
        self._lm_memo: dict[int, float] = {}
        w = self.hidden_size * self.vocab_size / self.tp
        self._lm_bytes_s = w * self.dtype_bytes / (self.mem_bandwidth * self.lm_head_eff)
        self._lm_flops_s = 2.0 * w / (self.peak_flops * self.lm_head_eff)

    def token_level_s(self, n: int) -> float:
        """Token-level layers x L + embedding + all-reduce for a batch of n tokens, seconds."""
        v = self._tok_memo.get(n)
        if v is None:
            v = self.num_layers * self.layer_tokens(n) + self.emb_tokens(n)
            if self.allreduce is not None:
                v += 2 * self.num_layers * self.allreduce(n * self.hidden_size * self.dtype_bytes)
            self._tok_memo[n] = v
        return v

    def lm_head_s(self, num_emit: int) -> float:
        v = self._lm_memo.get(num_emit)
        if v is None:
            v = 0.0 if num_emit == 0 else max(self._lm_bytes_s, self._lm_flops_s * num_emit)
            self._lm_memo[num_emit] = v
        return v

    def batch_time(self, s: BatchShape) -> float:
        att = self.attention
        return (self.overhead_s + self.token_level_s(s.num_tokens) + self.lm_head_s(s.num_emit)
                + self.num_layers * (att.prefill_s(s) + att.decode_s(s)))

    def describe(self) -> dict:
        return {
            "kind": "calibrated",
            "num_layers": self.num_layers,
            "tp": self.tp,
            "overhead_s": self.overhead_s,
            "layer_tokens": self.layer_tokens.to_dict(),
            "emb_tokens": self.emb_tokens.to_dict(),
            "attention": self.attention.to_dict(),
            "allreduce": None if self.allreduce is None else self.allreduce.to_dict(),
            "lm_head_eff": self.lm_head_eff,
            "provenance": self.provenance,
        }


@dataclass(frozen=True)
class InferMaxCostModel:
    """InferMax's published batch-time model (Kim et al.), per layer, in milliseconds:

        prefill = (a_p x (sum c^2 + 2 sum c*k) + b_p) x f_p + s_p x #prefills + m_p x sum k
        decode  = (a_d x sum KV + b_d) x f_d + s_d x #decodes
        other   = a_o x N + b_o
        step    = L x (prefill + decode + other)

    f_p = ``multi_factor`` when the batch has more than one prefill, else 1 (f_d likewise for
    decodes). A term is 0 when the batch has no request of its kind. KV counts a decode's context
    including its new token (k + 1); k is a prefill's context already in KV.

    Constants and the form follow InferMax's code (Vidur fork, ``sklearn_execution_time_predictor``:
    the attention batching overhead of 10% applies only to GQA models, so ``multi_factor`` is 1.1 for
    the 70B set and 1.0 for the MHA 7B set). TP all-reduce and CPU overhead are 0 there, as in the
    published runs.
    """

    name: str
    num_layers: int
    a_prefill_ms: float
    b_prefill_ms: float
    a_decode_ms: float
    b_decode_ms: float
    a_other_ms: float
    b_other_ms: float
    per_prefill_ms: float = 0.0
    per_decode_ms: float = 0.0
    prefill_kv_ms: float = 0.0
    multi_factor: float = 1.1
    source: str = ""

    def batch_time(self, s: BatchShape) -> float:
        ms = self.a_other_ms * s.num_tokens + self.b_other_ms
        if s.num_prefills:
            p = self.a_prefill_ms * (s.prefill_c2 + 2 * s.prefill_ck) + self.b_prefill_ms
            if s.num_prefills > 1:
                p *= self.multi_factor
            ms += p + self.per_prefill_ms * s.num_prefills + self.prefill_kv_ms * s.prefill_ctx
        if s.num_decodes:
            d = self.a_decode_ms * s.decode_kv + self.b_decode_ms
            if s.num_decodes > 1:
                d *= self.multi_factor
            ms += d + self.per_decode_ms * s.num_decodes
        return self.num_layers * ms * 1e-3

    def describe(self) -> dict:
        d = asdict(self)
        d["kind"] = "infermax"
        return d


@dataclass(frozen=True)
class LinearCostModel:
    """A cost model linear in the batch's composition, seconds:

        base_s + per_token_s x N + per_prefill_pair_s x (sum c*k + sum c(c+1)/2)
               + per_kv_s x decode KV + per_seq_s x (#prefills + #decodes)

    For tests and tiny exact instances (the CP-SAT model represents it without approximation);
    not calibrated to any GPU.
    """

    base_s: float = 0.01
    per_token_s: float = 1e-4
    per_prefill_pair_s: float = 0.0
    per_kv_s: float = 0.0
    per_seq_s: float = 0.0

    def batch_time(self, s: BatchShape) -> float:
        pairs = s.prefill_ck + 0.5 * (s.prefill_c2 + s.prefill_tokens)
        return (self.base_s + self.per_token_s * s.num_tokens + self.per_prefill_pair_s * pairs
                + self.per_kv_s * s.decode_kv + self.per_seq_s * (s.num_prefills + s.num_decodes))

    def describe(self) -> dict:
        d = asdict(self)
        d["kind"] = "linear"
        return d
