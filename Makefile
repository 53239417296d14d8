# Set-up and entry points. `make demo` and `make test` work on a fresh machine with
# Python 3.11 and pip: they create .venv and install what is needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow clean

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

clean:
	rm -rf $(VENV) runs
