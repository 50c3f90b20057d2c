#!/usr/bin/env bash
# HTTP stack ceiling: wrk -t2 -c50 against Nimbus's trivial liveness route (/_nimbus/health) and
# against nginx serving a 1 KB file, in the same run, alternating, 3 rounds of 10 s each.
# Both log every request to a file (nginx's access log, nimbus's stderr).
source "$(dirname "$0")/common.sh"
need_packages wrk nginx-light curl python3
build_release
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
TMP=$(mktemp -d)
cleanup() {
  [[ -n "${NIMBUS_PID:-}" ]] && kill "$NIMBUS_PID" 2>/dev/null && wait "$NIMBUS_PID" 2>/dev/null
  [[ -f "$TMP/nginx.pid" ]] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/app" "$TMP/www"
head -c 1024 /dev/urandom | base64 | head -c 1024 >"$TMP/www/1k.txt"
NIMBUS_PORT=$(free_port)
"$NIMBUS" up "$TMP/app" --port "$NIMBUS_PORT" >/dev/null 2>"$TMP/nimbus.log" &
NIMBUS_PID=$!
NGINX_PORT=$(free_port)
cat >"$TMP/nginx.conf" <<CONF
daemon on; pid $TMP/nginx.pid; error_log $TMP/error.log; worker_processes 2;
events { worker_connections 1024; }
http {
  access_log $TMP/access.log; client_body_temp_path $TMP; proxy_temp_path $TMP;
  fastcgi_temp_path $TMP; uwsgi_temp_path $TMP; scgi_temp_path $TMP;
  server { listen 127.0.0.1:$NGINX_PORT; root $TMP/www; }
}
CONF
nginx -c "$TMP/nginx.conf" -p "$TMP"
wait_http "http://127.0.0.1:$NIMBUS_PORT/_nimbus/health"
wait_http "http://127.0.0.1:$NGINX_PORT/1k.txt"


declare -a N_RPS N_P99 X_RPS X_P99
for round in $(seq 1 "$ROUNDS"); do
  read -r r p < <(wrk_run "http://127.0.0.1:$NIMBUS_PORT/_nimbus/health"); N_RPS+=("$r"); N_P99+=("$p")
  read -r r p < <(wrk_run "http://127.0.0.1:$NGINX_PORT/1k.txt"); X_RPS+=("$r"); X_P99+=("$p")
  echo "round $round: nimbus ${N_RPS[-1]} req/s p99 ${N_P99[-1]} ms | nginx ${X_RPS[-1]} req/s p99 ${X_P99[-1]} ms"
done
n=$(median "${N_RPS[@]}"); x=$(median "${X_RPS[@]}")
echo "median: nimbus $n req/s (p99 $(median "${N_P99[@]}") ms), nginx $x req/s (p99 $(median "${X_P99[@]}") ms)"
echo "ratio nimbus/nginx throughput: $(awk -v a="$n" -v b="$x" 'BEGIN {printf "%.2f", a/b}')"
