# Two entry points, both self-contained on a fresh machine:
#   make demo   - set up, then run a local federated LoRA job (4 hospitals, 3 rounds)
#   make test   - set up, then run the whole test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedseal-installed
# PyTorch's index of CPU-only wheels. On Linux x86_64, PyPI's torch is the CUDA build
# (multi-GB of nvidia-* packages); pip prefers 2.13.0+cpu from this index when it can reach
# it. Set TORCH_INDEX= (empty) where only a mirror that holds the CPU wheel is reachable.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test lint proto bench bench-ingest clean nvidia-collector browser fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first, before anything that depends on torch pulls PyPI's.
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[demo,test,audit]'
	# NVIDIA's GPU evidence package pins cryptography 43 / signxml 3.2: install it without
	# its pins (its real needs are in the test and nvidia-collector extras). The GPU
	# collector tests run it over a fake libnvidia-ml.
	$(BIN)/pip install --quiet --no-deps nv-local-gpu-verifier==2.7.3
	touch $@

# Debian's headless Chromium: the audit report's PNG summary and its browser test. Idempotent;
# installing needs root (CI runs as root), otherwise it says what to run.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	    if [ "$$(id -u)" -ne 0 ]; then \
	        echo "chromium is missing: run 'sudo apt-get install -y --no-install-recommends chromium'" \
	             "(the report's browser test needs it), then 'make' again" >&2; exit 1; fi; \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

demo: $(STAMP) browser
	$(BIN)/python -m examples.lora_demo

test: $(STAMP) browser
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Not run by CI (a benchmark, minutes long): rewrites the ingest table in README.md.
bench-ingest: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_ingest.py --readme README.md

# Not run by CI (CI runs a bounded smoke of each target): every fuzz target for
# FUZZ_SECONDS each, printing inputs per second and the total per target.
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz.py --seconds $(FUZZ_SECONDS)

proto: $(STAMP)
	$(BIN)/python -m fedseal._proto.generate

# Aggregator host with NVIDIA Hopper GPUs in CC mode: the GPU evidence collector's packages.
nvidia-collector: $(STAMP)
	$(BIN)/pip install --quiet -e '.[nvidia-collector]'
	$(BIN)/pip install --quiet --no-deps nv-local-gpu-verifier==2.7.3

# The aggregator image's hash-pinned lock (deploy/container, read deploy/README.md): core
# dependencies plus the aggregator-side extras, for CPython 3.11 on Linux x86_64 (run it
# there, or in the base image). Your pip config is ignored so that local wheels or
# find-links cannot leak into the lock; an index mirror (PIP_INDEX_URL) is fine.
LOCK_DIR    := deploy/container
LOCK_EXTRAS := hardware nvidia-collector
LOCK_NODEPS := nv-local-gpu-verifier==2.7.3
LOCK_ENV    := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock"

.PHONY: lock image
lock: $(STAMP)
	$(BIN)/pip install --quiet 'pip-tools==7.6.2'
	$(LOCK_ENV) $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	    --no-emit-index-url --no-emit-find-links $(addprefix --extra ,$(LOCK_EXTRAS)) \
	    --output-file $(LOCK_DIR)/requirements.lock pyproject.toml
	$(LOCK_ENV) $(BIN)/python $(LOCK_DIR)/nodeps_lock.py $(LOCK_DIR)/requirements-nodeps.lock $(LOCK_NODEPS)

# Build the aggregator image reproducibly (BuildKit >= 0.13): file times pinned to the last
# commit, no provenance/SBOM attestations (they carry build times). IMAGE=name:tag.
IMAGE ?= fedseal-aggregator:dev
image:
	docker buildx build --file $(LOCK_DIR)/Containerfile \
	    --build-arg SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct) \
	    --provenance=false --sbom=false \
	    --output type=docker,name=$(IMAGE),rewrite-timestamp=true .

clean:
	rm -rf $(VENV)
