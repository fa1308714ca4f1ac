# gpupool — every target installs what it needs (virtualenv, packages, Kubernetes binaries).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test unit lint bench demo clean e2e-bin

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check gpupool extender controller deviceplugin tests bench
	$(VENV)/bin/mypy gpupool

unit: setup
	$(VENV)/bin/pytest tests/unit -q

test: setup
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache out
