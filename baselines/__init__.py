"""Heuristic scheduler baselines, one module per scheduler; importing this package registers
them all (``llmsched_env.scheduler.REGISTRY``)."""
from . import vllm_v1  # noqa: F401
from . import optimal  # noqa: F401
