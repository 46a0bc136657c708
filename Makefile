# racefree: `make demo` shows the races; `make test` proves they are gone.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: test lint demo bench build system-deps bench-deps rust-test py-test clean

## make test: install what is missing, build with maturin, run cargo test and pytest
test: build
	cargo test --quiet
	$(PY) -m pytest

## make lint: rustfmt, clippy (warnings are errors, with and without the Python bindings), ruff
lint: $(VENV)/.installed
	@cargo clippy --version >/dev/null 2>&1 && cargo fmt --version >/dev/null 2>&1 || rustup component add clippy rustfmt
	cargo fmt --check
	cargo clippy --quiet --all-targets -- -D warnings
	cargo clippy --quiet --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks django_example

## make demo: build, then every original bug under gunicorn + locust, stock vs racefree
demo: build bench-deps
	$(PY) django_example/run_demo.py

## make bench: throughput side by side with the stock backends
bench: build bench-deps
	$(PY) benchmarks/memcached_bench.py --json build/memcached_bench.json
	$(PY) benchmarks/file_bench.py --dir build --json build/file_bench.json
	$(PY) benchmarks/db_bench.py --json build/db_bench.json
	$(PY) benchmarks/forwarding_bench.py --json build/forwarding_bench.json
	$(PY) benchmarks/async_bench.py --json build/async_bench.json
	$(PY) benchmarks/stampede_bench.py --json build/stampede_bench.json
	$(PY) benchmarks/race_table.py

system-deps:
	@scripts/ensure-system-deps.sh

$(VENV)/.installed: requirements/test.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/test.txt
	@touch $@

build: system-deps $(VENV)/.installed
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/maturin develop --release --quiet

bench-deps: build
	@scripts/ensure-system-deps.sh bench || echo "racefree: stock pylibmc rows will be skipped"
	@$(PY) -m pip install --quiet -r requirements/bench.txt || echo "racefree: pylibmc could not be built; its rows will be skipped"
	@# djblets pins Django 4.2; the demo uses only its forwarding module, which imports nothing else.
	@$(PY) -m pip install --quiet --no-deps "djblets>=5" || echo "racefree: djblets could not be installed; its row will be skipped"

clean:
	rm -rf target build $(VENV) .pytest_cache
