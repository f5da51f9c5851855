"""``llmsched compare``: identical workloads for every scheduler, means over seeds, best marked,
failures reported per scheduler."""
from __future__ import annotations

import json

from rich.console import Console

from baselines.compare import best_values, compare, print_table
from llmsched_env.cli import main
from llmsched_env.workload import WorkloadConfig

ARGS = ["compare", "--synthetic", "--num-requests", "40", "--rate", "20", "--prompt-len", "300",
        "--output-len", "40", "--no-progress", "--workers", "2"]


def test_compare_cli_same_workloads_and_json(tmp_path, shared_data, capsys):
    out = tmp_path / "cmp.json"
    rc = main(ARGS + ["--schedulers", "fcfs,vllm-v1,sarathi", "--seeds", "2", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["seeds"] == [0, 1]
    # fcfs is vllm-v1 under another name: identical workloads give identical numbers
    assert r["mean"]["fcfs"] == r["mean"]["vllm-v1"]
    for name in ("fcfs", "sarathi"):
        runs = r["runs"][name]
        assert [x["num_requests"] for x in runs] == [40, 40]
        mean_att = sum(x["slo_attainment"] for x in runs) / 2
        assert abs(r["mean"][name]["slo_attainment"] - mean_att) < 1e-12
    text = capsys.readouterr().out
    assert "sarathi" in text and "*" in text


def test_best_values_and_marking():
    mean = {"a": {"slo_attainment": 0.5, "ttft_p50_s": 1.0, "ttft_p99_s": 2.0, "tbt_p99_s": float("nan"),
                  "gpu_busy_s": 3.0, "num_preemptions": 0, "recomputed_tokens": 0, "num_finished": 1,
                  "num_requests": 1},
            "b": {"slo_attainment": 0.9, "ttft_p50_s": 2.0, "ttft_p99_s": 1.0, "tbt_p99_s": 0.1,
                  "gpu_busy_s": 3.0, "num_preemptions": 4, "recomputed_tokens": 9, "num_finished": 1,
                  "num_requests": 1}}
    b = best_values(mean)
    assert b["slo_attainment"] == 0.9 and b["ttft_p50_s"] == 1.0 and b["tbt_p99_s"] == 0.1
    con = Console(width=200, record=True)
    print_table({"mean": mean, "seeds": [0], "preset": "p", "errors": {}}, con)
    lines = {ln.split()[1]: ln for ln in con.export_text().splitlines() if ln.startswith("│")}
    assert "0.900*" in lines["b"] and "0.500*" not in lines["a"] and "1*" in lines["a"]


def test_compare_reports_failing_scheduler_and_keeps_others(shared_data):
    wl = WorkloadConfig(num_requests=10, lengths="fixed", prompt_len=300, output_len=4, rate=5.0, trace=None)
    r = compare(wl, ["vllm-v0", "vllm-v1"], engine_overrides={"max_num_batched_tokens": 256}, workers=1,
                progress=False)
    assert "PromptExceedsBudget" in r["errors"]["vllm-v0"] and "300-token prefill" in r["errors"]["vllm-v0"]
    assert r["mean"]["vllm-v1"]["num_finished"] == 10


def test_compare_unknown_scheduler_is_a_clear_error(capsys, shared_data):
    assert main(ARGS + ["--schedulers", "fcfs,nope"]) == 2
    assert "unknown scheduler 'nope'" in capsys.readouterr().err
