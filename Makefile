# Atelier — the README's commands. Everything is set up from a fresh machine by these targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := contracts runtime control provenance sdk migrations orchestrator services/api services/planner services/renderer gpu-workers atelier
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv sysdeps chaos scale fuzz demo test test-unit test-integration bench lint docs services clean ts-client ts-check

help:
	@echo "make demo   - set up and run one campaign and one story on the embedded default"
	@echo "make test   - set up and run the test suite (needs the machine's PostgreSQL and Redis, and npm)"
	@echo "make bench  - services-mode benchmarks -> bench/results.json, bench/REPORT.md (charts in bench/report/)"
	@echo "make scale  - the control plane at fleet scale: 1/8/32/128 simulated GPUs (bench-only) -> bench/scale.json, REPORT.md"
	@echo "make lint   - ruff"
	@echo "make docs   - regenerate README.md's 'where is it' table from the stage catalogue"
	@echo "make ts-client - regenerate the TypeScript client's openapi.json and src/schema.d.ts from the API"
	@echo "make ts-check  - type-check the TypeScript client (part of make test)"
	@echo "make fuzz   - schemathesis: 5,000 generated requests against a live API (no 5xx, responses as documented)"

venv: $(STAMP)

$(STAMP): constraints.txt requirements-dev.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU build of torch lies on this machine's disk; never install PyPI's torchvision beside it
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt $(addprefix -e ,$(PACKAGES)) -r requirements-dev.txt
	# invisible-watermark pins opencv-python (GUI build); we use opencv-python-headless instead
	$(BIN)/pip install -q -c constraints.txt --no-deps invisible-watermark==0.2.0
	# planner's transformers backend: xgrammar's triton requirement serves CUDA kernels only, so not on CPU
	$(BIN)/pip install -q -c constraints.txt --no-deps xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2
	# OpenAI CLIP's BPE merges (open_clip/bpe_simple_vocab_16e6.txt.gz): the real-vocabulary tokenizer of the tests
	# and the planners' token counts read that file; open_clip itself needs torchvision, so it is never imported
	$(BIN)/pip install -q -c constraints.txt --no-deps open_clip_torch==3.3.0
	touch $(STAMP)

services:
	bash infra/dev/ensure-services.sh

sysdeps:
	bash infra/dev/system-deps.sh

demo: sysdeps venv
	$(BIN)/atelier demo

test: sysdeps venv services ts-check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: sysdeps venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: sysdeps venv services
	$(BIN)/python -m pytest tests/integration tests/e2e $(PYTEST_ARGS)

# each script merges its figures into bench/results.json; report.py renders bench/REPORT.md and
# bench/report/*.png from it. api_bench.py drives wrk (Debian package, installed by sysdeps).
bench: sysdeps venv services
	$(BIN)/python bench/run.py
	$(BIN)/python bench/gpu_bench.py cpu
	$(BIN)/python bench/scaleout.py      # 2 gpu.diffusion worker processes vs 1, 1 torch thread each
	$(BIN)/python bench/api_bench.py     # POST /v1/jobs with wrk at 16 connections, next to a bare FastAPI route
	$(BIN)/python bench/watermark_bench.py  # W-Bench-style robustness (key watermark)
	$(BIN)/python bench/report.py

chaos: venv services
	$(BIN)/python bench/chaos.py

# the control plane at fleet scale on the bench-only simulated GPU fleet (bench/simfleet.py, which refuses to run
# without ATELIER_BENCH_SIMULATED_GPU=1; scale.py sets it for its own workers): 1, 8, 32 and 128 simulated GPUs, 20 s
# of warm-up and 60 s measured each (about 8 minutes) -> bench/scale.json, then bench/REPORT.md is re-rendered.
# Never part of `make test` or `make bench`. SCALE_ARGS: e.g. --sizes 1,8 --window 30
SCALE_ARGS ?=
scale: sysdeps venv services
	$(BIN)/python bench/scale.py $(SCALE_ARGS)
	$(BIN)/python bench/report.py

# schemathesis against a live API process (PostgreSQL, Redis, S3): >= 5,000 generated requests, no 5xx,
# every response as documented; the failures (if any) also go to out/fuzz/report.txt. `make test` runs 300.
FUZZ_REQUESTS ?= 5000
FUZZ_SEED ?= $(shell date +%s)
fuzz: sysdeps venv services
	ATELIER_FUZZ_REQUESTS=$(FUZZ_REQUESTS) ATELIER_FUZZ_SEED=$(FUZZ_SEED) \
	  $(BIN)/python -m pytest tests/integration/test_fuzz_api.py -p no:cacheprovider -q -s --timeout=3000 $(PYTEST_ARGS)

# the TypeScript client (clients/typescript): openapi.json comes from the app in-process (no server), its
# src/schema.d.ts from openapi.json (openapi-typescript). Both are committed; a unit test fails when openapi.json
# lags the API, and ts-check when schema.d.ts lags openapi.json or the client no longer type-checks against it.
# Node.js 20+ with npm is a system requirement like PostgreSQL (not installed by sysdeps).
TS_CLIENT := clients/typescript
NPM_CI := npm ci --no-audit --no-fund

ts-client: venv
	$(BIN)/python $(TS_CLIENT)/dump_openapi.py
	@command -v npm >/dev/null || { echo "make ts-client: npm not found; install Node.js 20+ with npm" >&2; exit 1; }
	cd $(TS_CLIENT) && $(NPM_CI) && npm run generate

ts-check:
	@command -v npm >/dev/null || { echo "make ts-check: npm not found; install Node.js 20+ with npm to type-check $(TS_CLIENT) (make test runs it)" >&2; exit 1; }
	cd $(TS_CLIENT) && $(NPM_CI) && npm run check

lint: venv
	$(BIN)/ruff check .

docs: venv
	$(BIN)/python -m atelier.docs

clean:
	rm -rf var out .pytest_cache
