#!/usr/bin/env bash
# Durable orchestrations (issue 15): throughput of many sequential 5-activity orchestrations, one
# fan-out/fan-in of 1,000 activities, and the per-step latency of a 100-activity chain, on SQLite
# and on PostgreSQL (PG_URL, default the machine's `test` database).
source "$(dirname "$0")/common.sh"
need_packages python3
build_release
python3 "$ROOT/bench/durable/run.py" "$NIMBUS"
