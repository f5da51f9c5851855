"""The one runner: the same results in this process, on a spawn pool of any size and on Ray; a
learned policy's spec in the parent no longer hangs ``llmsched compare``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from baselines.compare import compare
from llmsched_env import runner
from llmsched_env.workload import WorkloadConfig

ROOT = Path(__file__).resolve().parents[1]
WL = WorkloadConfig(num_requests=30, lengths="fixed", prompt_len=200, output_len=20, rate=15.0, trace=None)


def _strip(result: dict) -> dict:
    """A compare result without wall-clock times."""
    for runs in result["runs"].values():
        for r in runs:
            r.pop("wall_s", None)
            r.pop("steps_per_s", None)
    return result


def _square_or_fail(x):
    if x == 3:
        raise ValueError("three")
    return x * x


def test_results_are_in_job_order_and_errors_are_mapped():
    jobs = list(range(6))
    want = [0, 1, 4, "ValueError: three", 16, 25]
    on_error = lambda e: f"{type(e).__name__}: {e}"  # noqa: E731
    assert runner.run_jobs(_square_or_fail, jobs, workers=1, progress=False, on_error=on_error) == want
    assert runner.run_jobs(_square_or_fail, jobs, workers=2, progress=False, on_error=on_error) == want
    with pytest.raises(ValueError, match="three"):
        runner.run_jobs(_square_or_fail, jobs, workers=1, progress=False)
    with pytest.raises(ValueError, match="workers=0"):
        runner.run_jobs(_square_or_fail, jobs, workers=0)


def test_compare_is_the_same_for_any_worker_count():
    kw = dict(schedulers=["fcfs", "sarathi"], seeds=2, progress=False, engine_overrides={"num_kv_blocks": 256})
    one = _strip(compare(WL, workers=1, **kw))
    two = _strip(compare(WL, workers=2, **kw))
    assert one == two and one["mean"]["fcfs"] != one["mean"]["sarathi"]
    c1 = _strip(compare(WL, routers=["p2c", "least-tokens"], replicas=3, workers=1, **kw))
    c2 = _strip(compare(WL, routers=["p2c", "least-tokens"], replicas=3, workers=2, **kw))
    assert c1 == c2 and set(c1["mean"]) == {"p2c/fcfs", "p2c/sarathi", "least-tokens/fcfs", "least-tokens/sarathi"}
    assert c1["replicas"] == 3 and "load_imbalance" in c1["mean"]["p2c/fcfs"]


def test_ray_backend_gives_the_same_results():
    ray = pytest.importorskip("ray", reason="ray not installed (pip install 'llmsched[ray]')")
    kw = dict(schedulers=["fcfs", "sarathi"], seeds=2, progress=False, engine_overrides={"num_kv_blocks": 256})
    local = _strip(compare(WL, workers=1, **kw))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    try:
        assert _strip(compare(WL, workers=2, ray=True, **kw)) == local
        on_error = lambda e: f"{type(e).__name__}: {e}"  # noqa: E731
        assert runner.run_jobs(_square_or_fail, range(5), workers=2, ray=True, progress=False,
                               on_error=on_error) == [0, 1, 4, "ValueError: three", 16]
        assert ray.is_initialized()  # the runner leaves a Ray instance it did not start
    finally:
        ray.shutdown()


def test_missing_ray_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(runner.RayUnavailable, match=r"pip install 'llmsched\[ray\]'"):
        runner.run_jobs(_square_or_fail, [1], ray=True, progress=False)
    from llmsched_env.cli import main
    assert main(["compare", "--synthetic", "--num-requests", "5", "--schedulers", "fcfs", "--ray",
                 "--no-progress"]) == 2
    assert "Ray is not installed" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_compare_with_a_learned_policy_does_not_hang(workers, tmp_path):
    # issue 15: torch imported in the parent (validating the ppo spec), then a fork pool: hung
    # forever. The exact command, on a small window of the trace so that it ends in seconds.
    out = tmp_path / "cmp.json"
    cmd = [sys.executable, "-m", "llmsched_env.cli", "compare", "--schedulers", "ppo:path=agents/zoo/default,slai",
           "--workers", workers, "--seeds", "1", "--num-requests", "4", "--window-start", "0", "--no-progress",
           "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert set(r["mean"]) == {"ppo:path=agents/zoo/default", "slai"} and not r["errors"]
