# Two commands set everything up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export DGLBACKEND := pytorch

.PHONY: train test install bench clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The project's default job: the DGL tutorial's copy task, trained end to end.
train: $(VENV)/.installed
	$(PY) scripts/train.py --config configs/copy.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q

# Graph vs dense benchmarks (docs/BENCHMARKS.md); run on an otherwise idle machine.
bench: $(VENV)/.installed
	$(PY) scripts/benchmark.py --out docs

clean:
	rm -rf runs .pytest_cache
