"""pytest-benchmark: engine + FCFS steps on a 2,000-request window of splitwise_conv.
Run with `make bench` (benchmarks are disabled in the normal test run, executed once as a check)."""
import pytest

from llmsched_env import Engine, WorkloadConfig, build_workload, get_preset, make_scheduler, run


@pytest.mark.benchmark(group="engine")
def test_engine_fcfs_2000_requests(benchmark, shared_data):
    preset = get_preset("h100-llama3-8b")
    specs = build_workload(WorkloadConfig(num_requests=2000, arrival="trace", trace="splitwise_conv",
                                          window_start=0, rate_scale=4.0, oversize="clip",
                                          max_total_len=preset.shape.max_model_len))

    def once():
        return run(Engine(specs, preset.engine_config(), preset.cost_model), make_scheduler("fcfs"))

    s = benchmark(once)
    assert s["num_finished"] == 2000
