"""Heuristic scheduler baselines, one module per scheduler; importing this package registers
them all (``llmsched_env.scheduler.REGISTRY``)."""
from . import (edf, fastserve, faster_transformer, infermax_srf, lightllm, ltr, no_preempt, orca,  # noqa: F401
               sarathi, sglang, slai, srpt, trtllm_max_util, trtllm_no_evict, vllm_v0,
               vllm_v1)
from . import optimal  # noqa: F401
