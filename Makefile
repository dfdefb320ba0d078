# Each target sets itself up: a virtual environment in .venv with the CPU build of torch
# installed first (a loose torch requirement could otherwise pull a multi-GB CUDA build).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: setup quickstart test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_PIN)
	$(BIN)/pip install -e '.[dev]'
	touch $@

quickstart: setup
	$(BIN)/prmgym quickstart --out runs/quickstart

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not docker"

clean:
	rm -rf $(VENV) runs build dist *.egg-info
