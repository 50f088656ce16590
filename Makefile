# analytics-processor: two commands do everything on a fresh machine.
#   make demo   services up, synthetic events, the daemon, the top influencers
#   make test   fmt + clippy, unit tests, integration tests on the real
#               Kafka broker and S3 server
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
BIN := target/release/analytics-processor
SERVICES := scripts/services.sh
# Variables the binary and the tests use to reach the local services.
ENV := eval "$$($(SERVICES) env)"

DEMO_RATE ?= 20000
DEMO_SECONDS ?= 60
DEMO_OUTPUT ?= ./data

.PHONY: all build lint test bench chaos faults backlog instances demo services-up services-down services-status clean

all: build

build:
	cargo build --release

services-up:
	$(SERVICES) up >/dev/null

services-down:
	$(SERVICES) down

services-status:
	$(SERVICES) status

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

test: services-up lint build
	$(BIN) sql check
	$(BIN) sql test
	$(ENV) && scripts/outside_readers.sh
	$(ENV) && CHAOS_MESSAGES=300000 CHAOS_KILLS=5 scripts/chaos.sh
	$(ENV) && scripts/faults.sh
	$(ENV) && scripts/backlog.sh
	$(ENV) && scripts/instances.sh
	$(ENV) && cargo test --release

# S3 outage (60 s), broker restart, unusable output path.
faults: services-up build
	$(ENV) && scripts/faults.sh

# Peak RSS while catching up on a backlog, against --memory-limit
# (BACKLOG_MESSAGES, BACKLOG_LIMIT).
backlog: services-up build
	$(ENV) && scripts/backlog.sh

# Two instances in one group, one SIGKILLed mid-run, output compared with one
# instance's (INSTANCES_MESSAGES).
instances: services-up build
	$(ENV) && scripts/instances.sh

# Throughput, freshness, memory and reprocess rate against Spark Structured
# Streaming on the same topics (BENCHMARKS.md); never part of make test.
# BENCH_MESSAGES, BENCH_FRESH_SECONDS, BENCH_SPARK=0 (ours only).
bench: services-up build
	$(ENV) && bench/run.sh

# The full crash test: 1M messages, 20 SIGKILLs, output compared with a clean run.
chaos: services-up build
	$(ENV) && scripts/chaos.sh

demo: services-up build
	@echo "== producing $(DEMO_RATE) events/s for $(DEMO_SECONDS) s while the daemon runs"
	$(ENV) && ( $(BIN) produce --rate $(DEMO_RATE) --duration $(DEMO_SECONDS) & \
	  $(BIN) run --output $(DEMO_OUTPUT) --interval 5 --allowed-lateness 10 --stop-when-idle 15; wait )
	@echo "== top influencers by copied notional (from $(DEMO_OUTPUT)/metrics/influencer_metrics_1m)"
	$(ENV) && $(BIN) query --output $(DEMO_OUTPUT) \
	  "SELECT influencer_id, sum(signals) AS signals, sum(executions) AS executions, \
	          round(sum(copied_notional), 2) AS copied_notional, \
	          round(avg(fill_rate), 4) AS avg_fill_rate, round(avg(avg_slippage_bps), 2) AS avg_slippage_bps \
	   FROM influencer_metrics_1m GROUP BY influencer_id ORDER BY copied_notional DESC LIMIT 10"
	$(ENV) && $(BIN) query --output $(DEMO_OUTPUT) \
	  "SELECT window_start, signals, executions, filled, error_rate, active_subscribers, p95_signal_to_fill_ms \
	   FROM system_metrics_1m ORDER BY window_start DESC LIMIT 5"

clean:
	rm -rf data
