#!/usr/bin/env bash
# Identity: token endpoint throughput (client credentials, refresh with rotation) per core of
# Nimbus's CPU, against `openssl speed rsa2048`'s single-core signing rate in the same run (the
# cryptographic ceiling: every token is one RS256 signature); and sign-ins per second with the
# argon2id parameters in use.
source "$(dirname "$0")/common.sh"
need_packages wrk openssl python3
build_release
python3 "$ROOT/bench/identity/run.py" "$NIMBUS" "${DURATION:-10s}"
