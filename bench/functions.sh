#!/usr/bin/env bash
# Functions: warm invocations (Python and Node) vs the same handler served directly, cold start of a
# scaled-to-zero Python function vs `python3 -c pass`, and time to the first streamed chunk.
source "$(dirname "$0")/common.sh"
need_packages wrk python3 nodejs
build_release
python3 "$ROOT/bench/functions/run.py" "$NIMBUS" "${DURATION:-10s}"
