"""llmsched_env: a serving engine, a calibrated batch cost model, workloads, metrics, the
Scheduler protocol, and the Gymnasium environment around them."""
from .cost_model import BatchShape, CalibratedCostModel, CostModel, InferMaxCostModel, LinearCostModel
from .engine import Engine, EngineConfig, SchedulerStalled, StepResult, WorkloadRejected
from .plan import BatchPlan, PlanError
from .presets import Preset, get_preset, list_presets
from .request import Request, RequestSpec
from .scheduler import EngineView, Scheduler, available_schedulers, make_scheduler, register
from .simulate import goodput, run, simulate
from .workload import SLOClass, TraceError, WorkloadConfig, build_workload, load_trace
from .env import ServingEnv
from .scenarios import ENV_IDS, Scenario, get_scenario, list_scenarios


def _register_envs() -> None:
    """Register every scenario's Gymnasium id (``gymnasium.make("llmsched/Serving-v1")``)."""
    import gymnasium

    for name, env_id in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point="llmsched_env.env:ServingEnv",
                               kwargs={"scenario": name})
    if "llmsched/Routing-v0" not in gymnasium.registry:
        gymnasium.register(id="llmsched/Routing-v0", entry_point="llmsched_env.routing_env:RoutingEnv")


_register_envs()

__version__ = "0.1.0"
__all__ = ["BatchPlan", "BatchShape", "CalibratedCostModel", "CostModel", "Engine", "EngineConfig",
           "InferMaxCostModel", "LinearCostModel", "PlanError", "Preset", "Request", "RequestSpec", "SLOClass", "Scheduler", "EngineView",
           "Scenario", "SchedulerStalled", "ServingEnv", "StepResult", "TraceError", "WorkloadConfig", "WorkloadRejected",
           "available_schedulers", "build_workload", "get_scenario", "list_scenarios", "get_preset", "goodput", "list_presets", "load_trace",
           "make_scheduler", "register", "run", "simulate"]
