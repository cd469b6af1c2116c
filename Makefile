# One command sets everything up and runs the main job (`make demo`); one runs the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.memwall-installed

.PHONY: setup demo quickstart bench test clean

setup: $(STAMP)

# torch is pinned first to the local CPU build so no multi-GB CUDA download happens.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The paper's case study (BERT-Base, BERT-Large, GPT-2 at 128/256/512 tokens) and its Figure 1.
demo: setup
	$(BIN)/python samples/paper_case_study.py --logdir runs/paper --out runs/paper
	$(BIN)/python samples/hardware_trends.py --out runs/trends
	@echo
	@echo "outputs: runs/paper/paper_case_study.png, runs/paper/results.json, runs/trends/hardware_trends.png"
	@echo "open the runs: $(BIN)/tensorboard --logdir runs   (the Memory Wall tab)"

bench: setup
	$(BIN)/python benchmarks/overhead.py --json runs/bench/overhead.json
	$(BIN)/python benchmarks/long_runs.py --json runs/bench/long_runs.json
	$(BIN)/python benchmarks/routes.py --json runs/bench/routes.json

quickstart: setup
	$(BIN)/python samples/quickstart.py --logdir runs/quickstart

test: setup
	$(BIN)/ruff check memwall_plugin hooks tb_plugin tests samples benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs build *.egg-info
