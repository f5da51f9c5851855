from tests.conftest import make_engine, spec

from llmsched_env import BatchPlan, make_scheduler, run


def test_fcfs_runs_hand_workload_to_completion():
    eng = make_engine([spec(0, prompt=10, output=3), spec(1, arrival=0.05, prompt=6, output=2)])
    s = run(eng, make_scheduler("fcfs"))
    assert s["num_finished"] == 2
    assert all(r.num_generated == r.output_len for r in eng.finished)
    assert eng.used_blocks == 0


def test_scheduler_spec_options():
    import pytest

    from llmsched_env.scheduler import UnknownScheduler, parse_spec
    assert parse_spec("vllm-v1:policy=priority,token_budget=256") == ("vllm-v1", {"policy": "priority",
                                                                               "token_budget": 256})
    s = make_scheduler("vllm-v1:policy=priority")
    assert s.policy == "priority"
    with pytest.raises(ValueError, match="not key=value"):
        make_scheduler("vllm-v1:priority")
    with pytest.raises(ValueError, match="bad options for scheduler 'fcfs'"):
        make_scheduler("fcfs:nope=1")
    with pytest.raises(UnknownScheduler, match="registered: .*sarathi"):
        make_scheduler("nope")
