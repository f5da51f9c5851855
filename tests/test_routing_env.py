"""llmsched/Routing-v0 under both checkers, its return, the learned router's save/load, and the
multi-turn conversation workload that affinity routing exploits."""
from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

import llmsched_env  # noqa: F401  (registers the env ids)
from llmsched_env.cluster import Cluster, replicas_from_preset
from llmsched_env.router import make_router
from llmsched_env.routing_env import REPLICA_FEATURES, REQUEST_FEATURES, RoutingEnv
from llmsched_env.workload import WorkloadConfig, build_workload

pytestmark = pytest.mark.usefixtures("shared_data")


def test_routing_env_passes_gymnasium_and_sb3_checkers():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env
    env = gym.make("llmsched/Routing-v0", num_requests=40)
    check_env(env.unwrapped)
    sb3_check_env(RoutingEnv(num_requests=40), warn=True)
    assert env.observation_space.shape == (4 * len(REPLICA_FEATURES) + len(REQUEST_FEATURES),)


def test_return_is_met_minus_missed_and_equals_the_router_run():
    env = RoutingEnv(num_requests=120, rate_range=(18.0, 18.0))
    specs = env.episode_workload(3)
    obs, _ = env.reset(seed=3)
    ret, done, n = 0.0, False, 0
    while not done:
        assert env.observation_space.contains(obs)
        obs, r, done, trunc, info = env.step(n % 4)
        ret += r
        n += 1
    m = info["metrics"]
    assert n == len(specs) == m["num_requests"] and not trunc
    assert ret == m["num_slo_met"] - (m["num_requests"] - m["num_slo_met"])
    same = Cluster(env.cluster.specs, "round-robin").run(specs)
    assert same["slo_attainment"] == m["slo_attainment"] and same["num_steps"] == m["num_steps"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not a replica index in 0..3"):
        env.step(4)


def test_observation_is_scale_free():
    # the same load per replica on 4x the KV and 4x the budget: no feature leaves its range
    env = RoutingEnv(num_requests=60)
    big = RoutingEnv(num_requests=60, num_kv_blocks=4096)
    for e in (env, big):
        obs, _ = e.reset(seed=1)
        done = False
        while not done:
            assert obs.min() >= 0 and obs.max() <= 10
            obs, _, done, _, _ = e.step(int(np.argmin(obs[2::len(REPLICA_FEATURES)][:4])))


def test_learned_router_round_trip_and_weights_only_loading(tmp_path):
    from agents.router_policy import build_policy, load_router_policy, save_router
    import torch as th
    th.manual_seed(0)
    pol = build_policy(4, [16])
    save_router(pol, tmp_path / "r", 4, [16], {"scheduler": "sarathi"})
    env = RoutingEnv(num_requests=80)
    specs = env.episode_workload(5)
    runs = [Cluster(env.cluster.specs, make_router(f"learned:path={tmp_path / 'r'}")) for _ in range(2)]
    for c in runs:
        c.run(specs)
    assert runs[0].assignment == runs[1].assignment and len(set(runs[0].assignment.values())) > 1
    with pytest.raises(ValueError, match="for 4 replicas; the cluster has 2"):
        Cluster(replicas_from_preset("h100-llama3-8b", 2), make_router(f"learned:path={tmp_path / 'r'}")).run(specs)

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('code ran')",))
    (tmp_path / "r" / "router.pt").write_bytes(pickle.dumps(Boom(), protocol=2))
    with pytest.raises(ValueError, match="router.pt: cannot load the weights"):
        load_router_policy(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="not a router directory"):
        make_router(f"learned:path={tmp_path}")


def test_shipped_router_loads():
    r = make_router("learned")
    assert r.meta["num_replicas"] == 4 and r.meta["scheduler"] == "sarathi"


def test_conversations_keep_the_trace_and_chain_histories():
    base = WorkloadConfig(num_requests=600, arrival="trace", window_start=0, rate_scale=4.0)
    plain = build_workload(base)
    conv = build_workload(base.with_(conversation_turns=3.0, think_time_s=10.0))
    assert all(s.prefix_group is None for s in plain)
    assert [(s.arrival_s, s.prompt_len, s.output_len) for s in conv] == \
        [(s.arrival_s, s.prompt_len, s.output_len) for s in plain]
    last: dict = {}
    follow = 0
    for s in conv:
        g = s.prefix_group
        if g in last:
            prev = last[g]
            assert s.prefix_len == min(s.prompt_len, prev.prompt_len + prev.output_len) > 0
            assert s.arrival_s >= prev.arrival_s
            follow += 1
        else:
            assert s.prefix_len == 0
        last[g] = s
    assert 0.4 < follow / len(conv) < 0.8  # mean 3 turns: about 2/3 of requests are follow-ups
    assert build_workload(base.with_(conversation_turns=3.0, think_time_s=10.0)) == conv
    with pytest.raises(ValueError, match="conversation_turns=0.5 must be >= 1"):
        WorkloadConfig(conversation_turns=0.5)


def test_affinity_keeps_conversations_together_on_the_trace():
    wl = WorkloadConfig(num_requests=400, arrival="trace", window_start=0, rate_scale=8.0,
                        conversation_turns=4.0, think_time_s=5.0, oversize="drop", max_total_len=8192)
    specs = build_workload(wl)
    reps = replicas_from_preset("h100-llama3-8b", 4, "sarathi")

    def stayed(router):
        """Fraction of follow-up turns routed where the conversation's previous turn went."""
        c = Cluster(reps, router)
        c.run(specs)
        last, same, n = {}, 0, 0
        for s in specs:
            i = c.assignment[s.rid]
            if s.prefix_group in last:
                same += last[s.prefix_group] == i
                n += 1
            last[s.prefix_group] = i
        return same / n
    aff, rr = stayed("affinity"), stayed("round-robin")
    assert aff > 0.75 and rr < 0.4


def test_routing_eval_moves_episodes_off_the_training_distribution(tmp_path):
    import json

    from eval.routing_eval import main, make_env
    from llmsched_env.presets import get_preset
    whole = get_preset("h100-llama3-8b").engine_config().num_kv_blocks
    env = make_env(2, "sarathi", trace="arxiv_summarization_stats_llama2_tokenizer_filtered_v2",
                   num_kv_blocks=0, rates=(4.0, 5.0))
    assert [s.config.num_kv_blocks for s in env.cluster.specs] == [whole, whole]
    assert env.rate_range == (4.0, 5.0) and env.workload.trace.startswith("arxiv")
    assert make_env(2, "sarathi").cluster.specs[0].config.num_kv_blocks == 1024
    out = tmp_path / "r.json"
    assert main(["--episodes", "1", "--num-kv-blocks", "2048", "--rates", "30,31", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["off_distribution"] == {"num_kv_blocks": 2048, "rates": [30.0, 31.0]}
    for bad in (["--rates", "3"], ["--trace", "no_such_trace"], ["--rates", "5,4"]):
        with pytest.raises(SystemExit):
            main(["--episodes", "1", *bad])
