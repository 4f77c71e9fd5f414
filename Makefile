# fusion-worker — every target does its own set-up, from a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA := deploy/kafka-dev/kafka.sh
export KAFKA_PORT ?= 9092
PYTEST_ARGS ?=

.PHONY: help .venv venv demo test lint types kafka-up kafka-down kafka-status promtool bench bench-fusion \
	bench-jvm backtest-demo text-demo demo-langid backtest-langid chaos chaos-at-least-once clean lock

help:  ## list the targets
	@grep -hE '^[a-z.-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.venv: $(VENV)/.installed $(VENV)/.native  ## create the virtualenv with the package and its dev extra
venv: .venv

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11+ is required ($(PYTHON) not found)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' -c constraints.txt
	touch $@

# The compiled hot path: result writer, decoder, member packing, fused-id memory,
# partitioner, record batches (native/, Rust through PyO3, built by maturin with the crates
# of native/Cargo.lock from crates.io; about 30 s). NATIVE=0 skips it: the worker then runs
# on Python alone, the same output at a higher CPU cost.
NATIVE ?= 1
# rustup installs cargo into ~/.cargo/bin, which a non-login shell (CI's) may lack on PATH.
export PATH := $(PATH):$(HOME)/.cargo/bin
$(VENV)/.native: $(VENV)/.installed native/pyproject.toml native/Cargo.toml native/Cargo.lock \
		$(wildcard native/src/*.rs)
ifeq ($(NATIVE),0)
	@echo "NATIVE=0: the compiled hot path (native/) is not built"
else
	@command -v cargo >/dev/null || { echo "Rust's cargo is needed to build native/ (https://rustup.rs); or run make with NATIVE=0 to go without it"; exit 1; }
	$(BIN)/python -m pip install -q --force-reinstall --no-deps -c constraints.txt ./native
	touch $@
endif

# The exact versions the suite passes with, for CPython 3.11 on Linux (the image's and
# CI's platform): a universal lock would add versions for other Pythons that nothing ran.
# Pins already in constraints.txt are kept while they still fit; LOCK_ARGS=--upgrade
# moves everything to the newest versions (then run `make test` before committing).
LOCK_PLATFORM := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu
LOCK_ARGS ?=
# Not `lock: .venv`: a pyproject.toml edit that the old lock contradicts must still lock.
lock:  ## regenerate constraints.txt (exact versions of runtime and dev deps) with uv
	test -x $(BIN)/uv || { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	  $(BIN)/python -m pip install -q uv -c constraints.txt; }
	$(BIN)/uv pip compile pyproject.toml --all-extras $(LOCK_PLATFORM) \
	  $(LOCK_ARGS) --custom-compile-command 'make lock' --output-file constraints.txt

kafka-up:  ## start the local Kafka broker (fetched from Maven Central once)
	$(KAFKA) up

kafka-down:  ## stop the local Kafka broker
	$(KAFKA) down

kafka-status:
	$(KAFKA) status

lint: .venv  ## ruff (lint and format check); rustfmt and clippy on native/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
ifneq ($(NATIVE),0)
	cd native && cargo fmt --check && cargo clippy --release --locked -q -- -D warnings
endif

types: .venv  ## mypy, strict on worker/
	$(BIN)/mypy

promtool:
	bash scripts/install-promtool.sh

test: .venv promtool  ## lint, types and the whole test suite against a real local broker
	$(KAFKA) up
	status=0; \
	  $(MAKE) --no-print-directory lint types && \
	  $(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS) || status=$$?; \
	  $(KAFKA) down; \
	  exit $$status

demo: .venv kafka-up  ## the whole loop: simulated models -> worker -> fused results, and the metrics URL
	$(BIN)/fusion-worker demo

$(VENV)/.langid: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[langid]'
	touch $@

demo-langid: .venv $(VENV)/.langid kafka-up  ## 4 pre-trained language identifiers as model services, fused live; accuracies
	$(BIN)/python -m worker.demo_langid demo --bootstrap 127.0.0.1:$(KAFKA_PORT)

LANGID_DIR := .cache/backtest-langid
backtest-langid: .venv $(VENV)/.langid  ## backtest of the 4 language identifiers (own codes): accuracy per identifier, strategy
	@echo "== the 43 languages every identifier covers"
	$(BIN)/python -m worker.demo_langid backtest-data --out $(LANGID_DIR)
	$(BIN)/fusion-worker backtest --config $(LANGID_DIR)/fusion.toml \
	  --predictions $(LANGID_DIR)/predictions.jsonl --labels $(LANGID_DIR)/labels.jsonl
	@echo "== every language of the examples one identifier names (partial coverage)"
	$(BIN)/python -m worker.demo_langid backtest-data --wide --out $(LANGID_DIR)-wide
	$(BIN)/fusion-worker backtest --config $(LANGID_DIR)-wide/fusion.toml \
	  --predictions $(LANGID_DIR)-wide/predictions.jsonl --labels $(LANGID_DIR)-wide/labels.jsonl
	@echo "== fitted on the earlier 60 %: calibration, learned weights, stacking (languages with 6+ sentences)"
	$(BIN)/python -m worker.demo_langid backtest-data --min-per-language 6 --out $(LANGID_DIR)-fit
	$(BIN)/fusion-worker backtest --config $(LANGID_DIR)-fit/fusion.toml --fit \
	  --fit-dir $(LANGID_DIR)-fit/fitted --predictions $(LANGID_DIR)-fit/predictions.jsonl \
	  --labels $(LANGID_DIR)-fit/labels.jsonl

DEMO_DIR := .cache/backtest-demo
backtest-demo: .venv  ## a real backtest: 3 scikit-learn classifiers on the digits data, HTML report
	$(BIN)/python -m worker.demo_dataset $(DEMO_DIR)
	$(BIN)/fusion-worker fuse --config $(DEMO_DIR)/fusion.toml --input $(DEMO_DIR)/events.jsonl \
	  --output $(DEMO_DIR)/fused.jsonl
	$(BIN)/fusion-worker backtest --config $(DEMO_DIR)/fusion.toml --predictions $(DEMO_DIR)/events.jsonl \
	  --labels $(DEMO_DIR)/labels.jsonl --fit --bootstrap 1000 --report $(DEMO_DIR)/report

TEXT_DEMO_DIR := .cache/text-demo
text-demo: .venv  ## text fusion on real sentences, 4 SIMULATED members: fuse, then the backtest table (report too)
	$(BIN)/python -m worker.demo_text --out $(TEXT_DEMO_DIR) --quiet
	$(BIN)/fusion-worker fuse --config $(TEXT_DEMO_DIR)/fusion-text.toml \
	  --input $(TEXT_DEMO_DIR)/events.jsonl --output $(TEXT_DEMO_DIR)/fused.jsonl
	$(BIN)/fusion-worker backtest --config $(TEXT_DEMO_DIR)/fusion-text.toml \
	  --predictions $(TEXT_DEMO_DIR)/events.jsonl --labels $(TEXT_DEMO_DIR)/references.jsonl \
	  --report $(TEXT_DEMO_DIR)/report
	@echo "The members above are SIMULATED (worker/demo_text.py: OCR-like, ASR-like, reordering"
	@echo "and mixed error processes on pyjokes' sentences), not real models."

chaos: .venv kafka-up  ## exactly-once under kill -9: 20,000 requests, 5 crashes, 0 lost, 0 duplicates
	$(BIN)/python -m tests.integration.chaos --bootstrap 127.0.0.1:$(KAFKA_PORT)

chaos-at-least-once: .venv kafka-up  ## at-least-once under 5 kill -9: prints lost, repeated, degraded
	$(BIN)/python -m tests.integration.chaos_at_least_once --bootstrap 127.0.0.1:$(KAFKA_PORT)

bench: .venv kafka-up  ## end to end on the local broker: throughput ratios, latency, memory, early decision, exactly-once readable latency
	$(BIN)/python -m bench.run --bootstrap 127.0.0.1:$(KAFKA_PORT)
	$(BIN)/python -m bench.bench_early --bootstrap 127.0.0.1:$(KAFKA_PORT) --rate 100 --seconds 20
	$(BIN)/python -m bench.visibility --bootstrap 127.0.0.1:$(KAFKA_PORT) --requests 500 --gap-ms 60

# The Kafka Streams contestant (bench/streams/, Java 17 and Maven; its dependencies come
# from Maven Central): rebuilt only when a source is newer than the jar. The touch: Maven
# may leave an up-to-date jar as it was.
STREAMS_JAR := bench/streams/target/fusion-streams.jar
$(STREAMS_JAR): bench/streams/pom.xml $(wildcard bench/streams/src/main/java/fusion/streams/*.java)
	@command -v mvn >/dev/null || { echo "Maven (mvn) and Java 17+ are needed to build $@"; exit 1; }
	mvn -q -B -f bench/streams/pom.xml package
	touch $@

# Then latency at a rate both keep up with on two cores shared with the broker and the
# load (docs/benchmarks.md, fourteenth round), each warmed up at it first.
bench-jvm: $(STREAMS_JAR) .venv kafka-up  ## the worker against a Kafka Streams app doing the same join: throughput, latency (Java 17, Maven)
	$(BIN)/python -m bench.throughput --bootstrap 127.0.0.1:$(KAFKA_PORT) --requests 1000000 --repeat 1 \
	  --modes passthrough-batch at-least-once streams-at-least-once exactly-once streams-exactly-once
	for c in at-least-once streams-at-least-once; do echo "== latency: $$c"; \
	  $(BIN)/python -m bench.latency --bootstrap 127.0.0.1:$(KAFKA_PORT) --contestant $$c \
	    --rate 10000 --seconds 40 --warmup-seconds 20 || exit 1; done

bench-fusion: .venv  ## requests fused per second, array maths vs one numpy call per request
	$(BIN)/python bench/bench_fusion.py

clean:  ## remove the virtualenv and caches (the broker's jar cache too)
	-$(KAFKA) down
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache .hypothesis native/target \
	  bench/streams/target
