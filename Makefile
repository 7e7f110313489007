# Two commands set everything up on a fresh machine: `make train` and `make test`.
#
# Two stacks are tested:
#   reference: .venv        DGL 2.1.0 + torch 2.2.1 (the `dgl` extra): both engines, DGL's the reference
#   modern:    .venv-modern the newest torch that installs here, no DGL: the torch engine alone
# `make test` runs the reference stack's suite plus the import-layer contract and ruff;
# `make test-modern` the whole suite on the modern stack (tests that need DGL skip there).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
MODERN := .venv-modern
# `torch==2.13.0` takes the CPU build that lies on this machine's disk (Python 3.11); without
# the exact pin pip pulls a multi-GB CUDA build from PyPI.
MODERN_TORCH ?= torch==2.13.0
export DGLBACKEND := pytorch

# DGL 2.1.0 has Linux wheels for Python <= 3.12 only (PyPI offers nothing newer than 0.1.3 for 3.13).
DGL_PYTHON := $(shell $(PYTHON) -c 'import sys; print("yes" if sys.version_info < (3, 13) else "no")')

.PHONY: train test test-modern lint install install-modern bench clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifeq ($(DGL_PYTHON),yes)
	$(PY) -m pip install --quiet -e '.[dgl,dev]'
else
	@echo "note: $$($(PYTHON) -V) has no DGL 2.1.0 wheel (Python <= 3.12 only): setting up the torch engine without DGL"
	$(PY) -m pip install --quiet -e '.[dev]'
endif
	touch $@

$(MODERN)/.installed: pyproject.toml
	test -d $(MODERN) || $(PYTHON) -m venv $(MODERN)
	$(MODERN)/bin/python -m pip install --quiet --upgrade pip
	$(MODERN)/bin/python -m pip install --quiet $(MODERN_TORCH)
	$(MODERN)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-modern: $(MODERN)/.installed

# The project's default job: the DGL tutorial's copy task, trained end to end.
train: $(VENV)/.installed
	$(VENV)/bin/tg-train --config configs/copy.yaml

# The house's guards (docs/ARCHITECTURE.md): one-way layers and a clean ruff.
lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

test-modern: $(MODERN)/.installed
	$(MODERN)/bin/python -m pytest -q

# Graph vs dense benchmarks (docs/BENCHMARKS.md); writes runs/bench/. To refresh the tracked
# report: make bench BENCH_ARGS="--out docs --force" (on an otherwise idle machine).
BENCH_ARGS ?=
bench: $(VENV)/.installed
	$(PY) -m bench.benchmark $(BENCH_ARGS)

clean:
	rm -rf runs .pytest_cache
