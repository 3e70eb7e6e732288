# Two entry points, each doing its own setup from a fresh clone:
#   make demo   - set up, then the CPU demo (tiny config, synthetic data, monitor on it)
#   make test   - set up, then ruff and the whole test suite
PYTHON ?= python3
VENV ?= .venv
# The torch build to install. The default pins a release: on a CPU-only machine with a
# local wheel (like our CI) it is quick; on a Linux machine with NVIDIA GPUs PyPI serves
# the CUDA build. Override for another build, e.g.
#   make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.stamp: $(BIN)/python pyproject.toml setup.py tui/source/_regions.c stagewatch/timing/_fmt.c
	@# torch first, so the open "torch>=2.4" in pyproject.toml never pulls another build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[train,dev,lightning,hf]"
	touch $@

setup: $(VENV)/.stamp

demo: setup
	$(BIN)/python -m trainer demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_timing.py
	$(BIN)/python benchmarks/bench_model.py --threads 1
	$(BIN)/python benchmarks/bench_tui.py
	$(BIN)/python benchmarks/bench_spike_ablation.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
