"""Each router's defining behaviour on a hand-built cluster state."""
from __future__ import annotations

import numpy as np
import pytest

from llmsched_env.cluster import Cluster, ReplicaSpec
from llmsched_env.cost_model import LinearCostModel
from llmsched_env.engine import EngineConfig
from llmsched_env.router import RoutePlan, available_routers, heuristic_routers, make_router

from .conftest import spec

COST = LinearCostModel(base_s=0.01, per_token_s=1e-4)


def config(seqs=8, blocks=400, budget=4096):
    return EngineConfig(num_kv_blocks=blocks, block_size=4, max_num_batched_tokens=budget, max_num_seqs=seqs)


def placed(configs, placements, probe, scheduler="fcfs"):
    """A cluster whose requests ``placements`` ([(spec, replica)]) were routed by hand, advanced to
    the arrival of ``probe`` (returned pending, not routed)."""
    c = Cluster([ReplicaSpec(cfg, COST, scheduler) for cfg in configs])
    c.reset([s for s, _ in placements] + [probe])
    for _, i in placements:
        c.next_arrival()
        c.route(RoutePlan(i))
    assert c.next_arrival() is probe
    return c


def routes(router, specs, n_replicas=3, cfg=None):
    c = Cluster([ReplicaSpec(cfg or config(), COST)] * n_replicas, router)
    c.run(specs)
    return [c.assignment[s.rid] for s in specs]


def test_registry_lists_the_seven_heuristics_and_learned():
    assert heuristic_routers() == ["affinity", "kv-aware", "least-tokens", "lor", "p2c", "random", "round-robin"]
    assert available_routers() == sorted(heuristic_routers() + ["learned"])
    for name in heuristic_routers():
        assert make_router(name).name == name


def test_round_robin_cycles_through_replicas():
    specs = [spec(i, 0.01 * i, 16, 2) for i in range(8)]
    assert routes("round-robin", specs) == [0, 1, 2, 0, 1, 2, 0, 1]


def test_random_is_uniform_and_seeded():
    specs = [spec(i, 0.001 * i, 8, 1) for i in range(600)]
    a = routes("random:seed=1", specs)
    assert a == routes("random:seed=1", specs) != routes("random:seed=2", specs)
    counts = np.bincount(a, minlength=3)
    assert all(150 < c < 250 for c in counts)  # uniform: 200 each, sd ~11.5


def test_lor_counts_waiting_requests_as_vidur():
    long = dict(prompt=8, output=200)
    # replica 0 runs one request at a time: 1 running + 1 waiting; replica 1 runs all 4 at once
    placements = [(spec(0, 0.0, **long), 0), (spec(1, 0.0, **long), 0)] + \
                 [(spec(i, 0.0, **long), 1) for i in range(2, 6)]
    c = placed([config(seqs=1), config(seqs=8)], placements, spec(9, 0.5, 8, 2))
    assert (c.replicas[0].engine.num_waiting, len(c.replicas[1].engine.running)) == (1, 4)
    lor, lor_all = make_router("lor"), make_router("lor:count=all")
    lor.reset(c), lor_all.reset(c)
    assert lor.route(c._pending, c) == RoutePlan(1)       # fewest waiting: Vidur's num_pending_requests
    assert lor_all.route(c._pending, c) == RoutePlan(0)   # fewest unfinished (2 < 4)


def test_lor_ties_go_to_the_lowest_replica():
    c = placed([config()] * 3, [], spec(0, 0.0, 8, 1))
    r = make_router("lor")
    r.reset(c)
    assert r.route(c._pending, c) == RoutePlan(0)


def test_least_tokens_balances_tokens_not_requests():
    # one 2,000-token prompt against short ones: the short ones all go to the other replica
    specs = [spec(0, 0.0, 2000, 10, ttft=10)] + [spec(i, 0.0, 50, 10) for i in range(1, 5)]
    cfg = config(blocks=2000)
    assert routes("least-tokens", specs, 2, cfg) == [0, 1, 1, 1, 1]
    assert routes("lor:count=all", specs, 2, cfg) == [0, 1, 0, 1, 0]


