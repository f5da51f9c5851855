"""The cluster: requests handed to engines as they are routed (Engine.add_arrival), one clock
over R replicas, R = 1 reproducing the single engine exactly, routing invariants, RoutePlan
validation, cluster metrics."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from llmsched_env.cluster import Cluster, ReplicaSpec, cluster_metrics, replicas_from_preset, simulate_cluster
from llmsched_env.cost_model import LinearCostModel
from llmsched_env.engine import Engine, EngineConfig, SchedulerStalled, WorkloadRejected
from llmsched_env.plan import BatchPlan
from llmsched_env.request import WAITING
from llmsched_env.router import RouteError, RoutePlan, make_router
from llmsched_env.scheduler import make_scheduler
from llmsched_env.simulate import run, simulate
from llmsched_env.workload import WorkloadConfig, build_workload

from .conftest import spec

COST = LinearCostModel(base_s=0.01, per_token_s=1e-4)
SMALL = EngineConfig(num_kv_blocks=40, block_size=4, max_num_batched_tokens=48, max_num_seqs=4)


def _trace(engine, scheduler):
    """Every step's (start, end, tokens, emitted, preempted, admitted) of a full run."""
    steps = []
    run(engine, scheduler, on_step=lambda e, p, r: steps.append((r.start_s, r.end_s, r.num_tokens, tuple(r.emitted),
                                                                  tuple(r.preempted), tuple(r.admitted))))
    return steps


def _random_specs(seed: int, n: int = 12):
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.05, n)) * rng.integers(0, 2)  # sometimes all at t = 0
    return [spec(i, float(t[i]), int(rng.integers(1, 40)), int(rng.integers(1, 12))) for i in range(n)]


# ------------------------------------------------------------------ engine: requests handed over as routed
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), sched=st.sampled_from(["fcfs", "sarathi:token_budget=16", "vllm-v0", "slai"]))
def test_open_engine_fed_in_order_makes_the_same_steps(seed, sched):
    specs = _random_specs(seed)
    closed = _trace(Engine(specs, SMALL, COST), make_scheduler(sched))
    c = Cluster([ReplicaSpec(SMALL, COST, sched)], "round-robin")
    steps = []
    c.reset(specs)
    rep = c.replicas[0]
    orig = rep.engine.step

    def record(plan):
        r = orig(plan)
        steps.append((r.start_s, r.end_s, r.num_tokens, tuple(r.emitted), tuple(r.preempted), tuple(r.admitted)))
        return r
    rep.engine.step = record
    while (s := c.next_arrival()) is not None:
        c.route(c.router.route(s, c))
    c.drain()
    assert steps == closed


def test_add_arrival_errors_name_the_request():
    e = Engine([], SMALL, COST)
    with pytest.raises(ValueError, match="request 1: arrivals are closed"):
        e.add_arrival(spec(1))
    e = Engine([], SMALL, COST, open_arrivals=True)
    e.add_arrival(spec(1, 0.5))
    with pytest.raises(ValueError, match="request 2 arrives at 0.1 s, before request 1"):
        e.add_arrival(spec(2, 0.1))
    with pytest.raises(WorkloadRejected, match="request 1: duplicate id"):
        e.add_arrival(spec(1, 0.6))
    with pytest.raises(WorkloadRejected, match="request 3: needs 51 KV blocks"):
        e.add_arrival(spec(3, 0.7, prompt=200, output=5))
    assert [r.rid for r in e.waiting] == [1]


def test_open_engine_waits_for_an_arrival_then_jumps_its_clock():
    e = Engine([], SMALL, COST, open_arrivals=True)
    assert e.awaiting_arrival and not e.done
    e.add_arrival(spec(1, 2.0))
    assert e.now_s == 2.0 and not e.awaiting_arrival and [r.rid for r in e.waiting] == [1]
    e.step(BatchPlan())  # the scheduler waits for more: no known arrival, so the clock stays
    assert e.awaiting_arrival and e.now_s == 2.0
    e.add_arrival(spec(2, 3.0))
    assert e.now_s == 3.0 and not e.awaiting_arrival and e.num_waiting == 2
    e.close_arrivals()
    with pytest.raises(SchedulerStalled):
        e.step(BatchPlan())


