"""The CP-SAT optimum equals an exhaustive search over every feasible plan sequence.

The search is independent of the model: it asks the real Engine which plans are feasible (every
token split and eviction subset is tried; PlanError = infeasible) and explores all sequences.
GPU time: Dijkstra over engine states (batch latencies are positive, so it is exact with
preemption cycles too). SLO and return depend on the time history, so they use a depth-first
search with memoisation, over at most the model's J batches.
"""
from __future__ import annotations

import copy
import functools
import heapq
import itertools

import numpy as np
import pytest

from llmsched_env import EngineConfig, LinearCostModel, run
from llmsched_env.engine import Engine
from llmsched_env.metrics import slo_met, summarize
from llmsched_env.plan import BatchPlan, PlanError
from baselines.optimal import OptimalScheduler, solve
from baselines.optimal_cost import min_batch_latency_s
from tests.conftest import spec

COST = LinearCostModel(base_s=0.01, per_token_s=1e-3, per_prefill_pair_s=2e-4, per_kv_s=3e-4, per_seq_s=5e-4)
LAM = 20.0
L_MIN = min_batch_latency_s(COST, 1)  # return objective: price per GPU-second, large enough to trade against SLOs here


def candidate_plans(eng: Engine, preemption: bool):
    """Every syntactically possible plan: each request gets 0..owed tokens, or (running ones)
    an eviction. The engine decides feasibility."""
    reqs = list(eng.running.values()) + list(eng.iter_waiting())
    options = []
    for r in reqs:
        owed = r.prefill_target - r.num_computed
        opts = [("t", n) for n in range(0, (owed if owed > 0 else 1) + 1)]
        if preemption and r.rid in eng.running:
            opts.append(("p", 0))
        options.append(opts)
    for combo in itertools.product(*options):
        tokens = {r.rid: n for r, (kind, n) in zip(reqs, combo) if kind == "t" and n > 0}
        preempt = {r.rid for r, (kind, _) in zip(reqs, combo) if kind == "p"}
        if tokens or preempt or eng.next_arrival_s is not None:
            yield BatchPlan(tokens, preempt)


def _clone(eng: Engine) -> Engine:
    memo = {id(eng.cost_model): eng.cost_model, id(eng.config): eng.config, id(eng._pending): eng._pending}
    return copy.deepcopy(eng, memo)


def successors(eng: Engine, preemption: bool):
    """(plan, step result, next engine) for every plan the engine accepts. A rejected plan leaves
    the engine unchanged (PlanError), so one scratch copy serves until a plan is accepted."""
    scratch = _clone(eng)
    for plan in candidate_plans(eng, preemption):
        try:
            res = scratch.step(plan)
        except PlanError:
            continue
        nxt, scratch = scratch, _clone(eng)
        if res.idle and not plan.preempt and nxt.now_s == eng.now_s:
            continue
        yield plan, res, nxt


def signature(eng: Engine, with_history: bool):
    reqs = tuple((r.rid, r.status, r.num_computed, r.prefill_target, r.num_generated,
                  tuple(r.token_times) if with_history else ())
                 for r in sorted(eng.requests.values(), key=lambda r: r.rid))
    timed = with_history or eng.next_arrival_s is not None
    return reqs, (eng.now_s if timed else None)


def min_gpu_time(eng: Engine, preemption: bool) -> float:
    """Dijkstra: the least busy seconds to finish every request."""
    tie = itertools.count()
    heap = [(0.0, next(tie), eng)]
    seen = set()
    while heap:
        cost, _, e = heapq.heappop(heap)
        if e.done:
            return cost * e.config.num_gpus
        key = signature(e, False)
        if key in seen:
            continue
        seen.add(key)
        for _, res, nxt in successors(e, preemption):
            if signature(nxt, False) not in seen:
                heapq.heappush(heap, (cost + res.latency_s, next(tie), nxt))
    raise AssertionError("no schedule finishes the workload")


def _is_lost(e: Engine, r) -> bool:
    """True when request r can no longer meet its SLO, whatever comes next (emissions happen
    after ``now``; unknown future gaps are >= 0 and the pending one is >= now - last emission)."""
    times = r.token_times
    if r.num_generated >= r.output_len:
        return not slo_met(r)
    if not times:
        return e.now_s >= r.arrival_s + r.ttft_slo_s
    if times[0] - r.arrival_s > r.ttft_slo_s:
        return True
    gaps = list(np.diff(times)) + [e.now_s - times[-1]]
    gaps += [0.0] * (r.output_len - 1 - len(gaps))
    return float(np.percentile(gaps, 99)) > r.tbt_slo_s


def _lost(e: Engine) -> int:
    return sum(_is_lost(e, r) for r in e.requests.values())


def history_signature(e: Engine):
    """The engine state plus the part of the time history that can still matter: token times of
    requests that may still meet their SLO (a lost or finished request only counts as met or not),
    and the clock while any such request or a future arrival remains."""
    items, timed = [], e.next_arrival_s is not None
    for r in sorted(e.requests.values(), key=lambda r: r.rid):
        base = (r.rid, r.status, r.num_computed, r.prefill_target, r.num_generated)
        if r.num_generated >= r.output_len:
            items.append((r.rid, "done", slo_met(r)))
        elif _is_lost(e, r):
            items.append(base + ("lost",))
        else:
            items.append(base + (tuple(r.token_times),))
            timed = True
    return tuple(items), (e.now_s if timed else None)


