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