def test_least_tokens_oracle_counts_exactly_the_work_left():
    rng = np.random.default_rng(0)
    specs = [spec(i, 0.02 * i, int(rng.integers(5, 80)), int(rng.integers(1, 30))) for i in range(40)]
    c = Cluster([ReplicaSpec(config(seqs=3, blocks=60, budget=48), COST, "sarathi:token_budget=24")] * 3,
                "least-tokens:decode=oracle")
    c.reset(specs)
    router = c.router
    while (s := c.next_arrival()) is not None:
        work = [sum(max(0, r.prefill_target - r.num_computed) + r.output_len - r.num_generated - r.is_prefilling
                    for r in rep.engine.requests.values() if r.num_generated < r.output_len) for rep in c.replicas]
        assert router.loads(c) == [float(w) for w in work]
        c.route(router.route(s, c))
    c.drain()


def test_least_tokens_mean_estimate_learns_from_finished_requests():
    specs = [spec(i, 1.0 * i, 10, 40) for i in range(3)]  # each finishes before the next arrives
    c = Cluster([ReplicaSpec(config(), COST)] * 2, "least-tokens:prior_output_tokens=7")
    c.reset(specs)
    r = c.router
    assert r._mean_output(c) == 7.0
    while (s := c.next_arrival()) is not None:
        c.route(r.route(s, c))
    c.drain()
    assert r._mean_output(c) == 40.0


def test_least_tokens_mean_never_goes_negative_on_long_requests():
    # a replica decoding requests far past the mean output still counts them as loaded
    specs = [spec(i, 0.0, 10, 2) for i in range(4)] + [spec(4, 0.0, 10, 500)] + \
            [spec(i, 0.5 + 0.01 * i, 10, 5) for i in range(5, 40)]
    c = Cluster([ReplicaSpec(config(), COST)] * 2, "least-tokens")
    c.reset(specs)
    while (s := c.next_arrival()) is not None:
        assert min(c.router.loads(c)) >= 0
        c.route(c.router.route(s, c))
    c.drain()


def test_p2c_picks_the_shorter_of_two_random_replicas():
    # loads 3, 0, 3, 3: replica 1 wins exactly when it is one of the two drawn (probability 1/2);
    # join-the-shortest-queue would always pick it, random 1/4 of the time
    long = dict(prompt=8, output=500)
    placements = [(spec(i, 0.0, **long), j) for i, j in enumerate([0, 0, 0, 2, 2, 2, 3, 3, 3])]
    c = placed([config()] * 4, placements, spec(99, 0.1, 8, 2))
    r = make_router("p2c:seed=5")
    r.reset(c)
    picks = np.bincount([r.route(c._pending, c).replica for _ in range(6000)], minlength=4)
    assert abs(picks[1] / 6000 - 0.5) < 0.03
    for k in (0, 2, 3):
        assert abs(picks[k] / 6000 - 1 / 6) < 0.03
    two = placed([config()] * 2, [(spec(0, 0.0, **long), 0)], spec(9, 0.1, 8, 2))
    r.reset(two)
    assert {r.route(two._pending, two).replica for _ in range(50)} == {1}  # R = 2: always the shorter


def test_kv_aware_counts_the_waiting_queue_as_llumnix():
    # replica 0: little KV in use but a long queue of big prompts; replica 1: more KV in use, no queue
    placements = [(spec(0, 0.0, 40, 300), 0)] + [(spec(i, 0.0, 200, 5), 0) for i in range(1, 4)] + \
                 [(spec(i, 0.0, 160, 300), 1) for i in range(4, 6)]
    c = placed([config(seqs=1, blocks=400), config(seqs=8, blocks=400)], placements, spec(9, 0.2, 8, 2))
    r0, r1 = c.replicas
    assert r0.kv_used_fraction < r1.kv_used_fraction and r0.kv_demand_fraction > r1.kv_demand_fraction
    assert r0.waiting_kv_blocks == 3 * 50
    for load in ("kv_blocks_ratio", "remaining_steps"):
        router = make_router(f"kv-aware:load={load}")
        router.reset(c)
        assert router.route(c._pending, c) == RoutePlan(1), load


