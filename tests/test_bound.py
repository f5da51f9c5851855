"""The relaxation bounds (baselines/bound.py) are never beaten: not by any heuristic, not by the
exact optimum of small instances, with or without preemption, on every supported cost model."""
from __future__ import annotations

import numpy as np
import pytest

from baselines.bound import gpu_time_lower_bound, lower_convex_envelope, slo_upper_bound
from baselines.optimal import heuristic_runs, solve
from llmsched_env.presets import get_preset
from llmsched_env.workload import WorkloadConfig, build_workload
from tests.test_optimal import COST, LAM, small_instance


def test_convex_envelope_is_below_and_convex():
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.uniform(0, 1, 200))  # non-decreasing
    hx, hy = lower_convex_envelope(y)
    env = np.interp(np.arange(1, 201), hx, hy)
    assert np.all(env <= y + 1e-12)
    slopes = np.diff(hy) / np.diff(hx)
    assert np.all(np.diff(slopes) >= -1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("preemption", [True, False])
def test_bounds_hold_against_the_optimum_and_heuristics(seed, preemption):
    specs, cfg = small_instance(seed)
    lb = gpu_time_lower_bound(specs, cfg, COST, preemption).value
    ub = slo_upper_bound(specs, cfg, COST).value
    opt_gpu = solve(specs, cfg, COST, "gpu_time", preemption, time_limit_s=20)
    opt_slo = solve(specs, cfg, COST, "slo", preemption, time_limit_s=20)
    assert opt_gpu.status == "OPTIMAL" and opt_slo.status == "OPTIMAL"
    assert lb <= opt_gpu.objective + 1e-12
    assert ub >= opt_slo.objective
    for name, run in heuristic_runs(specs, cfg, COST).items():
        if not preemption and run.summary["num_preemptions"]:
            continue
        assert run.summary["gpu_busy_s"] >= lb - 1e-12, name
        assert run.summary["num_slo_met"] <= ub, name


@pytest.mark.parametrize("preset", ["a100-llama3-8b", "infermax-a100-llama2-7b", "h100-llama3-8b"])
def test_bounds_hold_on_real_lengths(preset, shared_data):
    p = get_preset(preset)
    specs = build_workload(WorkloadConfig(num_requests=40, arrival="poisson", rate=8.0, lengths="trace",
                                          trace="splitwise_conv", seed=3, oversize="drop",
                                          max_total_len=min(4096, p.max_request_tokens(num_kv_blocks=1024))))
    cfg = p.engine_config(num_kv_blocks=1024)
    lb = gpu_time_lower_bound(specs, cfg, p.cost_model).value
    ub = slo_upper_bound(specs, cfg, p.cost_model).value
    for name, run in heuristic_runs(specs, cfg, p.cost_model).items():
        assert run.summary["gpu_busy_s"] >= lb, name
        assert run.summary["num_slo_met"] <= ub, name


def test_bound_gap_report_never_has_a_scheduler_beat_the_bounds(shared_data):
    from eval.bound_gap import episode, summarize_gaps
    specs_ = ["fcfs", "slai", "rule:name=sarathi"]
    eps = [episode(("default", seed, specs_, 5.0)) for seed in (10_000, 10_001)]
    for e in eps:
        for s in specs_:
            row = e["rows"][s]
            assert row["gpu_busy_s"] >= e["gpu_lb"] - 1e-9
            assert row["slo_attainment"] * e["num_requests"] <= e["met_ub"] + 1e-9
            assert row["return"] <= e["return_ub"] + 1e-9
    res = summarize_gaps(eps, specs_)
    assert res["episodes"] == 2 and res["schedulers"]["fcfs"]["gpu_over_lb"]["low"] <= \
        res["schedulers"]["fcfs"]["gpu_over_lb"]["mean"]


def test_solve_bound_only_on_a_scenario_episode(tmp_path, shared_data, capsys):
    import json

    from llmsched_env.cli import main
    out = tmp_path / "b.json"
    for objective in ("gpu_time", "return"):
        assert main(["solve", "--scenario", "default", "--seed", "10000", "--bound-only", "--objective", objective,
                     "--time-limit", "30", "--json", str(out)]) == 0
        r = json.loads(out.read_text())
        assert r["status"] == "BOUND_ONLY" and r["objective"] is None and r["instance"]["num_requests"] == 100
        assert r["heuristics"] and r["gap"] is not None
        if objective == "gpu_time":
            assert all(v >= r["bound"] - 1e-9 for v in r["heuristics"].values())
        else:
            assert all(v <= r["bound"] + 1e-9 for v in r["heuristics"].values())
    try:
        rc = main(["solve", "--scenario", "nope", "--bound-only"])
    except SystemExit as e:
        rc = e.code
    assert rc == 2 and "--scenario 'nope' is unknown" in capsys.readouterr().err


def test_bounds_hold_with_prefix_caching_on_conversations(shared_data):
    """Conversation turns find their history in the prefix cache: the bounds count only the prompt
    tokens after the shared prefix, so no scheduler beats them on the caching engine either."""
    from llmsched_env.engine import Engine
    from llmsched_env.scheduler import heuristic_schedulers, make_scheduler
    from llmsched_env.simulate import run

    p = get_preset("h100-llama3-8b")
    specs = build_workload(WorkloadConfig(num_requests=60, arrival="poisson", rate=12.0, lengths="trace",
                                          trace="splitwise_conv", seed=5, oversize="drop", conversation_turns=4,
                                          think_time_s=0.5, max_total_len=4096))
    assert sum(s.prefix_group is not None and s.prefix_len >= 16 for s in specs) >= 10
    on, off = p.engine_config(num_kv_blocks=1024), p.engine_config(num_kv_blocks=1024, prefix_caching=False)
    lb = gpu_time_lower_bound(specs, on, p.cost_model).value
    ub = slo_upper_bound(specs, on, p.cost_model).value
    assert lb < gpu_time_lower_bound(specs, off, p.cost_model).value
    assert ub >= slo_upper_bound(specs, off, p.cost_model).value
    hits = 0
    for name in ("fcfs", "sarathi", "slai", "vllm-v1", "infermax-srf", "sglang"):
        assert name in heuristic_schedulers()
        eng = Engine(specs, on, p.cost_model)
        s = run(eng, make_scheduler(name))
        hits += s["prefix_hit_tokens"]
        assert s["gpu_busy_s"] >= lb, name
        assert s["num_slo_met"] <= ub, name
    assert hits > 0


def _bound_and_optimum(specs, cost, budget: int, kv_blocks: int, preemption: bool) -> tuple[float, float]:
    """(the bound, the least GPU time over every feasible plan sequence) on a block-1 engine."""
    from llmsched_env.engine import Engine
    from tests.test_optimal_exhaustive import NoCache, min_gpu_time

    cfg = NoCache(num_kv_blocks=kv_blocks, block_size=1, max_num_batched_tokens=budget, max_num_seqs=3)
    return (gpu_time_lower_bound(specs, cfg, cost, preemption).value,
            min_gpu_time(Engine(specs, cfg, cost), preemption))


def _random_infermax(rng):
    from llmsched_env.cost_model import InferMaxCostModel
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    return InferMaxCostModel(name="random", num_layers=1, a_prefill_ms=u(0, 0.2), b_prefill_ms=u(0, 5),
                             a_decode_ms=u(0, 0.2), b_decode_ms=u(0, 5), a_other_ms=u(0.1, 1), b_other_ms=u(0, 5),
                             per_prefill_ms=u(0, 3), per_decode_ms=u(0, 1), prefill_kv_ms=u(0, 3),
                             multi_factor=float(rng.choice([1.0, 1.1])))


@pytest.mark.parametrize("seed", range(3))
def test_infermax_bound_holds_against_an_exhaustive_search(seed):
    """InferMax's bound prices the order of prefill batches and the prompts split to fit them
    (baselines.prefill_packing): on random tiny workloads and random constants, with and without
    preemption, it never exceeds the least GPU time over every feasible plan sequence (the
    Engine-driven Dijkstra search of test_optimal_exhaustive)."""
    from llmsched_env.engine import Engine
    from tests.conftest import spec
    from tests.test_optimal_exhaustive import NoCache, min_gpu_time

    rng = np.random.default_rng(seed)
    for _ in range(5):
        cost = _random_infermax(rng)
        specs = [spec(i, prompt=int(rng.integers(1, 5)), output=int(rng.integers(1, 4)))
                 for i in range(int(rng.integers(2, 4)))]
        cfg = NoCache(num_kv_blocks=sum(s.prompt_len + s.output_len for s in specs), block_size=1,
                      max_num_batched_tokens=int(rng.integers(3, 6)), max_num_seqs=3)
        for preemption in (False, True):
            best = min_gpu_time(Engine(specs, cfg, cost), preemption)
            assert gpu_time_lower_bound(specs, cfg, cost, preemption).value <= best * (1 + 1e-12)


def test_infermax_bound_is_exact_where_prompts_must_split():
    """Prompts of 3, 3 and 2 tokens fill two batches of 4 only if one is split: the cheapest
    schedule (exhaustive search) pays the split's chunk and context, and the bound equals it."""
    from llmsched_env.cost_model import InferMaxCostModel
    from tests.conftest import spec

    cost = InferMaxCostModel(name="split", num_layers=1, a_prefill_ms=0.0, b_prefill_ms=2.0, a_decode_ms=0.0,
                             b_decode_ms=1.0, a_other_ms=0.5, b_other_ms=3.0, per_prefill_ms=0.5, per_decode_ms=0.1,
                             prefill_kv_ms=1.0, multi_factor=1.0)
    specs = [spec(0, prompt=3, output=1), spec(1, prompt=3, output=1), spec(2, prompt=2, output=1)]
    lb, best = _bound_and_optimum(specs, cost, budget=4, kv_blocks=16, preemption=False)
    # two batches (b_other + b_prefill each), 8 tokens, 4 chunks, and a split token of context
    assert best == pytest.approx(1e-3 * (2 * 5.0 + 0.5 * 8 + 0.5 * 4 + 1.0), rel=1e-12)
    assert lb == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("preset", ["a100-llama3-8b", "h100-llama3-8b"])
def test_calibrated_bound_holds_against_an_exhaustive_search(preset):
    """The calibrated model's bound (each request's deadlines on the batches' cumulative tokens,
    priced by the taut string on the token cost's convex envelope) never exceeds the least GPU
    time over every feasible plan sequence, with and without preemption, on random tiny
    workloads whose cache may bind."""
    from llmsched_env.engine import Engine
    from tests.conftest import spec
    from tests.test_optimal_exhaustive import NoCache, min_gpu_time

    cost = get_preset(preset).cost_model
    rng = np.random.default_rng(11)
    for _ in range(4):
        specs = [spec(i, prompt=int(rng.integers(1, 5)), output=int(rng.integers(1, 4)))
                 for i in range(int(rng.integers(2, 4)))]
        longest = max(s.prompt_len + s.output_len for s in specs)
        cfg = NoCache(num_kv_blocks=int(rng.integers(longest, sum(s.prompt_len + s.output_len for s in specs) + 1)),
                      block_size=1, max_num_batched_tokens=int(rng.integers(2, 6)), max_num_seqs=3)
        for preemption in (False, True):
            best = min_gpu_time(Engine(specs, cfg, cost), preemption)
            assert gpu_time_lower_bound(specs, cfg, cost, preemption).value <= best * (1 + 1e-12)


def test_deadline_bound_prices_prefill_that_cannot_be_spread(shared_data):
    """The longest request's prompt must be prefilled before its O - 1 decodes: on arXiv lengths
    the deadline bound is well above Jensen's (which spreads every token evenly over the
    batches), and the paced-prefill schedule that follows the same taut string comes within 1%."""
    from baselines.bound import deadline_tokens_s, token_cost_envelope
    from baselines.optimal import all_arrived_runs, without_prefix_cache

    p = get_preset("a100-llama3-8b")
    specs = build_workload(WorkloadConfig(num_requests=6, arrival="poisson", rate=2.0, lengths="trace",
                                          trace="arxiv_summarization_stats_llama2_tokenizer_filtered_v2", seed=0))
    cfg = without_prefix_cache(p.engine_config())
    cost = p.cost_model
    hx, hy = token_cost_envelope(cost, cfg.max_num_batched_tokens)
    P = np.array([s.prompt_len for s in specs])
    O = np.array([s.output_len for s in specs])
    T = int(np.sum(P + O - 1))
    J = np.arange(int(O.max()), T + 1)
    jensen = float(np.min(J * np.interp(T / J, hx, hy)))
    assert deadline_tokens_s(P, O, int(O.max()), hx, hy)[0] > 1.05 * jensen
    lb = gpu_time_lower_bound(specs, cfg, cost).value
    runs = all_arrived_runs(specs, cfg, cost, True)
    best = min(r.summary["gpu_busy_s"] for r in runs.values())
    assert lb <= best <= 1.01 * lb
    assert min(runs, key=lambda n: runs[n].summary["gpu_busy_s"]).startswith("paced prefill")


def test_infermax_bound_prices_batches_with_several_decodes_or_prefills():
    """With a multi-batch factor, a batch with more than one decode pays it on its decode terms,
    one with more than one prefill chunk on its prefill terms: three requests whose decodes must
    overlap (the longest decodes in every batch after the first) pay it in two of the three
    decode batches and in their one prefill batch, and without preemption the bound equals the
    exhaustive optimum."""
    import baselines.bound as bound
    from llmsched_env.cost_model import InferMaxCostModel
    from tests.conftest import spec

    cost = InferMaxCostModel(name="md", num_layers=1, a_prefill_ms=0.05, b_prefill_ms=1.0, a_decode_ms=0.1,
                             b_decode_ms=1.0, a_other_ms=0.5, b_other_ms=3.0, per_prefill_ms=0.5, per_decode_ms=0.1,
                             prefill_kv_ms=1.0, multi_factor=1.5)
    specs = [spec(0, prompt=2, output=4), spec(1, prompt=1, output=3), spec(2, prompt=1, output=2)]
    lb, best = _bound_and_optimum(specs, cost, budget=8, kv_blocks=32, preemption=False)
    assert lb == pytest.approx(best, rel=1e-12)
    surcharge = bound._multi_decode_ms(cost, np.array([2, 1, 1]), np.array([4, 3, 2]), 4)
    # 4 batches: 6 decodes in the last 3, at least 2 of them with several, carrying 5 decodes (KV
    # 2 + 2 + 3 + 3 + 4 at least)
    assert surcharge(4) == pytest.approx(0.5 * (2 * 1.0 + 0.1 * 14))
    # the prefill batch holds all three prompts: 0.5 x (b_prefill + a_prefill x (4 + 1 + 1))
    prefills = bound._multi_prefill_ms(cost, np.array([2, 1, 1]), np.array([2, 1, 1]), 8)
    assert prefills(1) == pytest.approx(0.5 * (1.0 + 0.05 * 6)) and prefills(3) == 0.0
    assert prefills(2) == pytest.approx(0.5 * (1.0 + 0.05 * 2))  # the 2-token prompt alone
    lb, best = _bound_and_optimum(specs, cost, budget=8, kv_blocks=32, preemption=True)
    assert lb <= best


def test_infermax_packing_bound_keeps_its_time_limit(shared_data):
    """Out of time, the prefill packing prices what is left by its subset program: a bound that
    is returned at once and is never above the full one."""
    import time

    p = get_preset("infermax-a100-llama2-7b")
    cfg = p.engine_config(prefix_caching=False)
    specs = build_workload(WorkloadConfig(num_requests=8, arrival="poisson", rate=2.0, lengths="trace",
                                          trace="arxiv_summarization_stats_llama2_tokenizer_filtered_v2", seed=0))
    t0 = time.perf_counter()
    quick = gpu_time_lower_bound(specs, cfg, p.cost_model, True, time_limit_s=0.01).value
    assert time.perf_counter() - t0 < 1.0
    assert quick <= gpu_time_lower_bound(specs, cfg, p.cost_model, True).value
