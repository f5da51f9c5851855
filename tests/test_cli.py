"""The llmsched CLI end to end (small runs)."""
import json
import subprocess
import sys

import pytest

from llmsched_env.cli import main
from llmsched_env.metrics import SUMMARY_KEYS


def test_simulate_writes_json(shared_data, tmp_path):
    out = tmp_path / "m.json"
    rc = main(["simulate", "--scheduler", "fcfs", "--preset", "h100-llama3-8b", "--trace", "splitwise_conv",
               "--num-requests", "300", "--window-start", "0", "--rate-scale", "2", "--json", str(out),
               "--no-progress"])
    assert rc == 0
    s = json.loads(out.read_text())
    assert set(SUMMARY_KEYS) <= set(s)
    assert s["num_requests"] == s["num_finished"] == 300


def test_simulate_is_deterministic(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"{i}.json"
        main(["simulate", "--synthetic", "--lengths", "lognormal", "--rate", "8", "--num-requests", "200",
              "--preset", "infermax-a100-llama2-7b", "--seed", "3", "--json", str(out), "--no-progress"])
        s = json.loads(out.read_text())
        s.pop("wall_s"), s.pop("steps_per_s")
        outs.append(s)
    assert outs[0] == outs[1]


@pytest.mark.parametrize("args, msg", [
    (["simulate", "--preset", "nope"], "unknown preset 'nope'"),
    (["simulate", "--scheduler", "nope", "--synthetic", "--num-requests", "5"], "unknown scheduler 'nope'"),
    (["simulate", "--trace", "/nonexistent.csv"], "trace not found"),
    (["simulate", "--synthetic", "--num-requests", "0"], "--num-requests must be >= 1"),
    (["simulate", "--synthetic", "--num-requests", "5", "--token-budget", "0"], "max_num_batched_tokens=0"),
])
def test_bad_input_fails_clearly(args, msg):
    if "--preset" not in args:  # a preset that needs no reference data
        args = [*args, "--preset", "infermax-a100-llama2-7b"]
    r = subprocess.run([sys.executable, "-m", "llmsched_env.cli", *args], capture_output=True, text=True)
    assert r.returncode != 0
    assert msg in r.stderr


def test_oversize_request_rejected_with_numbers(shared_data):
    r = subprocess.run([sys.executable, "-m", "llmsched_env.cli", "simulate", "--preset", "h100-llama2-7b",
                        "--trace", "splitwise_conv", "--num-requests", "400", "--window-start", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "> max_model_len 4096" in r.stderr and "--oversize" in r.stderr


def test_goodput_sweep(tmp_path):
    out = tmp_path / "g.json"
    rc = main(["goodput", "--synthetic", "--lengths", "fixed", "--prompt-len", "256", "--output-len", "64",
               "--num-requests", "150", "--preset", "infermax-a100-llama2-7b", "--rates", "1,4,16,64,256",
               "--slo-ttft", "0.5", "--slo-tbt", "0.1", "--json", str(out)])
    assert rc == 0
    g = json.loads(out.read_text())
    pts = dict(map(tuple, g["points"]))
    assert pts[1.0] >= 0.9 and g["goodput"] >= 1.0
    assert not g["saturated_at_max"] and min(pts.values()) < 0.9


def test_oversize_drop_also_guards_kv_capacity(tmp_path):
    out = tmp_path / "m.json"
    rc = main(["simulate", "--synthetic", "--lengths", "fixed", "--prompt-len", "300", "--output-len", "10",
               "--num-requests", "5", "--preset", "infermax-a100-llama2-7b", "--num-kv-blocks", "10",
               "--oversize", "drop", "--json", str(out), "--no-progress"])
    assert rc == 2  # every request is longer than the 160-token cache: nothing left to simulate
    rc = main(["simulate", "--synthetic", "--lengths", "fixed", "--prompt-len", "100", "--output-len", "10",
               "--num-requests", "5", "--preset", "infermax-a100-llama2-7b", "--num-kv-blocks", "10",
               "--oversize", "clip", "--json", str(out), "--no-progress"])
    assert rc == 0 and json.loads(out.read_text())["num_finished"] == 5


@pytest.mark.parametrize("argv, words", [
    (["simulate", "--rate", "0"], "--rate must be"),
    (["simulate", "--gpu-mem-util", "2"], "--gpu-mem-util"),
    (["simulate", "--slo-ttft", "-1"], "ttft_s=-1.0"),
    (["simulate", "--slo-tbt", "nan"], "tbt_s=nan"),
    (["goodput", "--threshold", "2"], "--threshold"),
    (["simulate", "--block-size", "0"], "--block-size must be"),
    (["simulate", "--scheduler", "sarathi:token_budget=abc"], "token_budget='abc' must be int"),
    (["simulate", "--swap-space", "-1"], "--swap-space must be"),
])
def test_impossible_inputs_exit_2_with_a_message_naming_them(argv, words, capsys):
    from llmsched_env.cli import main
    try:
        rc = main([*argv, "--num-requests", "5", "--synthetic"])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    assert words in capsys.readouterr().err


def test_a_trace_with_a_utf8_bom_keeps_its_columns(tmp_path):
    from llmsched_env.workload import load_trace
    text = "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,5\n0.5,20,6\n"
    (tmp_path / "t.csv").write_text("\ufeff" + text, encoding="utf-8")
    t = load_trace(str(tmp_path / "t.csv"))
    assert t.arrival_s is not None and list(t.prompt_len) == [10, 20]


def test_simulate_with_swap_preemption_reports_the_host_copies(tmp_path):
    out = tmp_path / "s.json"
    argv = ["simulate", "--scheduler", "vllm-v0", "--synthetic", "--lengths", "fixed", "--prompt-len", "200",
            "--output-len", "200", "--num-requests", "40", "--arrival", "poisson", "--rate", "50",
            "--num-kv-blocks", "200", "--no-progress", "--json", str(out)]
    assert main([*argv, "--preemption-mode", "swap"]) == 0
    s = json.loads(out.read_text())
    assert s["num_finished"] == 40 and s["num_swap_outs"] > 0 and s["recomputed_tokens"] == 0
    assert s["transfer_s"] > 0 and s["swapped_blocks"] > 0
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["num_swap_outs"] == 0 and r["recomputed_tokens"] > 0


def test_simulate_with_prefix_caching_reuses_conversation_history(tmp_path):
    """On by default (as in vLLM v1); --no-prefix-caching turns it off."""
    out = tmp_path / "p.json"
    argv = ["simulate", "--num-requests", "300", "--conversation-turns", "4", "--no-progress", "--json", str(out)]
    assert main([*argv, "--no-prefix-caching"]) == 0
    off = json.loads(out.read_text())
    assert main(argv) == 0
    on = json.loads(out.read_text())
    assert main([*argv, "--prefix-caching"]) == 0
    again = json.loads(out.read_text())
    assert again["processed_tokens"] == on["processed_tokens"] and again["prefix_hit_tokens"] == on["prefix_hit_tokens"]
    assert off["prefix_hit_tokens"] == 0 and on["prefix_hit_tokens"] > 0
    assert on["processed_tokens"] == off["processed_tokens"] - on["prefix_hit_tokens"]  # no preemption here
    assert off["num_preemptions"] == on["num_preemptions"] == 0
