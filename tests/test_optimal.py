"""The optimal bound against every heuristic, its replay, the real cost models, bad input, CLI."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from llmsched_env import EngineConfig, LinearCostModel, available_schedulers, make_scheduler, run
from llmsched_env.cli import main
from llmsched_env.engine import Engine
from llmsched_env.plan import PlanError
from llmsched_env.presets import get_preset
from llmsched_env.request import RequestSpec
from llmsched_env.scheduler import NeedsOptions, WorkloadNotServable, heuristic_schedulers
from baselines.optimal import (OptimalScheduler, ScheduleModel, heuristic_runs, objective_value, record_run,
                               replay, solve)
from baselines.optimal_cost import UnsupportedCostModel
from tests.conftest import spec

COST = LinearCostModel(base_s=0.01, per_token_s=1e-3, per_prefill_pair_s=2e-4, per_kv_s=3e-4, per_seq_s=5e-4)
LAM = 20.0


def small_instance(seed: int) -> tuple[list[RequestSpec], EngineConfig]:
    """3-4 requests of a few tokens, arrivals within ~2 batches, KV for about two of them."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 5))
    specs = [RequestSpec(rid=i, arrival_s=float(rng.choice([0.0, 0.0, 0.013, 0.027])),
                         prompt_len=int(rng.integers(1, 4)), output_len=int(rng.integers(1, 4)),
                         ttft_slo_s=float(rng.uniform(0.02, 0.06)), tbt_slo_s=float(rng.uniform(0.012, 0.03)))
             for i in range(n)]
    need = max(s.prompt_len + s.output_len - 1 for s in specs)
    cfg = EngineConfig(num_kv_blocks=need + 2, block_size=1, max_num_batched_tokens=4,
                       max_num_seqs=int(rng.integers(2, 4)))
    return specs, cfg


def heuristics_that_run() -> dict:
    """Every registered scheduler that builds from its name. Documented exclusions: those that
    raise NeedsOptions (``optimal`` needs a solution, ``ppo`` a policy)."""
    out = {}
    for name in heuristic_schedulers():
        try:
            out[name] = make_scheduler(name)
        except NeedsOptions:
            continue
    assert "fcfs" in out and "optimal" not in out
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("objective", ["gpu_time", "slo", "return"])
@pytest.mark.parametrize("preemption", [True, False])
def test_no_heuristic_beats_the_optimum(seed, objective, preemption):
    specs, cfg = small_instance(seed)
    r = solve(specs, cfg, COST, objective, preemption, time_limit_s=20, lam=LAM)
    assert r.status == "OPTIMAL", r.status
    for name, sched in heuristics_that_run().items():
        try:
            rec = record_run(specs, cfg, COST, sched)
        except WorkloadNotServable:
            continue  # e.g. vllm-v0: a whole prompt over the instance's tiny token budget
        if not preemption and rec.summary["num_preemptions"]:
            continue  # a preempting heuristic is outside the no-preemption problem
        v = objective_value(rec.summary, objective, LAM)
        if objective == "gpu_time":
            assert v >= r.objective - 1e-9, (name, v, r.objective)
        elif r.j_rigorous or len(rec.plans) <= r.num_batches:  # the schedule is in the model's space
            assert v <= r.objective + 1e-9, (name, v, r.objective)
    rep = replay(specs, cfg, COST, r)
    assert objective_value(rep, objective, LAM) == pytest.approx(r.objective, abs=1e-9)
    assert rep["latency_error"]["max_rel"] < 1e-9  # linear cost: exact
    if not preemption:
        assert rep["num_preemptions"] == 0


def test_preemption_never_hurts_and_the_bound_brackets():
    specs, cfg = small_instance(5)
    with_p = solve(specs, cfg, COST, "gpu_time", True, time_limit_s=20)
    without = solve(specs, cfg, COST, "gpu_time", False, time_limit_s=20)
    assert with_p.objective <= without.objective + 1e-12
    for r in (with_p, without):
        assert r.bound <= r.objective + 1e-12 and r.gap == pytest.approx(0.0, abs=1e-9)
        if r.hint is None:  # proven without a search: a known schedule meets the relaxation bound
            assert r.status == "OPTIMAL" and "relaxation bound" in r.source
        else:
            assert r.hint[1] >= r.objective - 1e-12


