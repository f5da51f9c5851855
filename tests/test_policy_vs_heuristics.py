"""eval/policy_vs_heuristics.py and eval/env_baselines.py run their episodes through the one
runner: the same numbers in this process and on a spawn pool, paired differences per setting."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from eval import policy_vs_heuristics as pvh  # noqa: E402

pytestmark = pytest.mark.usefixtures("shared_data")


def test_same_results_serially_and_on_a_pool(tmp_path):
    out = {}
    for jobs in (1, 2):
        path = tmp_path / f"r{jobs}.json"
        argv = ["--settings", "default", "--episodes", "2", "--heuristics", "fcfs", "--workers", str(jobs),
                "--json", str(path)]
        assert pvh.main(argv) == 0
        out[jobs] = json.loads(path.read_text())
    assert out[1] == out[2]
    (res,) = out[1]
    assert res["setting"] == "default" and res["episodes"] == 2
    d = res["heuristics"]["fcfs"]["policy_minus_return"]
    assert d["n"] == 2 and d["low"] <= d["mean"] <= d["high"]


def test_env_baselines_same_results_serially_and_on_a_pool(tmp_path):
    from eval import env_baselines
    out = []
    for workers in (1, 2):
        path = tmp_path / f"b{workers}.json"
        assert env_baselines.main(["--episodes", "2", "--schedulers", "fcfs,slai", "--workers", str(workers),
                                   "--json", str(path)]) == 0
        out.append(json.loads(path.read_text()))
    assert out[0] == out[1] and set(out[0]) == {"fcfs", "slai"}
