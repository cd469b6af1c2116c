# One command sets everything up and runs the main job (`make demo`); one runs the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.memwall-installed
# the oldest release of every dependency the pyproject allows (tests/oldest-supported.txt)
OLDEST_VENV ?= .venv-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.memwall-installed
OLDEST := tests/oldest-supported.txt
# torch's floor (pyproject.toml): PyPI's build of it, with the CUDA libraries it names (~4.6 GB
# installed, about a minute from PyPI here); its CPU paths are what the suite tests
OLDEST_TORCH := $(shell sed -n 's/^torch==//p' $(OLDEST))

.PHONY: setup setup-oldest demo quickstart bench test test-newest test-oldest clean

setup: $(STAMP)

# What a fresh install resolves, torch included: PyPI's newest release (a build naming NVIDIA's
# CUDA libraries, ~2.5 GB to download, about two minutes here; the suite runs its CPU paths).
# PIP_CONSTRAINT=/dev/null sets aside a machine-wide pip constraints file: this workplace's caps
# torch at the release it keeps on disk, which is not what users get.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	PIP_CONSTRAINT=/dev/null $(BIN)/python -m pip install -q --progress-bar off -e '.[dev]'
	touch $(STAMP)

setup-oldest: $(OLDEST_STAMP)

$(OLDEST_STAMP): pyproject.toml $(OLDEST)
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install -q --progress-bar off torch==$(OLDEST_TORCH)
	$(OLDEST_VENV)/bin/python -m pip install -q -e '.[dev]' -c $(OLDEST) torch==$(OLDEST_TORCH)
	touch $(OLDEST_STAMP)

# The paper's case study (BERT-Base, BERT-Large, GPT-2 at 128/256/512 tokens), its Figure 1, and
# its Figures 2 and 4 (training memory of eight models measured on the meta device, the trend fits).
demo: setup
	$(BIN)/python samples/paper_case_study.py --logdir runs/paper --out runs/paper
	$(BIN)/python samples/hardware_trends.py --out runs/trends
	$(BIN)/python samples/capacity_wall.py --out runs/capacity
	@echo
	@echo "outputs: runs/paper/paper_case_study.png, runs/paper/results.json, runs/trends/hardware_trends.png,"
	@echo "         runs/capacity/figure4.png, runs/capacity/figure2.png, runs/capacity/results.json"
	@echo "open the runs: $(BIN)/tensorboard --logdir runs   (the Memory Wall tab)"

bench: setup
	$(BIN)/python benchmarks/overhead.py --json runs/bench/overhead.json
	$(BIN)/python benchmarks/long_runs.py --json runs/bench/long_runs.json
	$(BIN)/python benchmarks/routes.py --json runs/bench/routes.json

quickstart: setup
	$(BIN)/python samples/quickstart.py --logdir runs/quickstart

# Both ends of every dependency range: what a fresh install resolves today, and the oldest
# releases the pyproject allows.
test: test-newest test-oldest

test-newest: setup
	$(BIN)/ruff check memwall_plugin hooks tb_plugin tests samples benchmarks
	$(BIN)/mypy
	@$(BIN)/python -c "import importlib.metadata as m; print('newest:', ', '.join(p + ' ' + m.version(p) for p in ('torch', 'transformers', 'tensorboard', 'rich', 'fvcore', 'torch-tb-profiler')))"
	$(BIN)/python -m pytest -q tests

test-oldest: setup-oldest
	@$(OLDEST_VENV)/bin/python -c "import importlib.metadata as m; print('oldest:', ', '.join(p + ' ' + m.version(p) for p in ('torch', 'transformers', 'tensorboard', 'rich', 'fvcore', 'torch-tb-profiler')))"
	$(OLDEST_VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) $(OLDEST_VENV) runs build *.egg-info
