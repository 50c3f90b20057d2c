#!/usr/bin/env bash
# A/B of the gateway's hot path between two builds, in one run: REV (a git revision, built in a
# worktree under target/ab/) against the working tree, both proxying anonymously to the same
# trivial upstream (nginx answering a fixed 200), wrk -t2 -c50, alternating, ROUNDS rounds of
# DURATION each. Prints each round and the median ratio (working tree / REV).
#   bench/ab.sh f67ed2b
source "$(dirname "$0")/common.sh"
need_packages wrk nginx-light curl python3
REV=${1:?usage: bench/ab.sh REV}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
build_release
BASE_TREE="$ROOT/target/ab/tree"
if [[ ! -d "$BASE_TREE" ]]; then git -C "$ROOT" worktree add --detach "$BASE_TREE" "$REV" >/dev/null; fi
git -C "$BASE_TREE" checkout --quiet --detach "$REV"
(cd "$BASE_TREE" && CARGO_TARGET_DIR="$ROOT/target/ab/target" cargo build --release -p nimbus --quiet)
BASE="$ROOT/target/ab/target/release/nimbus"
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  [[ -f "$TMP/nginx.pid" ]] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

UP_PORT=$(free_port); A_PORT=$(free_port); B_PORT=$(free_port)
cat >"$TMP/nginx.conf" <<CONF
daemon on; pid $TMP/nginx.pid; error_log $TMP/error.log; worker_processes 1;
events { worker_connections 1024; }
http {
  access_log off; client_body_temp_path $TMP; proxy_temp_path $TMP;
  fastcgi_temp_path $TMP; uwsgi_temp_path $TMP; scgi_temp_path $TMP;
  server { listen 127.0.0.1:$UP_PORT; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
}
CONF
nginx -c "$TMP/nginx.conf" -p "$TMP"
for side in base head; do
  mkdir -p "$TMP/$side"
  printf '[[routes]]\npath = "/anon/*"\nauth = "anonymous"\nbackend = "http://127.0.0.1:%s"\nrewrite_prefix = "/"\n' \
    "$UP_PORT" >"$TMP/$side/nimbus.toml"
done
"$BASE" up "$TMP/base" --port "$A_PORT" >/dev/null 2>"$TMP/base.log" & PIDS+=($!)
"$NIMBUS" up "$TMP/head" --port "$B_PORT" >/dev/null 2>"$TMP/head.log" & PIDS+=($!)
wait_http "http://127.0.0.1:$A_PORT/anon/x"
wait_http "http://127.0.0.1:$B_PORT/anon/x"

declare -a A_RPS B_RPS
for round in $(seq 1 "$ROUNDS"); do
  read -r ra pa < <(wrk_run "http://127.0.0.1:$A_PORT/anon/x"); A_RPS+=("$ra")
  read -r rb pb < <(wrk_run "http://127.0.0.1:$B_PORT/anon/x"); B_RPS+=("$rb")
  echo "round $round: $REV $ra req/s p99 $pa ms | working tree $rb req/s p99 $pb ms"
done
a=$(median "${A_RPS[@]}"); b=$(median "${B_RPS[@]}")
echo "median: $REV $a req/s, working tree $b req/s, ratio $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", b/a}')"
