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

.PHONY: build run demo test test-rust lint test-python bench bench-quick bench-tools clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

build: $(VENV)/.installed
	$(BIN)/maturin develop --release --quiet

# `make run PORT=9000`: the embedded default server on another port.
PORT ?= 8080
run: build
	$(BIN)/instapay serve --port $(PORT)

# The embedded default server (data in var/demo-load, port 8081, so `make run` can stay up), 15 s
# of open-loop load at DEMO_RATE, the summary, demo-load.png and demo-load.json, a clean stop.
DEMO_RATE ?= 2000/s
demo: build
	$(BIN)/python -m instapay.load.demo --rate $(DEMO_RATE)

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

# The benchmark suites, then BENCHMARKS.md at the root: every figure with its baselines measured in
# the same run, the ratios, DESIGN.md's targets and the command that reproduces each row, and
# BENCHMARKS.json, the same rows for tooling (benches/report.py; it also prints the tables). One
# process per suite: the engine suites leave a large heap behind that slows the others. About
# 8 minutes on the project's 2-core machine (benches/test_bench_history.py alone about 3: a
# history of 1 M payments, and 2 M in a fresh process for memory); run it on an otherwise idle one.
bench: build bench-tools
	$(call bench-suites,0,$(BENCH_DIR),.)

# The same suites with smaller sizes and shorter runs (INSTAPAY_BENCH_QUICK=1, benches/conftest.py),
# about two minutes: what CI runs. Its BENCHMARKS.md and .json (marked as a quick run) go
# to .benchmarks/quick/ and the terminal, never over the committed full-run ones at the root: its
# figures are not comparable to those, and a smoke test should not leave the tree dirty.
bench-quick: build bench-tools
	$(call bench-suites,1,$(BENCH_DIR)/quick,$(BENCH_DIR)/quick)

# $(1): INSTAPAY_BENCH_QUICK (1 or 0); $(2): the folder for each suite's pytest-benchmark JSON;
# $(3): the folder for BENCHMARKS.md and BENCHMARKS.json.
define bench-suites
	mkdir -p $(2)
	for suite in $(BENCH_SUITES); do \
		INSTAPAY_BENCH_QUICK=$(1) $(BIN)/pytest $$suite --benchmark-only -q \
			--benchmark-json=$(2)/$$(basename $$suite .py).json; \
	done
	$(BIN)/python benches/report.py --write $(3) $(BENCH_SUITES:benches/%.py=$(2)/%.json)
endef

# The HTTP suite's load generator is wrk, a Debian package: installed here when we may (root with
# apt-get, as in CI), otherwise a clear refusal that says how. A failed install stops the run.
bench-tools:
	@command -v wrk >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "bench-tools: installing wrk with apt-get"; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } || { \
				echo "bench-tools: apt-get could not install wrk (see above);" \
					"the HTTP benchmarks need it" >&2; \
				exit 1; \
			}; \
		else \
			echo "make bench needs wrk: install it with 'sudo apt-get install wrk'" >&2; exit 1; \
		fi; \
	}
	@command -v wrk >/dev/null || { \
		echo "bench-tools: wrk is not on PATH after installing it" >&2; exit 1; \
	}

clean:
	rm -rf $(VENV) target .benchmarks .pytest_cache .mypy_cache .ruff_cache .hypothesis
