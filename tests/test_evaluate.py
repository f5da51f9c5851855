"""eval/evaluate.py: confidence intervals and goodput on known numbers, argument errors before
anything runs, an end-to-end quick run (report, CSV, JSON, plots) and its determinism."""
from __future__ import annotations

import csv
import json
import math

import pytest
from PIL import Image

from eval.evaluate import main, split_specs
from eval.stats import goodput, t_interval
from eval.suite import SuiteError, list_suites, load_suite
from llmsched_env.scheduler import available_schedulers

T_975_3 = 3.182446305284263  # Student t quantile 0.975 with 3 degrees of freedom (tables)


def test_t_interval_known_numbers():
    iv = t_interval([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 3)
    assert iv.n == 4 and iv.mean == 2.5
    assert iv.half == pytest.approx(T_975_3 * sd / 2, rel=1e-9)
    assert (iv.low, iv.high) == pytest.approx((2.5 - iv.half, 2.5 + iv.half))
    assert t_interval([5.0, 5.0, 5.0]).half == 0.0
    one = t_interval([0.7, float("nan")])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.half)
    assert t_interval([]).n == 0


def test_goodput_interpolates_and_censors():
    g = goodput([1, 2, 4], [1.0, 0.95, 0.85])
    assert g.rate == pytest.approx(3.0) and g.censored is None
    # the first crossing counts, even if attainment recovers later
    assert goodput([1, 2, 4], [0.92, 0.5, 0.95]).rate == pytest.approx(1 + 0.02 / 0.42)
    low = goodput([1, 2], [0.8, 0.7])
    assert low.rate == 0.0 and low.censored == "below"
    top = goodput([1, 2], [1.0, 0.9])
    assert top.rate == 2 and top.censored == "above"
    with pytest.raises(ValueError, match="ascending"):
        goodput([2, 1], [1, 1])


def test_split_specs_keeps_spec_options_together():
    assert split_specs("fcfs,vllm-v1:policy=priority,token_budget=256,sarathi") == \
        ["fcfs", "vllm-v1:policy=priority,token_budget=256", "sarathi"]


def test_every_shipped_suite_loads(shared_data):
    for name in list_suites():
        for quick in (False, True):
            s = load_suite(name, quick=quick)
            assert s.rates and s.seeds >= 1 and s.table_rate in s.rates


