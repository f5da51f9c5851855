"""Serving metrics, per request and aggregate.

Definitions (times in seconds):
  * TTFT: first token's emission time - arrival.
  * TBT gaps: differences between a request's consecutive token emission times.
  * TPOT: (last token - first token) / (output tokens - 1), per request with >= 2 tokens.
  * E2E: last token - arrival.
  * SLO met: the request finished, TTFT <= its TTFT target, and the 99th percentile of its TBT gaps
    (numpy's linear interpolation; no gaps = met) <= its TBT target. SLO attainment = requests met /
    all requests of the workload (unfinished ones count as missed).
  * GPU busy seconds = sum of step latencies x GPUs per replica (InferMax's GPU-cost measure).
  * Recomputed tokens: KV tokens thrown away by preemption (recompute waste); under swap
    preemption, swap-outs, blocks copied to and from host memory, and the copy time (in busy s);
    with prefix caching, the tokens admitted with their KV found cached (not recomputed).
  * KV utilisation: used blocks / capacity, averaged over busy time; peak in blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .request import Request

SUMMARY_KEYS = ("num_requests", "num_finished", "slo_attainment", "ttft_p50_s", "ttft_p99_s", "tbt_p99_s",
                "gpu_busy_s", "num_preemptions", "num_steps", "wall_s", "kv_capacity_blocks",
                "max_kv_blocks_used")


@dataclass(frozen=True)
class RequestMetrics:
    rid: int
    slo_class: str
    ttft_s: float
    tbt_p99_s: float
    tpot_s: float
    e2e_s: float
    num_preemptions: int
    slo_met: bool


def request_metrics(req: Request) -> RequestMetrics:
    """Metrics of one request (NaN where undefined, e.g. TTFT of an unfinished request)."""
    return _request_metrics(req, None)


def _request_metrics(req: Request, gaps_out: list | None) -> RequestMetrics:
    times = req.token_times
    nan = float("nan")
    if not times:
        return RequestMetrics(req.rid, req.spec.slo_class, nan, nan, nan, nan, req.num_preemptions, False)
    ttft = times[0] - req.arrival_s
    n = len(times) - 1
    if n:
        gaps = [b - a for a, b in zip(times, times[1:])]
        if gaps_out is not None:
            gaps_out.extend(gaps)
        tbt99 = percentile_linear(sorted(gaps), 0.99)
        tpot = (times[-1] - times[0]) / n
    else:
        tbt99 = 0.0
        tpot = nan
    done = req.num_generated >= req.output_len
    e2e = times[-1] - req.arrival_s if done else nan
    met = done and ttft <= req.ttft_slo_s and tbt99 <= req.tbt_slo_s
    return RequestMetrics(req.rid, req.spec.slo_class, ttft, tbt99, tpot, e2e, req.num_preemptions, met)


def percentile_linear(ordered: list, q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values with numpy's default linear interpolation, bit
    for bit (``np.percentile(values, 100 * q)``), without numpy's per-call cost: one request's
    P99 gap is computed for every request of every episode."""
    v = q * (len(ordered) - 1)
    lo = int(v)
    t = v - lo
    a = ordered[lo]
    b = ordered[lo + 1] if lo + 1 < len(ordered) else a
    d = b - a
    return a + d * t if t < 0.5 else b - d * (1 - t)


def slo_met(req: Request) -> bool:
    return request_metrics(req).slo_met


def _pct(values, q) -> float:
    a = np.asarray([v for v in values if v == v])
    return float(np.percentile(a, q)) if a.size else float("nan")


def summarize(engines, wall_s: float = 0.0) -> dict:
    """Aggregate metrics of an engine's run (finished or not), or of several engines' runs pooled
    (a cluster's replicas): percentiles and attainment over every request of every engine,
    counters and GPU-seconds summed, the makespan the latest engine clock, KV capacity and peak
    the sums of the replicas' (the peak is the sum of each replica's own peak). Keys: see
    SUMMARY_KEYS and more."""
    engines = list(engines) if isinstance(engines, (list, tuple)) else [engines]
    reqs = [r for e in engines for r in e.requests.values()]
    gap_list: list = []
    per = [_request_metrics(r, gap_list) for r in reqs]
    all_gaps = np.array(gap_list)
    tbt_pct = np.percentile(all_gaps, [50, 90, 99]) if all_gaps.size else [float("nan")] * 3
    n_total = sum(e.num_requests for e in engines)
    n_finished = sum(len(e.finished) for e in engines)
    met = sum(m.slo_met for m in per)
    out_tokens = sum(r.num_generated for r in reqs)
    makespan = max(e.now_s for e in engines)
    busy = sum(e.busy_s for e in engines)
    steps = sum(e.num_steps for e in engines)
    recomputed = sum(e.recomputed_tokens for e in engines)
    processed = sum(e.processed_tokens for e in engines)
    capacity = sum(e.config.num_kv_blocks for e in engines)
    busy_capacity = sum(e.busy_s * e.config.num_kv_blocks for e in engines)
    by_class: dict[str, list[bool]] = {}
    for m in per:
        by_class.setdefault(m.slo_class, []).append(m.slo_met)
    s = {
        "num_requests": n_total,
        "num_finished": n_finished,
        "slo_attainment": met / n_total if n_total else float("nan"),
        "slo_attainment_by_class": {k: sum(v) / len(v) for k, v in sorted(by_class.items())},
        "num_slo_met": met,
        "ttft_p50_s": _pct([m.ttft_s for m in per], 50),
        "ttft_p90_s": _pct([m.ttft_s for m in per], 90),
        "ttft_p99_s": _pct([m.ttft_s for m in per], 99),
        "tbt_p50_s": float(tbt_pct[0]),
        "tbt_p90_s": float(tbt_pct[1]),
        "tbt_p99_s": float(tbt_pct[2]),
        "tpot_p50_s": _pct([m.tpot_s for m in per], 50),
        "tpot_p99_s": _pct([m.tpot_s for m in per], 99),
        "e2e_p50_s": _pct([m.e2e_s for m in per], 50),
        "e2e_p90_s": _pct([m.e2e_s for m in per], 90),
        "e2e_p99_s": _pct([m.e2e_s for m in per], 99),
        "busy_s": busy,
        "gpu_busy_s": sum(e.busy_s * e.config.num_gpus for e in engines),
        "num_gpus": sum(e.config.num_gpus for e in engines),
        "num_preemptions": sum(e.num_preemptions for e in engines),
        "recomputed_tokens": recomputed,
        "processed_tokens": processed,
        "recompute_fraction": recomputed / max(1, processed),
        "num_swap_outs": sum(e.num_swap_outs for e in engines),
        "swapped_blocks": sum(e.swapped_blocks for e in engines),
        "transfer_s": sum(e.transfer_s for e in engines),
        "prefix_hit_tokens": sum(e.prefix_hit_tokens for e in engines),
        "output_tokens": out_tokens,
        "makespan_s": makespan,
        "throughput_tok_s": out_tokens / makespan if makespan > 0 else float("nan"),
        "request_throughput_s": n_finished / makespan if makespan > 0 else float("nan"),
        "num_steps": steps,
        "wall_s": wall_s,
        "steps_per_s": steps / wall_s if wall_s > 0 else float("nan"),
        "kv_capacity_blocks": capacity,
        "max_kv_blocks_used": sum(e.max_used_blocks for e in engines),
        "kv_util_mean": sum(e.kv_block_seconds for e in engines) / busy_capacity if busy else 0.0,
    }
    return s
