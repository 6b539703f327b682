# driftline — `make help` lists the targets.
#
# Everything runs from a fresh clone: `make setup` creates .venv with the pinned tools
# and builds the Rust extension. Rust (cargo) and Python 3.11 come with the machine.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.deps-stamp
WHEEL_DIR := target/wheels

export OPENBLAS_NUM_THREADS ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help system setup develop demo demo-core test test-rust test-python faults prom-check kafka-up kafka-down lint format wheel wheel-check bench bench-stream bench-replay bench-hooks bench-integrations bench-outcomes bench-rust clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip==25.3
	$(PIP) install -q -r requirements-dev.txt
	touch $(STAMP)

system:  ## install the Debian packages tests and demo use, when missing (Java, Maven, Prometheus, Chromium, docker-compose)
	@.ci/system-deps.sh

setup: system $(STAMP) develop  ## create .venv with pinned tools and build the extension

develop: $(STAMP)  ## (re)build the Rust extension into .venv (editable, release mode)
	$(VENV)/bin/maturin develop --release -q

demo: setup  ## the main job: Kafka, MLflow, worker, dispatcher, receiver, serving app, traffic with drift, a verified retrain event
	$(PY) -m stream.cli demo $(DEMO_ARGS)

demo-core: setup  ## drift_core alone: references, drifting windows, figures (no Kafka)
	$(PY) -m drift_core.demo

test: system $(STAMP) lint test-rust wheel-check test-python faults prom-check  ## set up and run every check CI runs

test-rust:  ## Rust unit tests of the pure core (no Python)
	cargo test -q --no-default-features

test-python: $(STAMP)  ## pytest against the wheel in .venv, integration tests on a real local Kafka (exit 5 = no tests = failure)
	DRIFTLINE_EXPECT_INSTALLED=1 $(VENV)/bin/pytest -q --ignore=tests/faults

faults: $(STAMP)  ## fault suite on real brokers (hostile input, kills, broker restarts, load, secrets); DRIFTLINE_FAULTS_SCALE=full for full size
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/faults


prom-check: $(STAMP)  ## export the shipped rules for Prometheus, then promtool check rules + test rules
	$(VENV)/bin/driftline rules export-prometheus --out target/prometheus/driftline-rules.yml
	promtool check rules target/prometheus/driftline-rules.yml
	promtool test rules tests/prometheus/rules_test.yml

kafka-up: $(STAMP)  ## start the local Kafka broker on 127.0.0.1:9092 (fetches the jars with Maven once)
	$(VENV)/bin/driftline kafka up

kafka-down: $(STAMP)  ## stop the local Kafka broker
	$(VENV)/bin/driftline kafka down

lint: $(STAMP) develop  ## ruff, mypy, stub check, cargo fmt, clippy
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests
	$(PY) -m mypy.stubtest drift_core._drift_core --allowlist .ci/stubtest-allowlist.txt
	cargo fmt --check
	cargo clippy -q --all-targets -- -D warnings
	cargo clippy -q --all-targets --no-default-features -- -D warnings

format:  ## apply ruff format and cargo fmt
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	cargo fmt

wheel: $(STAMP)  ## build the release wheel into target/wheels
	rm -rf $(WHEEL_DIR)
	$(VENV)/bin/maturin build --release -q -o $(WHEEL_DIR)

wheel-check: wheel  ## list the wheel, refuse Rust sources in it, import it from a clean venv, install it in .venv
	bash .ci/check-wheel.sh $(WHEEL_DIR)
	$(PIP) install -q --force-reinstall --no-deps $(WHEEL_DIR)/*.whl

bench: develop  ## drift_core benchmarks, ratios against NumPy/SciPy in the same process
	$(PY) tests/benchmarks/bench_drift_core.py

bench-stream: develop  ## end-to-end worker throughput through a real local broker vs a bare aiokafka consumer
	$(PY) tests/benchmarks/bench_stream.py

bench-replay: develop  ## replay of 10M events x 20 features from Parquet vs NumPy-only binning
	$(PY) tests/benchmarks/bench_replay.py --events 10000000

bench-hooks: develop  ## serving hook: added latency per record() and publisher throughput (real broker)
	$(PY) tests/benchmarks/bench_hooks.py

bench-integrations: develop  ## serving integrations: added latency per request (FastAPI) and per predicted row (MLflow)
	$(PY) tests/benchmarks/bench_integrations.py

bench-outcomes: develop  ## outcomes joined per second per worker, bytes per pending prediction
	$(PY) tests/benchmarks/bench_outcomes.py

bench-rust:  ## Rust-level breakdown of the hot paths
	cargo run -q --release --no-default-features --example speed

clean:  ## remove build outputs and the virtualenv
	rm -rf target $(VENV) .venv-wheel .pytest_cache .mypy_cache .ruff_cache .hypothesis
