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


def test_readme_status_line_says_where_the_policy_beats_ties_or_loses():
    def res(setting, low, mean, high):
        return {"setting": setting, "episodes": 20, "best": "slai",
                "heuristics": {"slai": {"return": 50.0, "policy_minus_return": {"low": low, "mean": mean, "high": high}}}}
    line = pvh.status([res("default", 1.0, 5.0, 9.0), res("heavy", -1.0, 1.0, 3.0), res("arxiv", -4.0, -2.0, -0.5)])
    assert "beats the best heuristic in 1 of 3 settings (default +10.0% vs slai)" in line
    assert "ties the best heuristic in 1 of 3 settings (heavy +2.0% vs slai)" in line
    assert "loses to the best heuristic in 1 of 3 settings (arxiv -4.0% vs slai)" in line
