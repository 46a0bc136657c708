# racefree: `make demo` shows the races; `make test` proves they are gone.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The newest Django (6.1) needs CPython >= 3.12, which Debian 12 does not ship:
# scripts/ensure-cpython.sh builds it once from Debian's source package into
# ~/.cache/racefree and later runs reuse it. Its virtualenv gets the same abi3
# wheel the system CPython's build makes.
NEWEST_PYTHON ?= 3.13
VENV_NEWEST ?= .venv-newest
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: test test-newest test-valkey build-newest lint docs demo bench bench-redis-crate build system-deps bench-deps rust-test py-test clean

## make test: install what is missing, build with maturin, run cargo test and pytest
# Everything on the system CPython with Django 5.2 LTS, then Django's suites,
# its cache-using test apps and the cross_version subset on CPython 3.13 with
# Django 6.1.
# build-newest first: a second interpreter that cannot be had fails the run at once.
test: build build-newest
	cargo test --quiet
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-newest

## make test-newest: the cross_version tests on CPython $(NEWEST_PYTHON) with the newest Django
# The wheel test there installs the wheel built with the system CPython's
# build cache (RACEFREE_BUILD_PYTHON), which also serves 3.13: it is abi3.
test-newest: build-newest
	RACEFREE_BUILD_PYTHON=$(CURDIR)/$(PY) $(VENV_NEWEST)/bin/python -m pytest -m cross_version

## make test-valkey: the Redis tests again, against Valkey instead of Redis
# Valkey speaks Redis's protocol, and the backend claims to work with it
# unchanged: this run shows it. Debian 12 has no Valkey package, so
# scripts/ensure-valkey.sh builds it once from Debian 13's source (about 2
# minutes), which is why it is not part of `make test`; .ci/run runs it after.
test-valkey: build
	@# ensure-valkey.sh hands out only a directory whose redis-server says it is Valkey.
	@bin=$$(scripts/ensure-valkey.sh) || exit 1; \
	echo "PATH=$$bin:\$$PATH $(PY) -m pytest -k redis tests"; \
	PATH="$$bin:$$PATH" $(PY) -m pytest -k redis tests

build-newest: build
	@python=$$(scripts/ensure-cpython.sh $(NEWEST_PYTHON)) || exit 1; \
	if ! $(VENV_NEWEST)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$(NEWEST_PYTHON)".split("."))))' 2>/dev/null; then \
		rm -rf $(VENV_NEWEST) && "$$python" -m venv $(VENV_NEWEST) || exit 1; \
	fi
	@if [[ ! $(VENV_NEWEST)/.installed -nt requirements/newest.txt ]]; then \
		$(VENV_NEWEST)/bin/python -m pip install --quiet --upgrade pip && \
		$(VENV_NEWEST)/bin/python -m pip install --quiet -r requirements/newest.txt && \
		touch $(VENV_NEWEST)/.installed; \
	fi
	@# The same interpreter as `build`, so cargo reuses that build (abi3: one wheel serves 3.10+).
	rm -rf build/wheel
	$(VENV)/bin/maturin build --release --quiet -i $(PY) --out build/wheel
	$(VENV_NEWEST)/bin/python -m pip install --quiet --force-reinstall --no-deps build/wheel/racefree-*.whl

## make lint: rustfmt, clippy (warnings are errors, with and without the Python bindings), ruff, mypy --strict, the docs build
# build: stubtest imports the extension to compare it with its .pyi stubs.
lint: build
	@cargo clippy --version >/dev/null 2>&1 && cargo fmt --version >/dev/null 2>&1 || rustup component add clippy rustfmt
	cargo fmt --check
	cargo clippy --quiet --all-targets -- -D warnings
	cargo clippy --quiet --all-targets --features python -- -D warnings
	@# benchmarks/redis_crate is a package of its own (it needs redis-rs): checked here so it keeps building.
	cargo fmt --check --manifest-path benchmarks/redis_crate/Cargo.toml
	cargo clippy --quiet --release --manifest-path benchmarks/redis_crate/Cargo.toml --target-dir target/redis_crate -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks django_example
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m mypy.stubtest racefree._core
	$(MAKE) --no-print-directory docs

## make docs: the Sphinx site from docs/ into build/docs (warnings are errors, nitpicky)
docs: $(VENV)/.installed
	$(VENV)/bin/sphinx-build -W --keep-going -n -q -b html docs build/docs

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
	$(PY) benchmarks/compression_bench.py --dir build --json build/compression_bench.json
	$(PY) benchmarks/tls_bench.py --json build/tls_bench.json
	$(PY) benchmarks/redis_bench.py --json build/redis_bench.json
	$(PY) benchmarks/race_table.py
	$(MAKE) --no-print-directory bench-redis-crate

## make bench-redis-crate: the Redis store's client against redis-rs, in Rust (docs/redis.md)
bench-redis-crate: system-deps
	cargo run --quiet --release --manifest-path benchmarks/redis_crate/Cargo.toml --target-dir target/redis_crate

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
	@# django-vcache needs CPython >= 3.12: redis_bench.py runs its column on $(VENV_NEWEST) (make build-newest).
	@if [[ -x $(VENV_NEWEST)/bin/python ]]; then \
		$(VENV_NEWEST)/bin/python -m pip install --quiet -r requirements/bench-newest.txt \
			|| echo "racefree: django-vcache could not be installed; its column will be skipped"; \
	else \
		echo "racefree: no $(VENV_NEWEST) (make build-newest): django-vcache's column will be skipped"; \
	fi

clean:
	rm -rf target build $(VENV) $(VENV_NEWEST) .pytest_cache