@pytest.mark.parametrize("args, message", [
    (["--schedulers", "fcfs,no-such-sched"], "unknown scheduler 'no-such-sched'"),
    (["--schedulers", "sarathi:no_such_option=1"], "cannot be built"),
    (["--schedulers", "optimal"], "solved per instance"),
    (["--schedulers", "vllm-v0:token_budget=abc"], "option token_budget='abc' must be int"),  # caught when built
    (["--suite", "no-such-suite"], "unknown suite 'no-such-suite'"),
    (["--trace", "/nonexistent/trace.csv"], "trace not found"),
    (["--policy", "/nonexistent/policy"], "no such file or directory"),
    (["--rate-scale", "2"], "apply to --trace only"),
    (["--suite", "arxiv", "--policy-suites", "bursty"], "--policy-suites bursty: not among the suites"),
])
def test_bad_arguments_fail_before_running(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args + ["--out", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_policy_without_ppo_support(tmp_path, capsys):
    if "ppo" in available_schedulers():
        pytest.skip("scheduler 'ppo' is registered here (policy support installed)")
    (tmp_path / "policy").mkdir()
    assert main(["--policy", str(tmp_path / "policy"), "--out", str(tmp_path / "o")]) == 2
    assert "policy support not installed: scheduler 'ppo' is not registered" in capsys.readouterr().err


def test_malformed_trace_and_suite_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,x\n")
    assert main(["--trace", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "num_decode_tokens" in err
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nworkload: {lengths: fixed, trace: null}\nrates: [1]\nsedes: 2\n")
    with pytest.raises(SuiteError, match="unknown field.*sedes"):
        load_suite(str(suite))


def _run(out, workers):
    args = ["--quick", "--suite", "default-scenario,bursty", "--schedulers", "fcfs,sarathi:token_budget=256",
            "--workers", str(workers), "--out", str(out), "--no-progress"]
    assert main(args) == 0


def test_quick_end_to_end_and_deterministic(tmp_path, shared_data):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, 1)
    md = (a / "evaluation.md").read_text()
    assert "## Goodput" in md and "`sarathi:token_budget=256`" in md and "**" in md and "±" in md
    rows = list(csv.DictReader((a / "evaluation.csv").open()))
    metrics = {r["metric"] for r in rows}
    assert {"slo_attainment", "goodput", "ttft_p50_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "gpu_busy_s",
            "num_preemptions", "recomputed_tokens"} <= metrics
    assert {(r["suite"], r["variant"]) for r in rows} == {("default-scenario", "main"), ("bursty", "poisson"),
                                                          ("bursty", "gamma-cv4")}
    att = [float(r["mean"]) for r in rows if r["metric"] == "slo_attainment"]
    assert att and all(0.0 <= x <= 1.0 for x in att)
    res = json.loads((a / "evaluation.json").read_text())
    # the headroom section: every scheduler's distance to the relaxation bounds, never negative
    assert "## Headroom: distance to the relaxation bounds" in md
    head = res["headroom"]
    assert head["episodes"] == 2 and set(head["schedulers"]) == {"fcfs", "sarathi:token_budget=256"}
    for v in head["schedulers"].values():
        assert v["gpu_over_lb"]["mean"] >= 1 and v["met_gap"]["mean"] >= 0 and v["return_gap"]["mean"] >= 0
    per_seed = res["suites"]["default-scenario"]["conditions"][0]["entrants"]["fcfs"]["per_seed"]
    assert len(per_seed) == 2 and all(0 < r["num_requests"] <= 30 for r in per_seed)
    imgs = sorted(p.name for p in (a / "img").glob("*.png"))
    assert imgs == sorted(f"{s}_{k}.png" for s in ("default-scenario", "bursty") for k in ("attainment", "gpu", "cdf"))
    for p in (a / "img").glob("*.png"):
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 400
        assert p.stat().st_size < 150_000
        assert f"img/{p.name}" in md
    # the same command on two worker processes: the same numbers
    _run(b, 2)
    assert (a / "evaluation.csv").read_bytes() == (b / "evaluation.csv").read_bytes()
    rb = json.loads((b / "evaluation.json").read_text())
    assert rb["suites"] == res["suites"]
    for h in (rb["headroom"], res["headroom"]):
        h["bounds"].pop("bound_s_max")  # a timing
    assert rb["headroom"] == res["headroom"]
    # the report again from the JSON alone: same CSV, same plots listed
    c = tmp_path / "c"
    assert main(["--from-json", str(a / "evaluation.json"), "--out", str(c), "--workers", "1"]) == 0
    assert (c / "evaluation.csv").read_bytes() == (a / "evaluation.csv").read_bytes()
    assert sorted(p.name for p in (c / "img").glob("*.png")) == imgs


def test_small_instance_gap_or_skip(tmp_path, shared_data):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(
        "name: tiny\nengine: {num_kv_blocks: 6, max_num_batched_tokens: 64}\n"
        "workload: {num_requests: 2, arrival: poisson, rate: 50, lengths: uniform, trace: null,\n"
        "           prompt_range: [16, 48], output_range: [2, 3]}\n"
        "rates: [50]\nseeds: 2\noptimal: {time_limit_s: 10}\n")
    out = tmp_path / "o"
    assert main(["--suite", str(suite), "--schedulers", "fcfs,sarathi", "--out", str(out), "--no-progress",
                 "--workers", "1"]) == 0
    res = json.loads((out / "evaluation.json").read_text())
    if "optimal" not in available_schedulers():
        assert "not registered" in res["skipped"]["tiny"]
        assert "skipped" in (out / "evaluation.md").read_text()
        return
    cond = res["suites"]["tiny"]["conditions"][0]["entrants"]
    for inst in res["suites"]["tiny"]["instances"]:
        assert inst["status"] == "OPTIMAL"
    # the bound is a lower bound on every schedule's GPU time; the replayed optimum attains it
    for name in ("fcfs", "sarathi"):
        assert all(r["gap_to_bound_pct"] >= -1e-3 for r in cond[name]["per_seed"])
    assert abs(cond["optimal"]["stats"]["gap_to_bound_pct"]["mean"]) < 0.1
    assert (out / "img" / "tiny_gap.png").exists()


def test_make_eval_command_runs_in_quick_mode(tmp_path, shared_data):
    """`make eval POLICY=agents/zoo/default` (what regenerates docs/evaluation.md) in quick mode:
    every suite, every heuristic, the shipped policy on the default scenario and its headroom."""
    out = tmp_path / "docs"
    assert main(["--quick", "--policy", "agents/zoo/default", "--out", str(out), "--no-progress", "--workers", "2"]) == 0
    md = (out / "evaluation.md").read_text()
    assert "**quick mode**" in md and "## Headroom" in md and "| `ppo:path=agents/zoo/default` |" in md
    assert "Runs without results" not in md  # every scheduler ran, the optimal replay included


def test_small_instance_optimum_replays_where_it_preempts(tmp_path, shared_data):
    """Seeds 2-3 of the small-instance suite (the optimum of seed 2 preempts): the optimal job runs
    every scheduler and the replay on the engine the CP-SAT model describes (prefix caching off),
    so the replay is the solved schedule."""
    if "optimal" not in available_schedulers():
        pytest.skip("the optimal scheduler is not registered here")
    out = tmp_path / "o"
    assert main(["--suite", "small-instance", "--quick", "--seed", "2", "--schedulers", "fcfs", "--out", str(out),
                 "--no-progress", "--workers", "1"]) == 0
    md = (out / "evaluation.md").read_text()
    assert "Runs without results" not in md
    res = json.loads((out / "evaluation.json").read_text())
    opt = res["suites"]["small-instance"]["conditions"][0]["entrants"]["optimal"]["per_seed"]
    assert len(opt) == 2 and all("error" not in r for r in opt)
