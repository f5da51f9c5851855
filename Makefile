# Two commands do everything on a fresh machine (see README):
#   make run    set up .venv, then the main job (a short PPO training run with results)
#   make test   set up .venv, then the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup bench eval clean test-vllm

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch from the local wheel first, so nothing pulls the multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/python train/ppo.py --config train/configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

# vLLM 0.33.0 (CPU torch, vllm --no-deps) into .venv, then the hook's tests against vLLM's real
# scheduler. Not part of `make test`: see docs/vllm.md for the time it takes.
$(VENV)/.vllm-installed: $(STAMP) scripts/install_vllm.sh
	bash scripts/install_vllm.sh $(BIN)/python
	touch $@

test-vllm: $(VENV)/.vllm-installed
	LLMSCHED_REQUIRE_VLLM=1 $(BIN)/python -m pytest -p no:xdist tests/test_vllm_hook.py tests/test_vllm_serving.py tests/test_vllm_adapter.py tests/test_vllm_export.py

bench: $(STAMP)
	$(BIN)/python eval/bench_engine.py
	$(BIN)/python eval/bench_env.py
	$(BIN)/python eval/bench_export.py
	$(BIN)/python -m pytest tests/benchmarks --benchmark-enable -p no:xdist

# the evaluation report in docs/ (docs/evaluation.md); POLICY=agents/zoo/default adds a policy
eval: $(STAMP)
	$(BIN)/python eval/evaluate.py $(if $(POLICY),--policy $(POLICY)) --out docs

clean:
	rm -rf $(VENV) runs .pytest_cache
