# The README's two set-up commands live here: `make run` and `make test`. Everything they need is
# installed into .venv from requirements-dev.txt (exact versions), so a fresh clone on a fresh
# machine needs nothing else.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Build the extension against the virtual env's interpreter, never whichever python3 is first.
export PYO3_PYTHON := $(abspath $(BIN)/python)
export VIRTUAL_ENV := $(abspath $(VENV))
# `cargo test` links libpython (the extension module itself does not) and must find it at run time.
PY_LIBDIR = $(shell $(BIN)/python -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
BENCH_DIR := .benchmarks
BENCH_SUITES := $(wildcard benches/test_bench_*.py)

.PHONY: build run test test-rust lint test-python bench bench-tools clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

build: $(VENV)/.installed
	$(BIN)/maturin develop --release --quiet

run: build
	$(BIN)/instapay serve

test: build test-rust lint test-python

test-rust: $(VENV)/.installed
	cargo fmt --check
	cargo clippy --all-targets --quiet -- -D warnings
	LD_LIBRARY_PATH=$(PY_LIBDIR) cargo test --quiet

lint: build
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest instapay._core

test-python: build
	$(BIN)/pytest

# Micro benchmarks and the HTTP benchmark; the tables printed at the end are the ones in README
# (ratios from this run). One process per suite: the engine suites leave a large heap behind that
# slows the others.
bench: build bench-tools
	mkdir -p $(BENCH_DIR)
	set -e; for suite in $(BENCH_SUITES); do \
		$(BIN)/pytest $$suite --benchmark-only -q \
			--benchmark-json=$(BENCH_DIR)/$$(basename $$suite .py).json; \
	done
	$(BIN)/python benches/report.py $(BENCH_SUITES:benches/%.py=$(BENCH_DIR)/%.json)

# The HTTP suite's load generator is wrk, a Debian package: installed here when we may (root with
# apt-get), otherwise a clear refusal that says how.
bench-tools:
	@command -v wrk >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; \
		else \
			echo "make bench needs wrk: install it with 'sudo apt-get install wrk'" >&2; exit 1; \
		fi; \
	}

clean:
	rm -rf $(VENV) target .benchmarks .pytest_cache .mypy_cache .ruff_cache .hypothesis
