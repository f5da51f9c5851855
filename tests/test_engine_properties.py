"""Property tests: random workloads driven by random plans (feasible or not)."""
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmsched_env import BatchPlan, PlanError, SchedulerStalled, make_scheduler
from llmsched_env.request import WAITING
from tests.conftest import make_engine, spec


def snapshot(eng):
    reqs = tuple((r.rid, r.status, r.num_computed, r.prefill_target, r.num_generated, r.num_blocks,
                  r.num_preemptions, len(r.token_times)) for r in eng.requests.values())
    return (eng.now_s, eng.used_blocks, eng.num_steps, eng.busy_s, eng.recomputed_tokens, reqs,
            tuple(eng.running), tuple(r.rid for r in eng.iter_waiting()))


def random_plan(eng, rng: random.Random) -> BatchPlan:
    """Any plan, often infeasible: random preemptions, random members, random chunk sizes."""
    preempt = {rid for rid in eng.running if rng.random() < 0.08}
    tokens = {}
    for req in list(eng.running.values()) + list(eng.iter_waiting()):
        if req.rid in preempt or rng.random() < 0.3:
            continue
        owed = req.prefill_target - req.num_computed
        n = rng.randint(1, owed) if owed > 0 else 1
        if rng.random() < 0.05:
            n += rng.choice([-1, 1])  # sometimes an illegal count
        tokens[req.rid] = n
    return BatchPlan(tokens, preempt)


workloads = st.lists(
    st.tuples(st.floats(0, 2.0), st.integers(1, 24), st.integers(1, 12)), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads, st.integers(0, 2**32 - 1), st.integers(8, 20), st.sampled_from([1, 2, 4]),
       st.integers(8, 48), st.integers(1, 6), st.booleans())
def test_random_plans_keep_invariants(wl, seed, kv_blocks, block, budget, max_seqs, prefix_caching):
    specs = [spec(i, arrival=t, prompt=p, output=o) for i, (t, p, o) in enumerate(wl)]
    need = max(-(-(p + o - 1) // block) for _, p, o in wl)
    eng = make_engine(specs, num_kv_blocks=max(kv_blocks, need), block_size=block, budget=max(budget, 1),
                      max_seqs=max_seqs, prefix_caching=prefix_caching)
    rng = random.Random(seed)
    fallback = make_scheduler("fcfs")
    last_now = eng.now_s
    for _ in range(5000):
        if eng.done:
            break
        plan = random_plan(eng, rng)
        before = snapshot(eng)
        try:
            res = eng.step(plan)
        except (PlanError, SchedulerStalled):
            assert snapshot(eng) == before, "a rejected plan changed engine state"
            res = eng.step(fallback.schedule(eng))
        assert res.end_s >= res.start_s >= last_now - 1e-12
        last_now = eng.now_s
        assert eng.used_blocks <= eng.config.num_kv_blocks
        assert eng.used_blocks == sum(r.num_blocks for r in eng.running.values())
        assert all(r.num_blocks == -(-r.num_computed // block) for r in eng.running.values())
        for r in eng.requests.values():
            if r.status == WAITING:  # nothing computed, or (prefix caching) its cached whole blocks
                assert r.num_computed == 0 or (prefix_caching and r.num_computed % block == 0
                                               and r.num_computed < r.prefill_target)
        assert len(eng.running) <= max_seqs
    assert eng.done
    for r in eng.finished:
        assert r.num_generated == r.output_len == len(r.token_times)
        assert r.token_times == sorted(r.token_times) and r.token_times[0] >= r.arrival_s
    # Every request ends with prompt + output - 1 tokens of KV computed; preemption adds the waste,
    # less what a returning request found in the prefix cache.
    assert eng.processed_tokens == sum(p + o - 1 for _, p, o in wl) + eng.recomputed_tokens - eng.prefix_hit_tokens
    assert prefix_caching or eng.prefix_hit_tokens == 0