# ------------------------------------------------------------------ R = 1 is the single engine
@pytest.mark.parametrize("sched", ["fcfs", "sarathi", "slai", "vllm-v1:policy=priority", "srpt"])
def test_one_replica_reproduces_simulate_exactly(sched, shared_data):
    wl = WorkloadConfig(num_requests=300, rate=9.0, seed=3, slo_classes=WorkloadConfig().slo_classes)
    over = {"num_kv_blocks": 1024}
    single = simulate(wl, sched, engine_overrides=over)
    for router in ("round-robin", "least-tokens", "affinity"):
        c = simulate_cluster(wl, replicas_from_preset("h100-llama3-8b", 1, sched, over), router)
        for k, v in single.items():
            if k in ("wall_s", "steps_per_s", "scheduler", "preset"):
                continue
            assert c[k] == v or (v != v and c[k] != c[k]), (k, v, c[k])
        assert c["replicas"] == 1 and c["load_imbalance"] == 1.0


def test_one_replica_reproduces_the_trace_run(shared_data):
    wl = WorkloadConfig(num_requests=400, arrival="trace", window_start=0, rate_scale=2.0)
    single = simulate(wl, "sarathi")
    c = simulate_cluster(wl, replicas_from_preset("h100-llama3-8b", 1, "sarathi"), "lor")
    assert (c["num_steps"], c["gpu_busy_s"], c["ttft_p99_s"], c["slo_attainment"]) == \
        (single["num_steps"], single["gpu_busy_s"], single["ttft_p99_s"], single["slo_attainment"])


# ------------------------------------------------------------------ routing invariants
class CheckedCluster(Cluster):
    """Checks every replica's invariants after each of its steps."""

    def _step(self, i):
        super()._step(i)
        rep = self.replicas[i]
        e = rep.engine
        assert e.used_blocks == sum(r.num_blocks for r in e.running.values()) <= e.config.num_kv_blocks
        assert len(e.running) <= e.config.max_num_seqs
        assert rep.waiting_kv_blocks == sum(e.blocks_for(r.prefill_target) for r in e.iter_waiting())
        # known tokens left + each unfinished request's true output = the work left (brute force)
        def prompt_left(r):  # a waiting request's prefix-cache hit (KV not on the host) counts from its admission
            computed = 0 if r.status == WAITING and not r.host_blocks else r.num_computed
            return max(0, r.prefill_target - computed) - r.is_prefilling

        unfinished = [r for r in e.requests.values() if r.num_generated < r.output_len]
        left = sum(prompt_left(r) + r.output_len - r.num_generated for r in unfinished)
        assert rep.known_tokens_left + sum(r.output_len for r in unfinished) == left
        assert rep.prompt_tokens_left == sum(prompt_left(r) for r in unfinished)
        assert rep.outstanding_requests == e.num_waiting + len(e.running)


@pytest.mark.parametrize("router", ["round-robin", "random:seed=4", "lor", "lor:count=all", "least-tokens",
                                    "least-tokens:decode=oracle", "p2c", "kv-aware", "kv-aware:load=remaining_steps",
                                    "affinity"])
def test_every_request_routed_once_and_every_replica_engine_holds(router):
    rng = np.random.default_rng(7)
    specs = [spec(i, float(t), int(p), int(o), prefix_group=int(g) if g >= 0 else None,
                  prefix_len=int(min(p, 8)) if g >= 0 else 0)
             for i, (t, p, o, g) in enumerate(zip(np.cumsum(rng.exponential(0.01, 120)), rng.integers(1, 60, 120),
                                                  rng.integers(1, 20, 120), rng.integers(-1, 6, 120)))]
    configs = [SMALL, EngineConfig(num_kv_blocks=64, block_size=4, max_num_batched_tokens=96, max_num_seqs=8)]
    reps = [ReplicaSpec(configs[i % 2], COST, ["fcfs", "sarathi:token_budget=32", "slai"][i % 3]) for i in range(5)]
    c = CheckedCluster(reps, router)
    s = c.run(specs)
    assert sorted(c.assignment) == [x.rid for x in specs]
    per = [set(e.requests) for e in c.engines]
    assert sum(len(p) for p in per) == len(specs) and set().union(*per) == set(c.assignment)
    for rid, i in c.assignment.items():
        assert rid in c.engines[i].requests
    assert all(e.done for e in c.engines) and s["num_finished"] == len(specs)
    assert [r["routed"] for r in s["per_replica"]] == [len(p) for p in per]


