# Two entry points, both self-contained on a fresh machine:
#   make demo   - set up, then run a local federated LoRA job (4 hospitals, 3 rounds)
#   make test   - set up, then run the whole test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedseal-installed

.PHONY: demo test lint proto bench clean nvidia-collector

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: a bare "torch" would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[demo,test]'
	# NVIDIA's GPU evidence package pins cryptography 43 / signxml 3.2: install it without
	# its pins (its real needs are in the test and nvidia-collector extras). The GPU
	# collector tests run it over a fake libnvidia-ml.
	$(BIN)/pip install --quiet --no-deps nv-local-gpu-verifier==2.7.3
	touch $@

demo: $(STAMP)
	$(BIN)/python -m examples.lora_demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

proto: $(STAMP)
	$(BIN)/python -m fedseal._proto.generate

# Aggregator host with NVIDIA Hopper GPUs in CC mode: the GPU evidence collector's packages.
nvidia-collector: $(STAMP)
	$(BIN)/pip install --quiet -e '.[nvidia-collector]'
	$(BIN)/pip install --quiet --no-deps nv-local-gpu-verifier==2.7.3

clean:
	rm -rf $(VENV)
