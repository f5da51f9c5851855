"""Imported first by the tests that need vLLM: skips the importing test module when vLLM is not
installed, except under ``make test-vllm`` (``LLMSCHED_REQUIRE_VLLM=1``), where a missing vLLM is
a failure."""
import os

import pytest

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
if os.environ.get("LLMSCHED_REQUIRE_VLLM"):
    import vllm.v1.core.sched.scheduler  # noqa: F401
pytest.importorskip(
    "vllm.v1.core.sched.scheduler",
    reason="vLLM is not installed: run `make test-vllm` (installs the .[vllm] extra and vllm "
           "0.33.0 with --no-deps via scripts/install_vllm.sh)")