def best_history_objective(eng: Engine, preemption: bool, objective: str, max_batches: int) -> float:
    """Depth-first search over every schedule of <= max_batches batches: the most SLO-met
    requests ('slo') or the highest met - LAM x GPU-s ('return'). A child is skipped only when
    its upper bound (requests not yet lost) cannot beat a sibling already found, so every
    memoised value is exact."""
    memo: dict = {}
    n = eng.num_requests

    def go(e: Engine, left: int) -> float:
        if e.done:
            return summarize(e)["num_slo_met"]
        if left == 0:
            return float("-inf")
        key = (history_signature(e), left)
        if key in memo:
            return memo[key]
        best = float("-inf")
        ub_here = n - _lost(e)
        kids = sorted(successors(e, preemption), key=lambda t: -t[0].num_tokens)
        for plan, res, nxt in kids:
            cost = LAM * res.latency_s * e.config.num_gpus if objective == "return" else 0.0
            future = LAM * L_MIN * max((r.output_len - r.num_generated for r in nxt.requests.values()),
                                       default=0) if objective == "return" else 0.0
            if n - _lost(nxt) - cost - future <= best:
                continue
            v = go(nxt, left - (1 if plan.tokens else 0)) - cost
            best = max(best, v)
            if objective == "slo" and best >= ub_here:
                break
        memo[key] = best
        return best

    return go(eng, max_batches)


# the engine the CP-SAT model describes: a preempted request recomputes all of its KV
NoCache = functools.partial(EngineConfig, prefix_caching=False)

INSTANCES = {
    # two requests competing for 4 KV tokens (block 1): preemption can pay off
    "kv-tight": ([spec(0, prompt=3, output=2, ttft=0.035, tbt=0.0225), spec(1, prompt=2, output=3, ttft=0.0455, tbt=0.0225)],
                 NoCache(num_kv_blocks=5, block_size=1, max_num_batched_tokens=4, max_num_seqs=2)),
    # a late arrival, block size 2, one sequence slot at a time
    "arrival": ([spec(0, prompt=2, output=2, ttft=0.04, tbt=0.03), spec(1, arrival=0.012, prompt=3, output=2, ttft=0.025, tbt=0.03)],
                NoCache(num_kv_blocks=3, block_size=2, max_num_batched_tokens=3, max_num_seqs=1)),
    # three requests, roomy KV
    "three": ([spec(0, prompt=2, output=2, ttft=0.03, tbt=0.0125), spec(1, prompt=1, output=2, ttft=0.03, tbt=0.0125),
               spec(2, prompt=2, output=1, ttft=0.0165, tbt=0.0125)],
              NoCache(num_kv_blocks=4, block_size=2, max_num_batched_tokens=3, max_num_seqs=3)),
}
# Smaller ones for the history-dependent objectives (the search there cannot merge states by time)
SMALL = {
    "kv-tight": ([spec(0, prompt=2, output=2, ttft=0.0245, tbt=0.0135), spec(1, prompt=1, output=2, ttft=0.0245, tbt=0.0135)],
                 NoCache(num_kv_blocks=3, block_size=1, max_num_batched_tokens=2, max_num_seqs=2)),
    "arrival": ([spec(0, prompt=2, output=2, ttft=0.04, tbt=0.03), spec(1, arrival=0.012, prompt=1, output=2, ttft=0.0245, tbt=0.03)],
                NoCache(num_kv_blocks=2, block_size=2, max_num_batched_tokens=3, max_num_seqs=1)),
    "three": ([spec(0, prompt=1, output=2, ttft=0.03, tbt=0.0125), spec(1, prompt=1, output=2, ttft=0.0235, tbt=0.0125),
               spec(2, prompt=1, output=1, ttft=0.0125, tbt=0.0125)],
              NoCache(num_kv_blocks=2, block_size=2, max_num_batched_tokens=3, max_num_seqs=2)),
}


def _replay(specs, cfg, plans) -> dict:
    return run(Engine(specs, cfg, COST), OptimalScheduler(plans))


@pytest.mark.parametrize("name", sorted(INSTANCES))
@pytest.mark.parametrize("preemption", [True, False])
def test_gpu_time_matches_dijkstra(name, preemption):
    specs, cfg = INSTANCES[name]
    r = solve(specs, cfg, COST, "gpu_time", preemption, time_limit_s=30)
    assert r.status == "OPTIMAL" and r.j_rigorous
    truth = min_gpu_time(Engine(specs, cfg, COST), preemption)
    assert r.objective == pytest.approx(truth, abs=1e-9)
    s = _replay(specs, cfg, r.plans)
    assert s["gpu_busy_s"] == pytest.approx(truth, abs=1e-9)
    if not preemption:
        assert s["num_preemptions"] == 0


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("preemption", [True, False])
@pytest.mark.parametrize("objective", ["slo", "return"])
def test_history_objectives_match_search(name, preemption, objective):
    specs, cfg = SMALL[name]
    # J capped at 8 (model and search alike: the optimum over schedules of <= J batches)
    r = solve(specs, cfg, COST, objective, preemption, time_limit_s=30, lam=LAM, max_batches=8)
    assert r.status == "OPTIMAL"
    truth = best_history_objective(Engine(specs, cfg, COST), preemption, objective, r.num_batches)
    assert r.objective == pytest.approx(truth, abs=1e-9)
    s = _replay(specs, cfg, r.plans)
    replayed = s["num_slo_met"] - (LAM * s["gpu_busy_s"] if objective == "return" else 0.0)
    assert replayed == pytest.approx(truth, abs=1e-9)
