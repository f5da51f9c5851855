"""The vLLM adapter's pieces that need no vLLM: policy specs (LLMSCHED_POLICY)."""
from __future__ import annotations

import pytest

from agents.vllm_adapter import PolicySpecError, parse_policy_spec, policy_from_spec


@pytest.mark.parametrize("spec, expected", [
    ("fcfs", ("fcfs", {})),
    (" sarathi:token_budget=512 ", ("sarathi", {"token_budget": 512})),
    ("vllm-v1:policy=priority,token_budget=256", ("vllm-v1", {"policy": "priority",
                                                              "token_budget": 256})),
    ("x:a=0.5,b=None,c='s'", ("x", {"a": 0.5, "b": None, "c": "s"})),
    ("onnx:/models/export-1", ("onnx", {"path": "/models/export-1"})),
])
def test_parse_policy_spec(spec, expected):
    assert parse_policy_spec(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("", "empty policy spec"),
    (":a=1", "no scheduler name"),
    ("fcfs:token_budget=1,oops", "not key=value"),
    ("fcfs:1x=2", "not key=value"),
])
def test_bad_policy_spec(spec, message):
    with pytest.raises(PolicySpecError, match=message):
        parse_policy_spec(spec)


def test_policy_from_spec():
    policy = policy_from_spec("vllm-v1:policy=priority,token_budget=128")
    assert (policy.name, policy.policy, policy.token_budget) == ("vllm-v1", "priority", 128)
    with pytest.raises(PolicySpecError, match="unknown scheduler 'nope'; registered: .*fcfs"):
        policy_from_spec("nope")
    with pytest.raises(PolicySpecError, match="bad options for 'fcfs'"):
        policy_from_spec("fcfs:chunk=3")
