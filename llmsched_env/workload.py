"""Workloads: arrival times, prompt/output lengths and SLOs for a stream of requests.

Arrivals: Poisson at ``rate`` req/s, Gamma inter-arrivals with coefficient of variation ``cv``
(cv > 1 is bursty; cv = 1 is Poisson), or a trace's own timestamps divided by ``rate_scale``.
Lengths: from a trace CSV (``num_prefill_tokens``, ``num_decode_tokens``), fixed, uniform or
lognormal. Output caps (``max_tokens``, what a practical scheduler knows of a request's length,
as opposed to its true output length): a fixed cap, else the trace's ``max_tokens`` column when it
has one, else none (the engine then uses the model's context left after the prompt). SLOs: by class (e.g. a strict and a relaxed tier), assigned at random by weight.
Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``: same config, same
requests.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .data import trace_path
from .request import RequestSpec

PROMPT_COL, OUTPUT_COL, TIME_COL, MAX_TOKENS_COL = "num_prefill_tokens", "num_decode_tokens", "arrived_at", "max_tokens"


class TraceError(ValueError):
    """A malformed trace (the message names the file, row and column)."""


@dataclass(frozen=True)
class Trace:
    """A validated request trace. ``arrival_s`` is None when the trace has no timestamps,
    ``max_tokens`` when it has no ``max_tokens`` column."""

    path: str
    prompt_len: np.ndarray
    output_len: np.ndarray
    arrival_s: Optional[np.ndarray]
    max_tokens: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.prompt_len)


def _positive_int(raw: str, path: Path, line: int, col: str) -> int:
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise TraceError(f"{path}, row {line}, column {col!r}: {raw!r} is not a number") from None
    if not math.isfinite(v) or v != int(v) or v < 1:
        raise TraceError(f"{path}, row {line}, column {col!r}: {raw!r} is not a positive integer "
                         "token count")
    return int(v)


def load_trace(path: str | os.PathLike, need_timestamps: bool = False) -> Trace:
    """Read and validate a trace CSV. Row numbers in errors are file lines (header = row 1).

    Raises:
        FileNotFoundError: no such file.
        TraceError: a missing column, a non-numeric / non-positive length, a negative,
            non-numeric or decreasing timestamp, a ``max_tokens`` below the row's output length.
    """
    p = trace_path(str(path))
    st = p.stat()
    return _load_trace_cached(str(p.resolve()), st.st_mtime_ns, need_timestamps)


@lru_cache(maxsize=16)
def _load_trace_cached(path: str, mtime_ns: int, need_timestamps: bool) -> Trace:
    p = Path(path)
    with p.open(newline="", encoding="utf-8-sig") as f:  # a BOM must not hide the first column
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        required = [PROMPT_COL, OUTPUT_COL] + ([TIME_COL] if need_timestamps else [])
        missing = [c for c in required if c not in cols]
        if missing:
            raise TraceError(f"{p}, row 1 (header): missing column(s) {missing}; found {cols}")
        has_t = TIME_COL in cols
        has_cap = MAX_TOKENS_COL in cols
        prompts, outputs, times, caps = [], [], [], []
        last_t = -math.inf
        for line, row in enumerate(reader, start=2):
            prompts.append(_positive_int(row[PROMPT_COL], p, line, PROMPT_COL))
            outputs.append(_positive_int(row[OUTPUT_COL], p, line, OUTPUT_COL))
            if has_cap:
                cap = _positive_int(row[MAX_TOKENS_COL], p, line, MAX_TOKENS_COL)
                if cap < outputs[-1]:
                    raise TraceError(f"{p}, row {line}, column {MAX_TOKENS_COL!r}: {cap} < the row's "
                                     f"{OUTPUT_COL} {outputs[-1]}; a cap must allow the true output length")
                caps.append(cap)
            if has_t:
                raw = row[TIME_COL]
                try:
                    t = float(raw)
                except (TypeError, ValueError):
                    raise TraceError(f"{p}, row {line}, column {TIME_COL!r}: {raw!r} is not a number") from None
                if not math.isfinite(t) or t < 0:
                    raise TraceError(f"{p}, row {line}, column {TIME_COL!r}: {raw!r} is not a time >= 0")
                if t < last_t:
                    raise TraceError(f"{p}, row {line}, column {TIME_COL!r}: timestamps are not sorted "
                                     f"({t} after {last_t})")
                last_t = t
                times.append(t)
    if not prompts:
        raise TraceError(f"{p}: no requests (only a header)")
    return Trace(str(p), np.array(prompts, dtype=np.int64), np.array(outputs, dtype=np.int64),
                 np.array(times) if has_t else None, np.array(caps, dtype=np.int64) if has_cap else None)


@dataclass(frozen=True)
class SLOClass:
    """An SLO tier.

    Attributes:
        name: tier name.
        ttft_s: time-to-first-token target, seconds.
        tbt_s: time-between-tokens target for the request's P99 gap, seconds.
        weight: relative share of requests in this tier.
        priority: scheduling priority (lower = more important).
    """

    name: str
    ttft_s: float
    tbt_s: float
    weight: float = 1.0
    priority: int = 0

    def __post_init__(self) -> None:
        errs = [f"{k}={getattr(self, k)!r} must be a number > 0 (seconds; inf = no target)"
                for k in ("ttft_s", "tbt_s")
                if not isinstance(getattr(self, k), (int, float)) or not getattr(self, k) > 0]
        if not isinstance(self.weight, (int, float)) or not 0 <= self.weight < math.inf:
            errs.append(f"weight={self.weight!r} must be a finite number >= 0")
        if errs:
            raise ValueError(f"SLO tier {self.name!r}: " + "; ".join(errs))


DEFAULT_SLO = SLOClass("default", ttft_s=2.0, tbt_s=0.1)
RELAXED = SLOClass("relaxed", ttft_s=5.0, tbt_s=0.2)
STRICT = SLOClass("strict", ttft_s=0.5, tbt_s=0.05)


@dataclass(frozen=True)
class WorkloadConfig:
    """Everything that defines a workload (see the module docstring).

    Attributes:
        num_requests: requests to generate (for a trace window: rows taken; None = whole trace).
        arrival: "poisson", "gamma" or "trace".
        rate: mean arrival rate for poisson/gamma, requests/s.
        cv: coefficient of variation of Gamma inter-arrival times.
        rate_scale: trace arrivals are divided by this (2.0 = twice the trace's rate).
        lengths: "trace", "fixed", "uniform" or "lognormal".
        trace: path or name of a trace CSV (for trace lengths or arrivals).
        window_start: first trace row of the window; None = a random start drawn from the seed.
        prompt_len, output_len: fixed lengths, or means for lognormal, tokens.
        prompt_range, output_range: inclusive bounds for uniform lengths, tokens.
        sigma: lognormal shape parameter.
        slo_classes: SLO tiers.
        oversize: what to do with a request longer than ``max_total_len``: "error", "drop" or
            "clip" (clip the prompt so prompt + output fits).
        max_total_len: context limit for ``oversize`` (None = no limit here; the engine checks).
        predictor_error: relative std of a noisy output-length predictor (None = no predictor).
        max_tokens: every request's output cap, tokens (a server stops a request there, so a
            longer true output is cut to it); None = the trace's ``max_tokens`` column when it has
            one, else no cap here (the engine uses the model's context left after the prompt).
        conversation_turns: multi-turn conversations (``assign_conversations``): mean turns per
            conversation (geometric, >= 1); None = independent requests.
        think_time_s: mean time between a conversation's turns (exponential), seconds.
        seed: seed of every random choice.
    """

    num_requests: Optional[int] = 200
    arrival: str = "poisson"
    rate: float = 2.0
    cv: float = 1.0
    rate_scale: float = 1.0
    lengths: str = "trace"
    trace: Optional[str] = "splitwise_conv"
    window_start: Optional[int] = None
    prompt_len: int = 512
    output_len: int = 128
    prompt_range: tuple[int, int] = (64, 2048)
    output_range: tuple[int, int] = (16, 512)
    sigma: float = 0.8
    slo_classes: tuple[SLOClass, ...] = (DEFAULT_SLO,)
    oversize: str = "error"
    max_total_len: Optional[int] = None
    predictor_error: Optional[float] = None
    max_tokens: Optional[int] = None
    conversation_turns: Optional[float] = None
    think_time_s: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        errs = []
        if self.num_requests is not None and self.num_requests < 1:
            errs.append(f"num_requests={self.num_requests} must be >= 1")
        if self.arrival not in ("poisson", "gamma", "trace"):
            errs.append(f"arrival={self.arrival!r} must be poisson, gamma or trace")
        if self.arrival in ("poisson", "gamma") and not self.rate > 0:
            errs.append(f"rate={self.rate} must be > 0 requests/s")
        if self.arrival == "gamma" and not self.cv > 0:
            errs.append(f"cv={self.cv} must be > 0")
        if not self.rate_scale > 0:
            errs.append(f"rate_scale={self.rate_scale} must be > 0")
        if self.lengths not in ("trace", "fixed", "uniform", "lognormal"):
            errs.append(f"lengths={self.lengths!r} must be trace, fixed, uniform or lognormal")
        if (self.lengths == "trace" or self.arrival == "trace") and not self.trace:
            errs.append("a trace is needed for trace lengths or trace arrivals")
        if self.prompt_len < 1 or self.output_len < 1:
            errs.append("prompt_len and output_len must be >= 1")
        if not self.slo_classes or any(c.weight <= 0 for c in self.slo_classes):
            errs.append("slo_classes must be non-empty with positive weights")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            errs.append(f"max_tokens={self.max_tokens!r} must be a positive number of tokens or None")
        if self.oversize not in ("error", "drop", "clip"):
            errs.append(f"oversize={self.oversize!r} must be error, drop or clip")
        if self.conversation_turns is not None and not self.conversation_turns >= 1:
            errs.append(f"conversation_turns={self.conversation_turns} must be >= 1 (mean turns per conversation)")
        if not self.think_time_s >= 0:
            errs.append(f"think_time_s={self.think_time_s} must be >= 0 seconds")
        if errs:
            raise ValueError("invalid WorkloadConfig: " + "; ".join(errs))

    def with_(self, **kw) -> "WorkloadConfig":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)


def build_workload(cfg: WorkloadConfig) -> list[RequestSpec]:
    """Generate the request specs a config describes (deterministic in ``cfg.seed``)."""
    rng = np.random.default_rng(cfg.seed)
    trace = None
    if cfg.lengths == "trace" or cfg.arrival == "trace":
        trace = load_trace(cfg.trace, need_timestamps=cfg.arrival == "trace")
    n = cfg.num_requests
    if n is None:
        if trace is None:
            raise ValueError("num_requests=None (whole trace) needs a trace")
        n = len(trace)

    # Which trace rows: a contiguous window (keeps the trace's burst structure).
    idx = None
    if trace is not None:
        if n > len(trace):
            raise ValueError(f"num_requests={n} > {len(trace)} rows in {trace.path}")
        start = cfg.window_start
        if start is None:
            start = int(rng.integers(0, len(trace) - n + 1))
        if not 0 <= start <= len(trace) - n:
            raise ValueError(f"window_start={start} out of range 0..{len(trace) - n} for {n} requests")
        idx = np.arange(start, start + n)

    if cfg.arrival == "trace":
        t = trace.arrival_s[idx]
        arrivals = (t - t[0]) / cfg.rate_scale
    elif cfg.arrival == "poisson":
        arrivals = np.cumsum(rng.exponential(1.0 / cfg.rate, n))
        arrivals -= arrivals[0]
    else:
        shape = 1.0 / cfg.cv ** 2
        arrivals = np.cumsum(rng.gamma(shape, 1.0 / (cfg.rate * shape), n))
        arrivals -= arrivals[0]

    caps = None
    if cfg.lengths == "trace":
        prompts = trace.prompt_len[idx].copy()
        outputs = trace.output_len[idx].copy()
        if trace.max_tokens is not None:
            caps = trace.max_tokens[idx]
    elif cfg.lengths == "fixed":
        prompts = np.full(n, cfg.prompt_len)
        outputs = np.full(n, cfg.output_len)
    elif cfg.lengths == "uniform":
        prompts = rng.integers(cfg.prompt_range[0], cfg.prompt_range[1] + 1, n)
        outputs = rng.integers(cfg.output_range[0], cfg.output_range[1] + 1, n)
    else:
        mu_p = math.log(cfg.prompt_len) - cfg.sigma ** 2 / 2
        mu_o = math.log(cfg.output_len) - cfg.sigma ** 2 / 2
        prompts = np.maximum(1, np.round(rng.lognormal(mu_p, cfg.sigma, n))).astype(np.int64)
        outputs = np.maximum(1, np.round(rng.lognormal(mu_o, cfg.sigma, n))).astype(np.int64)

    weights = np.array([c.weight for c in cfg.slo_classes], dtype=float)
    classes = rng.choice(len(cfg.slo_classes), size=n, p=weights / weights.sum())
    noise = rng.lognormal(0.0, cfg.predictor_error, n) if cfg.predictor_error else None

    specs = []
    for i in range(n):
        p, o = int(prompts[i]), int(outputs[i])
        cap = cfg.max_tokens if cfg.max_tokens is not None else (None if caps is None else int(caps[i]))
        if cap is not None and o > cap:
            o = cap
        if cfg.max_total_len is not None and p + o > cfg.max_total_len:
            if cfg.oversize == "drop":
                continue
            if cfg.oversize == "clip":
                p = max(1, cfg.max_total_len - o)
                o = min(o, cfg.max_total_len - p)
                if cap is not None and p + cap > cfg.max_total_len:
                    cap = max(o, cfg.max_total_len - p)
            else:
                raise ValueError(f"request {i} (trace row {int(idx[i]) + 2 if idx is not None else '-'}): "
                                 f"prompt {p} + output {o} > max_total_len {cfg.max_total_len}; "
                                 "use oversize='drop' or 'clip' (CLI --oversize)")
        c = cfg.slo_classes[classes[i]]
        pred = None if noise is None else max(1, int(round(o * noise[i])))
        specs.append(RequestSpec(rid=i, arrival_s=float(arrivals[i]), prompt_len=p, output_len=o,
                                 ttft_slo_s=c.ttft_s, tbt_slo_s=c.tbt_s, slo_class=c.name,
                                 priority=c.priority, predicted_output_len=pred, max_tokens=cap))
    if not specs:
        raise ValueError(f"every one of the {n} requests is longer than max_total_len {cfg.max_total_len} "
                         "tokens and oversize='drop' left nothing to serve; use oversize='clip', a larger "
                         "KV cache or a preset with a longer context")
    if cfg.conversation_turns is not None:
        # its own generator: the other draws (and so every single-turn workload) stay as they were
        specs = assign_conversations(specs, cfg.conversation_turns, cfg.think_time_s,
                                     np.random.default_rng([cfg.seed, 1]))
    return specs


def assign_conversations(specs: Sequence[RequestSpec], turns: float, think_time_s: float,
                         rng: np.random.Generator) -> list[RequestSpec]:
    """Group requests into multi-turn conversations, keeping every arrival time and length.

    The traces at hand carry no conversation ids (splitwise_conv has arrival times and lengths
    only), so conversations are synthesised over them: in arrival order, a request becomes the
    next turn of the conversation whose next turn has been due longest (each turn makes the next
    one due an exponential think time, mean ``think_time_s``, after its arrival), else it opens
    a new conversation of Geometric(1 / ``turns``) turns. A turn's ``prefix_group`` is its
    conversation and its ``prefix_len`` the previous turn's prompt + output (its history),
    capped at its own prompt (a client that trims history); first turns share nothing. Because
    only timing decides who follows whom, a higher rate means more concurrent users, not faster
    ones; the load (lengths, arrivals) is the workload's own.
    """
    import heapq
    due: list = []           # (due time, conversation)
    left: dict = {}          # conversation -> turns still to come
    history: dict = {}       # conversation -> previous turn's prompt + output, tokens
    out = []
    p = 1.0 / turns
    for s in sorted(specs, key=lambda x: (x.arrival_s, x.rid)):
        if due and due[0][0] <= s.arrival_s:
            _, c = heapq.heappop(due)
            prefix = min(s.prompt_len, history[c])
        else:
            c = len(left)
            left[c] = int(rng.geometric(p)) if p < 1 else 1
            prefix = 0
        history[c] = s.prompt_len + s.output_len
        left[c] -= 1
        if left[c] > 0:
            heapq.heappush(due, (s.arrival_s + float(rng.exponential(think_time_s)) if think_time_s > 0
                                 else s.arrival_s, c))
        out.append(replace(s, prefix_group=c, prefix_len=prefix))
    return out


def scale_slo(classes: Sequence[SLOClass], factor: float) -> tuple[SLOClass, ...]:
    """The same tiers with every target multiplied by ``factor``."""
    return tuple(replace(c, ttft_s=c.ttft_s * factor, tbt_s=c.tbt_s * factor) for c in classes)
