# sealtensors: the two commands of the README, and their parts.
#   make demo   seal the real MiniLM model, load it back through transformers, show it matches
#   make test   every test: Rust (unit, attacks, properties, vectors, fuzz corpus, CLI) and
#               Python (safetensors interop, API, transformers, the demo, CLI on large models)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup py-build rust-test py-test lint fmt clean

# make bench [ARGS=--quick]: the benchmark suite (bench/run.py); results in
# bench/results/ and docs/benchmarks.md.
.PHONY: bench
bench: py-build
	$(PY) -m pip install --quiet -r requirements-bench.txt
	CARGO_TARGET_DIR=$${CARGO_TARGET_DIR:-/work/target-bench} $(PY) bench/run.py $(ARGS)

$(STAMP): requirements-test.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $(STAMP)

setup: $(STAMP)

# The Python package (PyO3 bindings + python/sealtensors), installed editable.
py-build: $(STAMP)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet

demo: py-build
	$(PY) scripts/demo.py

rust-test:
	cargo test --workspace

py-test: py-build
	$(PY) -m pytest python/tests -q

test: rust-test py-test

lint: $(STAMP)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python scripts
	$(VENV)/bin/ruff format --check python scripts

fmt: $(STAMP)
	cargo fmt --all
	$(VENV)/bin/ruff format python scripts

clean:
	rm -rf target demo-out
