"""train/ppo.py: the Args defaults are the recipe, configs override only what differs, bad
arguments fail at once, a tiny run end to end (search, critic warm start, PPO, final table),
its time limit holds, and --resume continues a run."""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "train"))
import ppo  # noqa: E402

from agents.policy import DEFAULT_PATH, LoadedPolicy  # noqa: E402

pytestmark = pytest.mark.usefixtures("shared_data", "torch_one_thread")

TINY = ["--total-steps", "256", "--n-steps", "64", "--batch-size", "64", "--n-epochs", "1",
        "--search-generations", "1", "--search-popsize", "2", "--search-episodes", "1",
        "--value-episodes", "1", "--value-epochs", "1", "--eval-interval", "128", "--eval-episodes", "1",
        "--final-episodes", "1", "--workers", "1", "--n-envs", "1", "--hidden", "8"]


ROUTING_ONLY = ("replicas", "replica_scheduler", "init_router", "clone_episodes", "clone_epochs", "final_routers")
ROUTING_TINY = ["--scenario", "routing", "--total-steps", "256", "--n-steps", "128", "--batch-size", "64",
                "--n-epochs", "1", "--clone-episodes", "1", "--clone-epochs", "1", "--eval-episodes", "1",
                "--final-episodes", "2", "--workers", "1", "--final-routers", "round-robin", "kv-aware"]


def test_configs_name_only_known_fields_and_parse():
    for path in sorted((ROOT / "train" / "configs").glob("*.yaml")):
        a = ppo.parse_args(["--config", str(path)])
        assert a.config == str(path)
    a = ppo.parse_args(["--config", str(ROOT / "train/configs/demo.yaml"), "--seed", "3"])
    assert a.seed == 3  # flags override the file


@pytest.mark.parametrize("argv, words", [
    (["--scenario", "nope"], "unknown"), (["--init-rule", "lifo"], "init_rule"),
    (["--init-rule", "none"], "search needs a start rule"), (["--n-envs", "0"], "n_envs"),
    (["--time-limit", "0"], "time_limit"), (["--gamma", "1.5"], "gamma"),
    (["--final-scenario", "nope"], "final_scenario"),
    (["--scenario", "routing", "--init-router", "nope"], "init_router"),
    (["--scenario", "routing", "--use-sde"], "discrete"),
    (["--scenario", "routing", "--final-routers", "nope"], "final_routers"),
    (["--scenario", "routing", "--replica-scheduler", "nope"], "replica_scheduler")])
def test_bad_arguments_fail_at_once(argv, words):
    with pytest.raises(SystemExit, match=words):
        ppo.parse_args(argv)


def test_bad_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("num_slots: 3\n")
    with pytest.raises(SystemExit, match="unknown field"):
        ppo.parse_args(["--config", str(tmp_path / "c.yaml")])
    with pytest.raises(SystemExit, match="no such file"):
        ppo.parse_args(["--config", str(tmp_path / "none.yaml")])


def test_tiny_run_end_to_end_then_resume(tmp_path):
    out = tmp_path / "run"
    s = ppo.main([*TINY, "--out", str(out)])
    for name in ("policy", "policy_best", "policy_search"):
        LoadedPolicy(out / name)
    assert (out / "checkpoint" / "model.zip").is_file() and (out / "curve.csv").is_file()
    res = json.loads((out / "results.json").read_text())
    assert res["final"]["episodes"] == 1 and "slai" in res["final"]["schedulers"]
    assert s["stages"]["ppo"]["decisions"] >= 256
    s2 = ppo.main([*TINY, "--out", str(out), "--resume", "--total-steps", "384"])
    assert s2["stages"]["ppo"]["decisions"] >= 384


def test_time_limit_bounds_the_whole_command(tmp_path):
    t = time.monotonic()
    ppo.main([*TINY, "--out", str(tmp_path / "r"), "--total-steps", "1000000", "--search-generations", "1000",
              "--time-limit", "25"])
    assert time.monotonic() - t < 25 + 10  # process start-up of the pools is outside the search's share


@pytest.mark.skipif(not (DEFAULT_PATH / "policy.npz").is_file(), reason="no shipped policy yet")
def test_defaults_are_the_shipped_recipe():
    recipe = LoadedPolicy(DEFAULT_PATH).meta["args"]
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(ppo.Args()).items()}
    report_only = ("out", "config", "time_limit", "workers", "final_episodes", "final_schedulers", "final_scenario",
                   *ROUTING_ONLY)
    differ = {k for k in defaults if k not in report_only and recipe.get(k) != defaults[k]}
    assert not differ, f"agents/zoo/default was trained with other values of {sorted(differ)}"
    assert yaml.safe_load((ROOT / "train/configs/default.yaml").read_text()) in (None, {})


def test_routing_scenario_starts_from_the_routing_recipe():
    a = ppo.parse_args(["--scenario", "routing"])
    assert a.config.endswith("routing.yaml") and not a.use_sde and a.n_envs == 1 and a.init_router == "kv-aware"


def test_routing_run_end_to_end(tmp_path):
    from llmsched_env.router import make_router
    out = tmp_path / "router_run"
    s = ppo.main([*ROUTING_TINY, "--out", str(out)])
    assert s["stages"]["clone"]["samples"] == 400 and s["stages"]["ppo"]["decisions"] >= 256
    make_router(f"learned:path={out / 'router'}")
    make_router(f"learned:path={out / 'router_best'}")
    meta = yaml.safe_load((out / "router" / "router.yaml").read_text())
    assert meta["command"] == "python train/ppo.py " + shlex.join([*ROUTING_TINY, "--out", str(out)])
    res = json.loads((out / "results.json").read_text())["final"]
    assert res["episodes"] == 2 and set(res["routers"]) == {res["learned"], "round-robin", "kv-aware"}
    d = res["routers"]["kv-aware"]["learned_minus"]
    assert d["n"] == 2 and d["low"] <= d["mean"] <= d["high"]
    assert (out / "curve.csv").is_file() and (out / "checkpoint" / "model.zip").is_file()
