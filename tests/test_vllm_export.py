"""An exported (ONNX) policy scheduling vLLM's real v1 scheduler through the hook, chosen the way
a server chooses it: ``LLMSCHED_POLICY=onnx:DIR``. Needs the ``vllm`` extra (``make
test-vllm``); skipped otherwise, like tests/test_vllm_hook.py."""
from __future__ import annotations


import pytest

import tests.vllm_required  # noqa: E402,F401  (skips this module without vLLM)

import torch as th  # noqa: E402

from agents.export import export_policy  # noqa: E402
from agents.onnx_runtime import OnnxScheduler  # noqa: E402
from llmsched_env import ServingEnv  # noqa: E402
from tests.test_vllm_hook import build, model_config, run_checked  # noqa: E402, F401

# (prompt, output) tokens, served with vLLM's 2048-token budget (the policy's top two budget
# levels, 2048 and the engine's, both mean 2048 there)
LENGTHS = [(300, 6), (70, 9), (520, 4), (100, 12), (9, 20), (1500, 3), (33, 7), (260, 5)]


@pytest.fixture(scope="module", params=[{}, {"hint": "slai"}, {"veto": "slai"}],
                ids=["plain", "slai-hint", "slai-veto"])
def export_dir(tmp_path_factory, request):
    """An exported policy; the "slai-hint" one also sees slai's proposal (computed on the vLLM
    view inside the hook); the "slai-veto" one vetoes slai's admissions (randomly initialised),
    slai planning on the vLLM view."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from tests.test_export import SMALL, imitate
    from train.ppo import build_model, parse_args, save_policy
    th.set_num_threads(1)
    root = tmp_path_factory.mktemp("onnx-policy")
    env_kw = request.param
    a = parse_args(SMALL + [x for k, v in env_kw.items() for x in (f"--{k}", v)])
    model = build_model(a, DummyVecEnv([lambda: ServingEnv("default", **env_kw)]), {})
    if "veto" not in env_kw:
        imitate(model.policy, "sarathi", steps=10, **env_kw)
    export_policy(save_policy(a, model, root / "policy", env_kw, {}), root / "export", verify_steps=0)
    return root / "export"


def test_onnx_policy_serves_vllm_to_completion(model_config, export_dir, monkeypatch):  # noqa: F811
    """Every request finishes; each step vLLM scheduled exactly the plan the ONNX policy made
    (tokens per request, admissions in order, preemptions), with no fallback to vLLM's rules."""
    monkeypatch.setenv("LLMSCHED_POLICY", f"onnx:{export_dir}")
    sched = build(model_config, policy=None, num_blocks=200, budget=2048, max_seqs=6)
    assert isinstance(sched.llmsched_policy, OnnxScheduler)
    plans, _ = run_checked(sched, LENGTHS)
    st = sched.hook_stats
    assert st.policy_steps == len(plans) > 0 and st.policy_errors == 0
    assert not st.fallback_steps and st.fallback_preemptions == 0 and st.ignored == 0
    assert sum(len(p.tokens) > 1 for p in plans) > 0  # batches, not one request at a time
    if sched.llmsched_policy.layout.veto is None:
        assert sched.llmsched_policy._budget_map.tolist() == [0, 1, 2, 3, 3]
