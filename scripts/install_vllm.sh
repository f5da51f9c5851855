#!/usr/bin/env bash
# Install vLLM 0.33.0 for the scheduler hook (agents/vllm_hook.py) into a virtualenv, CPU only:
# torch 2.13 CPU first, then the project's [vllm] extra (vLLM's runtime dependencies), then vllm
# itself with --no-deps so pip cannot replace torch with the CUDA build vLLM declares.
# Usage: scripts/install_vllm.sh [PYTHON]   (default .venv/bin/python)
set -euo pipefail
VLLM_VERSION=0.33.0
PY=${1:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    echo "install_vllm.sh: no python at $PY; create the venv first (make setup) or pass one" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e ".[dev,vllm]"
"$PY" -m pip install -q --no-deps "vllm==$VLLM_VERSION"
VLLM_TARGET_DEVICE=cpu "$PY" -c "import vllm, vllm.v1.core.sched.scheduler; assert vllm.__version__ == '$VLLM_VERSION', vllm.__version__" \
    || { echo "install_vllm.sh: vllm $VLLM_VERSION installed but its scheduler does not import (see above)" >&2; exit 1; }
echo "vllm $VLLM_VERSION ready in $("$PY" -c 'import sys; print(sys.prefix)')"
