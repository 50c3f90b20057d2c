#!/usr/bin/env bash
# Static site: wrk -t2 -c50 on a 1 KB and a 1 MB file, Nimbus serving them from [site] dir (the
# $web container) vs nginx serving the same files, alternating, ROUNDS rounds of DURATION each.
# Both log every request. Then upload and download of a large object (SIZE_MB, default 1024)
# through the REST API, against `cp` of the same file on the same disk.
source "$(dirname "$0")/common.sh"
need_packages wrk nginx-light curl python3
build_release
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
SIZE_MB=${SIZE_MB:-1024}
TMP=$(mktemp -d -p "${BENCH_DIR:-/tmp}")
cleanup() {
  [[ -n "${NIMBUS_PID:-}" ]] && kill "$NIMBUS_PID" 2>/dev/null && wait "$NIMBUS_PID" 2>/dev/null
  [[ -f "$TMP/nginx.pid" ]] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/app/web"
head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 >"$TMP/app/web/1k.txt"
head -c 1048576 /dev/urandom >"$TMP/app/web/1m.bin"
printf '[site]\ndir = "web"\n' >"$TMP/app/nimbus.toml"
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
  server { listen 127.0.0.1:$NGINX_PORT; root $TMP/app/web; etag on; }
}
CONF
nginx -c "$TMP/nginx.conf" -p "$TMP"
wait_http "http://127.0.0.1:$NIMBUS_PORT/1k.txt"
wait_http "http://127.0.0.1:$NGINX_PORT/1k.txt"

for file in 1k.txt 1m.bin; do
  declare -a N_RPS=() N_P99=() X_RPS=() X_P99=()
  for round in $(seq 1 "$ROUNDS"); do
    read -r r p < <(wrk_run "http://127.0.0.1:$NIMBUS_PORT/$file"); N_RPS+=("$r"); N_P99+=("$p")
    read -r r p < <(wrk_run "http://127.0.0.1:$NGINX_PORT/$file"); X_RPS+=("$r"); X_P99+=("$p")
    echo "$file round $round: nimbus ${N_RPS[-1]} req/s p99 ${N_P99[-1]} ms | nginx ${X_RPS[-1]} req/s p99 ${X_P99[-1]} ms"
  done
  n=$(median "${N_RPS[@]}"); x=$(median "${X_RPS[@]}")
  echo "$file median: nimbus $n req/s (p99 $(median "${N_P99[@]}") ms), nginx $x req/s (p99 $(median "${X_P99[@]}") ms); ratio $(awk -v a="$n" -v b="$x" 'BEGIN {printf "%.2f", a/b}')"
done

# Large object: upload and download through the REST API vs cp on the same disk.
TOKEN=$(cat "$TMP/app/.nimbus/admin-token")
head -c $((SIZE_MB * 1048576)) /dev/urandom >"$TMP/big.bin"
sync
secs() { python3 -c 'import sys, time; t = time.monotonic(); import subprocess; subprocess.run(sys.argv[1:], check=True); print(f"{time.monotonic() - t:.2f}")' "$@"; }
cp_s=$(secs cp "$TMP/big.bin" "$TMP/copy.bin")
up_s=$(secs curl -sf -o /dev/null -X PUT -H "authorization: Bearer $TOKEN" -T "$TMP/big.bin" "http://127.0.0.1:$NIMBUS_PORT/_nimbus/blob/bench/big.bin")
down_s=$(secs curl -sf -o "$TMP/down.bin" -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$NIMBUS_PORT/_nimbus/blob/bench/big.bin")
cmp -s "$TMP/big.bin" "$TMP/down.bin" || { echo "the download differs from the upload"; exit 1; }
echo "${SIZE_MB} MB: cp ${cp_s} s, upload ${up_s} s ($(awk -v a="$cp_s" -v b="$up_s" 'BEGIN {printf "%.2f", a/b}')x cp), download ${down_s} s ($(awk -v a="$cp_s" -v b="$down_s" 'BEGIN {printf "%.2f", a/b}')x cp)"