def test_kv_aware_weighs_kv_not_request_counts():
    # replica 0: one request holding a 1,000-token prompt's KV; replica 1: three small ones
    placements = [(spec(0, 0.0, 1000, 300), 0)] + [(spec(i, 0.0, 40, 300), 1) for i in range(1, 4)]
    c = placed([config(blocks=1000)] * 2, placements, spec(9, 0.2, 8, 2))
    kv, lor = make_router("kv-aware"), make_router("lor:count=all")
    kv.reset(c), lor.reset(c)
    assert kv.route(c._pending, c) == RoutePlan(1) and lor.route(c._pending, c) == RoutePlan(0)


def test_affinity_keeps_a_conversation_on_its_replica_while_balanced():
    # three conversations of four turns; each turn's prefix is the previous turn's prompt + output
    specs, history = [], [0, 0, 0]
    for turn in range(4):
        for g in range(3):
            prompt = history[g] + 20  # the history plus a new message of 20 tokens
            specs.append(spec(len(specs), 0.3 * len(specs), prompt, 5, prefix_group=g, prefix_len=history[g]))
            history[g] = prompt + 5
    cfg = config(blocks=2000)
    a = routes("affinity", specs, 3, cfg)
    by_group = [{a[i] for i, s in enumerate(specs) if s.prefix_group == g} for g in range(3)]
    assert by_group == [{0}, {1}, {2}]
    rr = routes("round-robin", specs, 2, cfg)
    assert all(len({rr[i] for i, s in enumerate(specs) if s.prefix_group == g}) == 2 for g in range(3))


def test_affinity_falls_back_to_smallest_tree_then_to_least_loaded():
    r = make_router("affinity")
    c = placed([config()] * 2, [], spec(0, 0.0, 100, 2, prefix_group=7, prefix_len=0))
    r.reset(c)
    r._insert(spec(1, 0.0, 300, 2, prefix_group=7, prefix_len=0), 0)  # replica 0's tree: 300 tokens
    # a short prefix match (40 of 100 tokens < cache_threshold 0.5): the smaller tree wins
    assert r.route(spec(2, 0.0, 100, 2, prefix_group=7, prefix_len=40), c) == RoutePlan(1)
    # a long match: back to where the prefix is
    assert r.route(spec(3, 0.0, 400, 2, prefix_group=7, prefix_len=350), c) == RoutePlan(0)
    # imbalance (40 unfinished requests on replica 0, none on 1) overrides the match
    busy = placed([config(seqs=1)] * 2, [(spec(i, 0.0, 8, 400), 0) for i in range(40)], spec(99, 0.1, 8, 2))
    r.reset(busy)
    r._insert(spec(50, 0.0, 300, 2, prefix_group=3), 0)
    assert r.route(spec(99, 0.1, 300, 2, prefix_group=3, prefix_len=300), busy) == RoutePlan(1)


def test_routers_are_deterministic_across_runs():
    rng = np.random.default_rng(1)
    specs = [spec(i, float(t), int(p), int(o), prefix_group=int(g), prefix_len=int(p) // 2)
             for i, (t, p, o, g) in enumerate(zip(np.cumsum(rng.exponential(0.02, 80)), rng.integers(10, 90, 80),
                                                  rng.integers(1, 30, 80), rng.integers(0, 10, 80)))]
    for name in heuristic_routers():
        assert routes(name, specs, 4) == routes(name, specs, 4), name


@pytest.mark.parametrize("name", ["round-robin", "random", "p2c", "lor", "least-tokens", "kv-aware", "affinity"])
def test_one_replica_is_always_replica_zero(name):
    assert set(routes(name, [spec(i, 0.01 * i, 16, 3) for i in range(10)], 1)) == {0}
