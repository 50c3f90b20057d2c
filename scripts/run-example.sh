#!/usr/bin/env bash
# The main job until the reference app exists: runs examples/hello (a Python function, embedded
# defaults, one port). Installs Debian's python3 if it is missing; extra arguments go to `nimbus up`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v python3 >/dev/null 2>&1; then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 >/dev/null
fi
exec cargo run --release --quiet -p nimbus -- up examples/hello "$@"
