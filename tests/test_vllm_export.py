"""A learned policy scheduling vLLM's real v1 scheduler through the hook, chosen the way a
server chooses it: ``LLMSCHED_POLICY=onnx:DIR`` (the ONNX export) or ``ppo:path=DIR``. Needs the
``vllm`` extra (``make test-vllm``); skipped otherwise, like tests/test_vllm_hook.py."""
from __future__ import annotations

import pytest

import tests.vllm_required  # noqa: E402,F401  (skips this module without vLLM)

from agents.export import export_policy  # noqa: E402
from agents.onnx_runtime import OnnxScheduler  # noqa: E402
from agents.policy import DEFAULT_PATH, PPOScheduler, save_policy  # noqa: E402
from llmsched_env.agent import AgentSpec  # noqa: E402
from tests.test_policy import random_actor  # noqa: E402
from tests.test_vllm_hook import build, model_config, run_checked  # noqa: E402, F401

# (prompt, output) tokens, served with a 2048-token budget
LENGTHS = [(300, 6), (70, 9), (520, 4), (100, 12), (9, 20), (1500, 3), (33, 7), (260, 5)]


@pytest.fixture(scope="module")
def policy_dirs(tmp_path_factory):
    """A random policy and, when shipped, agents/zoo/default; each with its ONNX export."""
    root = tmp_path_factory.mktemp("policies")
    dirs = [save_policy(root / "random", random_actor(7, hidden=(64, 64)), AgentSpec())]
    if (DEFAULT_PATH / "policy.npz").is_file():
        dirs.append(DEFAULT_PATH)
    out = []
    for d in dirs:
        e = root / f"export-{d.name}"
        export_policy(d, e, verify_steps=0)
        out.append((d, e))
    return out


@pytest.mark.parametrize("kind", ["onnx", "ppo"])
def test_learned_policy_serves_vllm_to_completion(model_config, policy_dirs, kind, monkeypatch):  # noqa: F811
    """Every request finishes; each step vLLM scheduled exactly the plan the policy made (tokens
    per request, admissions in order, preemptions), with no fallback to vLLM's rules."""
    for policy_dir, export_dir in policy_dirs:
        spec = f"onnx:{export_dir}" if kind == "onnx" else f"ppo:path={policy_dir}"
        monkeypatch.setenv("LLMSCHED_POLICY", spec)
        sched = build(model_config, policy=None, num_blocks=200, budget=2048, max_seqs=6)
        assert isinstance(sched.llmsched_policy, OnnxScheduler if kind == "onnx" else PPOScheduler)
        plans, _ = run_checked(sched, LENGTHS)
        st = sched.hook_stats
        assert st.policy_steps == len(plans) > 0 and st.policy_errors == 0, policy_dir
        assert not st.fallback_steps and st.fallback_preemptions == 0 and st.ignored == 0
        assert sched.llmsched_policy.agent.num_decisions >= 1


class FakeClock:
    """A deterministic hook clock: 2 ms per reading, from ``start`` seconds."""

    def __init__(self, start: float):
        self.t = start

    def __call__(self) -> float:
        self.t += 0.002
        return self.t


def test_an_hour_old_server_gets_the_same_plans(model_config, policy_dirs, monkeypatch):  # noqa: F811
    """The observation has no uptime feature: the same requests on a server that has served for
    an hour (clock and busy time an hour on) get exactly the plans of a fresh server."""
    monkeypatch.setenv("LLMSCHED_TTFT_SLO_S", "0.5")
    monkeypatch.setenv("LLMSCHED_TBT_SLO_S", "0.06")
    policy_dir = policy_dirs[-1][0]
    runs = []
    for uptime in (0.0, 3600.0):
        monkeypatch.setenv("LLMSCHED_POLICY", f"ppo:path={policy_dir}")
        sched = build(model_config, policy=None, num_blocks=200, budget=2048, max_seqs=6)
        sched.clock = FakeClock(1000.0)
        sched._t0 = 1000.0 - uptime
        sched._busy_s = 0.8 * uptime
        plans, _ = run_checked(sched, LENGTHS)
        runs.append([(p.tokens, p.preempt) for p in plans])
        assert sched.llmsched_policy.agent.tracker.mean_batch_s < 1.0
    assert runs[0] == runs[1]


def test_memory_stays_flat_with_uptime(model_config):  # noqa: F811
    """3,000 requests through the hook with the shipped policy: the hook's per-request
    structures stay bounded by the live requests (the finished log by its capacity) and the heap
    does not grow between the first and the last thousand (eval/soak_vllm_hook.py runs 100k)."""
    from eval.soak_vllm_hook import soak
    s = soak(model_config, 3000, "ppo", active=32, every=1000, report=lambda line: None)
    assert len(s) == 3
    for sample in s:
        assert sample["records"] <= 64 and sample["by_rid"] <= 64 and sample["slo_tracker"] <= 64 + 256
    assert s[-1]["finished_kept"] <= 1024  # FinishedLog keeps max(4 x max_num_seqs, 1024)
    assert s[-1]["heap_mib"] - s[0]["heap_mib"] < 2.0, s


def test_finishing_requests_keep_their_seats_under_async_scheduling(model_config, policy_dirs, monkeypatch):  # noqa: F811
    """Under vLLM's async loop a request whose last token is in flight still holds its seat: the
    view gives the policy one seat fewer for each, so it never plans an admission vLLM refuses
    (every plan is carried out exactly, with few seats and many short requests)."""
    monkeypatch.setenv("LLMSCHED_POLICY", "fcfs")
    lengths = [(16 + (7 * i) % 40, 2 + i % 4) for i in range(40)]
    sched = build(model_config, policy=None, num_blocks=400, budget=2048, max_seqs=3, async_scheduling=True)
    plans, _ = run_checked(sched, lengths, max_steps=2000)
    assert not sched.hook_stats.refused_admissions and not sched.hook_stats.fallback_steps