@pytest.mark.parametrize("preset", ["infermax-a100-llama2-7b", "infermax-a100-llama3-70b-tp4", "h100-llama3-8b"])
def test_real_cost_models_replay_within_rounding(preset, request):
    """InferMax (x1.1 multi-batch factor) and the calibrated model (tables, max) are encoded
    exactly up to coefficient rounding: the replay's batch latencies agree to < 1e-3."""
    if preset.startswith("h100"):
        request.getfixturevalue("shared_data")
    p = get_preset(preset)
    specs = [spec(0, prompt=6, output=3, ttft=1.0, tbt=1.0), spec(1, prompt=4, output=4, ttft=1.0, tbt=1.0),
             spec(2, arrival=0.001, prompt=5, output=2, ttft=1.0, tbt=1.0)]
    cfg = EngineConfig(num_kv_blocks=3, block_size=4, max_num_batched_tokens=8, max_num_seqs=3, num_gpus=p.tp)
    r = solve(specs, cfg, p.cost_model, "gpu_time", True, time_limit_s=20)
    assert r.status in ("OPTIMAL", "FEASIBLE")
    rep = replay(specs, cfg, p.cost_model, r)
    assert rep["latency_error"]["max_rel"] < 1e-3
    assert rep["gpu_busy_s"] == pytest.approx(r.objective, rel=1e-3)
    # every heuristic's schedule is a feasible point of the model, with the engine's value
    for name, rec in heuristic_runs(specs, cfg, p.cost_model).items():
        m = ScheduleModel(specs, cfg, p.cost_model, max(len(rec.plans), r.num_batches), "gpu_time", True)
        assert m.hint_from_plans(rec.plans) == pytest.approx(rec.summary["gpu_busy_s"], rel=1e-3), name


def test_history_objective_hint_reproduces_engine_metrics():
    """The model's SLO accounting (TTFT, interpolated P99 TBT) equals metrics.py on heuristic runs."""
    for seed in range(4):
        specs, cfg = small_instance(10 + seed)
        for name, rec in heuristic_runs(specs, cfg, COST).items():
            for objective in ("slo", "return"):
                m = ScheduleModel(specs, cfg, COST, len(rec.plans), objective, True, LAM)
                assert m.hint_from_plans(rec.plans) == pytest.approx(
                    objective_value(rec.summary, objective, LAM), abs=1e-9), (seed, name, objective)


def test_bad_input_is_named():
    specs, cfg = small_instance(0)
    with pytest.raises(ValueError, match="objective"):
        solve(specs, cfg, COST, "latency")
    with pytest.raises(ValueError, match="time limit"):
        solve(specs, cfg, COST, time_limit_s=0)
    with pytest.raises(ValueError, match="lam"):
        ScheduleModel(specs, cfg, COST, 5, "return", lam=-1)
    with pytest.raises(UnsupportedCostModel, match="LinearCostModel"):
        solve(specs, cfg, object())
    with pytest.raises(ValueError, match="replays a solved schedule"):
        make_scheduler("optimal")


def test_replay_of_another_workload_fails_loudly():
    specs, cfg = small_instance(0)
    r = solve(specs, cfg, COST, "gpu_time", time_limit_s=10)
    longer = [replace(s, output_len=s.output_len + 1) for s in specs]
    cfg = replace(cfg, num_kv_blocks=cfg.num_kv_blocks + 1, prefix_caching=False)
    with pytest.raises((RuntimeError, PlanError)):  # plans no longer fit, or run out
        run(Engine(longer, cfg, COST), OptimalScheduler(r.plans))
    with pytest.raises(ValueError, match="without prefix caching"):  # the model's engine only
        run(Engine(specs, replace(cfg, prefix_caching=True), COST), OptimalScheduler(r.plans))


def test_cli_solve_writes_json(tmp_path, shared_data):
    out = tmp_path / "solve.json"
    rc = main(["solve", "--preset", "infermax-a100-llama2-7b", "--trace", "splitwise_conv", "--num-requests", "3",
               "--window-start", "0", "--length-scale", "0.01", "--num-kv-blocks", "4", "--block-size", "4",
               "--objective", "gpu_time", "--time-limit", "10", "--quiet", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["status"] in ("OPTIMAL", "FEASIBLE")
    assert d["replay"]["objective"] == pytest.approx(d["value"], rel=1e-3)
    assert d["replay"]["latency_error"]["max_rel"] < 1e-3
    assert set(d["heuristics"]) >= {"fcfs", "vllm-v1"}
    assert all(v >= d["value"] - 1e-9 for v in d["heuristics"].values())


def test_cli_solve_needs_num_requests(capsys):
    with pytest.raises(SystemExit):
        main(["solve", "--synthetic"])
