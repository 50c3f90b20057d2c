# Shared set-up for the benchmarks: Debian packages, a release build, free ports.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NIMBUS="$ROOT/target/release/nimbus"

need_packages() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if ((${#missing[@]})); then
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

build_release() {
  (cd "$ROOT" && cargo build --release -p nimbus --quiet)
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() { # URL: wait until it answers 200, at most 10 s
  for _ in $(seq 1 1000); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.01
  done
  echo "no answer from $1" >&2
  return 1
}

wrk_run() { # URL [LUA_SCRIPT] -> "req/s p99_ms"; fails on error responses. Needs $TMP.
  local script=()
  [[ -n "${2:-}" ]] && script=(-s "$2")
  wrk -t2 -c50 -d"${DURATION:-10s}" --latency "${script[@]}" "$1" >"$TMP/wrk.out"
  if grep -q "Non-2xx" "$TMP/wrk.out"; then echo "errors from $1:" >&2; cat "$TMP/wrk.out" >&2; return 1; fi
  local rps p99
  rps=$(awk '/^Requests\/sec/ {print $2}' "$TMP/wrk.out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$TMP/wrk.out")
  echo "$rps $p99"
}

median() {
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'
}
