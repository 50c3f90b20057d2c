#!/usr/bin/env bash
# Cold start of `nimbus up` to a ready health check (SQLite, empty app), median of 10 runs,
# with nginx's start-up measured the same way as the baseline.
source "$(dirname "$0")/common.sh"
need_packages nginx-light python3
build_release
python3 "$ROOT/bench/startup.py" "$NIMBUS" "${1:-10}"
