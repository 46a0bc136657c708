# racefree: `make demo` shows the races; `make test` proves they are gone.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A second virtualenv for Django 4.2 LTS (the tests above run on 5.2 LTS).
VENV42 ?= .venv-django42
DJANGO_SUITES := tests/test_memcached_django_suite.py tests/test_filebased_django_suite.py \
	tests/test_db_django_suite.py tests/test_forwarding_django_suite.py
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: test test-django42 lint demo bench build system-deps bench-deps rust-test py-test clean

## make test: install what is missing, build with maturin, run cargo test and pytest
test: build
	cargo test --quiet
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-django42

## make test-django42: Django's own cache suites again, on Django 4.2 LTS
test-django42: build $(VENV42)/.installed
	VIRTUAL_ENV=$(CURDIR)/$(VENV42) $(VENV)/bin/maturin develop --release --quiet
	$(VENV42)/bin/python -m pytest -q $(DJANGO_SUITES)

$(VENV42)/.installed: requirements/django42.txt
	@test -x $(VENV42)/bin/python || $(PYTHON) -m venv $(VENV42)
	$(VENV42)/bin/python -m pip install --quiet --upgrade pip
	$(VENV42)/bin/python -m pip install --quiet -r requirements/django42.txt
	@touch $@

## make lint: rustfmt, clippy (warnings are errors, with and without the Python bindings), ruff, mypy --strict
# build: stubtest imports the extension to compare it with its .pyi stubs.
lint: build
	@cargo clippy --version >/dev/null 2>&1 && cargo fmt --version >/dev/null 2>&1 || rustup component add clippy rustfmt
	cargo fmt --check
	cargo clippy --quiet --all-targets -- -D warnings
	cargo clippy --quiet --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks django_example
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m mypy.stubtest racefree._core

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
	rm -rf target build $(VENV) $(VENV42) .pytest_cache
