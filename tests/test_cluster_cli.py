"""``llmsched simulate --replicas`` and ``llmsched compare --routers``: every single-replica key,
plus the cluster's."""
from __future__ import annotations

import json

from llmsched_env.cli import main
from llmsched_env.metrics import SUMMARY_KEYS

WL = ["--synthetic", "--num-requests", "60", "--rate", "30", "--prompt-len", "300", "--output-len", "30",
      "--no-progress"]


def test_simulate_replicas_json_keeps_single_replica_keys(tmp_path, shared_data):
    one, many = tmp_path / "one.json", tmp_path / "many.json"
    assert main(["simulate", "--scheduler", "sarathi", "--json", str(one)] + WL) == 0
    assert main(["simulate", "--replicas", "3", "--router", "least-tokens", "--scheduler", "sarathi",
                 "--json", str(many)] + WL) == 0
    s1, s3 = json.loads(one.read_text()), json.loads(many.read_text())
    assert set(s1) - set(s3) == set() and set(SUMMARY_KEYS) <= set(s3)
    assert s3["replicas"] == 3 and s3["router"] == "least-tokens" and len(s3["per_replica"]) == 3
    assert sum(r["routed"] for r in s3["per_replica"]) == s3["num_requests"] == 60
    assert abs(sum(r["gpu_busy_s"] for r in s3["per_replica"]) - s3["gpu_busy_s"]) < 1e-9
    assert s3["num_gpus"] == 3 and {"load_imbalance", "gpu_seconds", "gpu_seconds_provisioned"} <= set(s3)


def test_simulate_one_replica_cluster_matches_simulate(tmp_path, shared_data):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["simulate", "--scheduler", "slai", "--json", str(a)] + WL) == 0
    assert main(["simulate", "--replicas", "1", "--scheduler", "slai", "--json", str(b)] + WL) == 0
    sa, sb = json.loads(a.read_text()), json.loads(b.read_text())
    for k in SUMMARY_KEYS:
        if k != "wall_s":
            assert sa[k] == sb[k], k


def test_simulate_bad_cluster_arguments(capsys, shared_data):
    assert main(["simulate", "--replicas", "0"] + WL) == 2
    assert "--replicas 0: must be >= 1" in capsys.readouterr().err
    assert main(["simulate", "--replicas", "2", "--router", "nope"] + WL) == 2
    assert "unknown router 'nope'" in capsys.readouterr().err
    assert main(["simulate", "--replicas", "3", "--preset", "h100-llama3-8b,a100-llama3-8b"] + WL) == 2
    assert "2 presets for 3 replicas" in capsys.readouterr().err


def test_compare_routers_table_and_json(tmp_path, capsys, shared_data):
    out = tmp_path / "cmp.json"
    assert main(["compare", "--replicas", "3", "--routers", "round-robin,lor,least-tokens,p2c", "--schedulers",
                 "sarathi", "--workers", "1", "--json", str(out)] + WL) == 0
    r = json.loads(out.read_text())
    assert r["routers"] == ["round-robin", "lor", "least-tokens", "p2c"] and r["replicas"] == 3
    assert set(r["mean"]) == set(r["routers"]) and r["schedulers"] == ["sarathi"]
    for m in r["mean"].values():
        assert {"slo_attainment", "ttft_p99_s", "gpu_busy_s", "load_imbalance", "num_finished"} <= set(m)
    text = capsys.readouterr().out
    assert "imbalance" in text and "least-tokens" in text and "3 x h100-llama3-8b" in text