def test_route_plan_is_validated_and_an_invalid_one_changes_nothing():
    c = Cluster(replicas_from_preset("h100-llama3-8b", 3))
    c.reset([spec(0, 0.0, 64, 4), spec(1, 0.5, 64, 4)])
    s = c.next_arrival()
    for plan, msg in ((RoutePlan(3), "unknown replica 3: the cluster has replicas 0..2"),
                      (RoutePlan(-1), "unknown replica -1"), (RoutePlan(True), "not an integer"),
                      (2, "expected a RoutePlan, got int")):
        with pytest.raises(RouteError, match=msg) as err:
            c.route(plan)
        assert f"request {s.rid}" in str(err.value)
    assert c.next_arrival() is s and all(r.routed == 0 for r in c.replicas)
    c.route(RoutePlan(2))
    assert c.assignment == {0: 2}


def test_unknown_router_and_bad_options_are_clear():
    from llmsched_env.router import UnknownRouter
    with pytest.raises(UnknownRouter, match="unknown router 'nope'; registered: affinity"):
        make_router("nope")
    with pytest.raises(ValueError, match="bad options for router 'p2c'"):
        make_router("p2c:bogus=1")
    with pytest.raises(ValueError, match="least-tokens: decode='psychic'"):
        make_router("least-tokens:decode=psychic")


def test_a_request_too_big_for_any_replica_is_rejected_before_running():
    small = ReplicaSpec(SMALL, COST)
    with pytest.raises(WorkloadRejected, match="request 0: needs"):
        Cluster([small, small], "round-robin").run([spec(0, 0.0, 400, 4)])


# ------------------------------------------------------------------ determinism, heterogeneity, metrics
def test_same_seed_same_numbers_and_heterogeneous_replicas(shared_data):
    wl = WorkloadConfig(num_requests=200, rate=25.0, seed=5)
    from llmsched_env.presets import get_preset
    a, b = get_preset("h100-llama3-8b"), get_preset("a100-llama3-8b")
    reps = [ReplicaSpec(a.engine_config(num_kv_blocks=512), a.cost_model, "sarathi", a.name),
            ReplicaSpec(b.engine_config(num_kv_blocks=512), b.cost_model, "fcfs", b.name)]
    one = simulate_cluster(wl, reps, "p2c:seed=2")
    two = simulate_cluster(wl, reps, "p2c:seed=2")
    one.pop("wall_s"), two.pop("wall_s"), one.pop("steps_per_s"), two.pop("steps_per_s")
    assert one == two
    assert [r["preset"] for r in one["per_replica"]] == [a.name, b.name]
    assert [r["scheduler"] for r in one["per_replica"]] == ["sarathi", "fcfs"]


def test_cluster_metrics_definitions():
    specs = [spec(i, 0.0, 16, 4) for i in range(6)]
    c = Cluster([ReplicaSpec(SMALL, COST)] * 3, "round-robin")
    c.run(specs)
    m = cluster_metrics(c)
    busy = [e.busy_s for e in c.engines]
    assert m["load_imbalance"] == pytest.approx(max(busy) / (sum(busy) / 3))
    assert m["requests_imbalance"] == 1.0 and m["gpu_seconds"] == pytest.approx(sum(busy))
    assert m["gpu_seconds_provisioned"] == pytest.approx(max(e.now_s for e in c.engines) * 3)
    assert m["num_requests"] == 6 and m["kv_capacity_blocks"] == 3 * SMALL.num_kv_blocks


    class First:  # any object with route/reset is a Router
        name = "first"

        def reset(self, cluster):
            pass

        def route(self, request, cluster):
            return RoutePlan(0)
    one = Cluster([ReplicaSpec(SMALL, COST)] * 3, First())
    m = one.run(specs)
    assert m["requests_imbalance"] == 3.0 and m["load_imbalance"] == 3.0 and m["router"] == "first"


def test_cluster_goodput_per_gpu(shared_data):
    from llmsched_env.cluster import cluster_goodput
    wl = WorkloadConfig(num_requests=120, rate=1.0, seed=0)
    reps = replicas_from_preset("h100-llama3-8b", 2, "sarathi", {"num_kv_blocks": 512})
    g = cluster_goodput(wl, reps, "least-tokens", rates=(4, 8, 16, 32, 64), refine=1)
    assert g["num_gpus"] == 2 and g["goodput_per_gpu"] == g["goodput"] / 2
    passing = [r for r, a in g["points"] if a >= 0.9]
    assert g["goodput"] == max(passing) and any(a < 0.9 for _, a in g["points"])
