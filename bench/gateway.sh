#!/usr/bin/env bash
# Gateway: proxying to a trivial upstream (nginx answering a fixed 200) through Nimbus with JWT
# validation on, vs nginx's own reverse proxy (no auth, keep-alive to the upstream) to the same
# upstream, in the same run: wrk -t2 -c50, alternating, ROUNDS rounds of DURATION each. Also
# measured: Nimbus with JWT + a rate limit (never reached), and Nimbus proxying anonymously.
# The issuer's discovery document and JWKS are static files served by the same nginx; the RS256
# token is signed here with openssl.
source "$(dirname "$0")/common.sh"
need_packages wrk nginx-light curl python3 openssl
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

UP_PORT=$(free_port); PROXY_PORT=$(free_port); ISSUER_PORT=$(free_port); NIMBUS_PORT=$(free_port)
ISSUER="http://127.0.0.1:$ISSUER_PORT"
mkdir -p "$TMP/app" "$TMP/issuer/.well-known"

# The issuer: an RSA key, its JWKS and discovery document, and a token valid for an hour.
openssl genrsa -out "$TMP/key.pem" 2048 2>/dev/null
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
N=$(openssl rsa -in "$TMP/key.pem" -noout -modulus | cut -d= -f2 |
  python3 -c 'import base64, sys; print(base64.urlsafe_b64encode(bytes.fromhex(sys.stdin.read().strip())).decode().rstrip("="))')
echo "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"bench\",\"alg\":\"RS256\",\"use\":\"sig\",\"n\":\"$N\",\"e\":\"AQAB\"}]}" >"$TMP/issuer/jwks.json"
echo "{\"issuer\":\"$ISSUER\",\"jwks_uri\":\"$ISSUER/jwks.json\"}" >"$TMP/issuer/.well-known/openid-configuration"
NOW=$(date +%s)
HEADER=$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | b64url)
PAYLOAD=$(printf '{"iss":"%s","aud":"api://bench","sub":"bench-user","scope":"bench","iat":%d,"exp":%d}' "$ISSUER" "$NOW" $((NOW + 3600)) | b64url)
SIGNATURE=$(printf '%s.%s' "$HEADER" "$PAYLOAD" | openssl dgst -sha256 -sign "$TMP/key.pem" -binary | b64url)
TOKEN="$HEADER.$PAYLOAD.$SIGNATURE"

cat >"$TMP/nginx.conf" <<CONF
daemon on; pid $TMP/nginx.pid; error_log $TMP/error.log; worker_processes 2;
events { worker_connections 1024; }
http {
  access_log $TMP/access.log; client_body_temp_path $TMP; proxy_temp_path $TMP;
  fastcgi_temp_path $TMP; uwsgi_temp_path $TMP; scgi_temp_path $TMP;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 64; }
  # Keep-alive connections to the upstream live on (nginx closes them after 100 requests by
  # default), so the run measures proxying rather than reconnecting.
  server { listen 127.0.0.1:$UP_PORT; access_log off; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$PROXY_PORT;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$ISSUER_PORT; root $TMP/issuer; default_type application/json; }
}
CONF
nginx -c "$TMP/nginx.conf" -p "$TMP"

cat >"$TMP/app/nimbus.toml" <<TOML
[[gateway.issuers]]
issuer = "$ISSUER"
audience = "api://bench"

[[routes]]
path = "/jwt/*"
auth = "jwt"
scopes = ["bench"]
backend = "http://127.0.0.1:$UP_PORT"
rewrite_prefix = "/"

[[routes]]
path = "/limited/*"
auth = "jwt"
rate_limit = { key = "sub", requests = 1000000000, per = "1s" }
backend = "http://127.0.0.1:$UP_PORT"
rewrite_prefix = "/"

[[routes]]
path = "/anon/*"
auth = "anonymous"
backend = "http://127.0.0.1:$UP_PORT"
rewrite_prefix = "/"
TOML
"$NIMBUS" up "$TMP/app" --port "$NIMBUS_PORT" >/dev/null 2>"$TMP/nimbus.log" &
NIMBUS_PID=$!
wait_http "http://127.0.0.1:$PROXY_PORT/x"
wait_http "http://127.0.0.1:$NIMBUS_PORT/anon/x"
curl -fsS -o /dev/null -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$NIMBUS_PORT/jwt/x" \
  || { echo "the token is refused:"; curl -sS -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$NIMBUS_PORT/jwt/x"; exit 1; }

cat >"$TMP/auth.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA

declare -a X_RPS X_P99 J_RPS J_P99 L_RPS L_P99 A_RPS A_P99
for round in $(seq 1 "$ROUNDS"); do
  read -r r p < <(wrk_run "http://127.0.0.1:$PROXY_PORT/x"); X_RPS+=("$r"); X_P99+=("$p")
  read -r r p < <(wrk_run "http://127.0.0.1:$NIMBUS_PORT/jwt/x" "$TMP/auth.lua"); J_RPS+=("$r"); J_P99+=("$p")
  read -r r p < <(wrk_run "http://127.0.0.1:$NIMBUS_PORT/limited/x" "$TMP/auth.lua"); L_RPS+=("$r"); L_P99+=("$p")
  read -r r p < <(wrk_run "http://127.0.0.1:$NIMBUS_PORT/anon/x"); A_RPS+=("$r"); A_P99+=("$p")
  echo "round $round: nginx proxy ${X_RPS[-1]} req/s p99 ${X_P99[-1]} ms | nimbus jwt ${J_RPS[-1]} p99 ${J_P99[-1]} | jwt+rate limit ${L_RPS[-1]} p99 ${L_P99[-1]} | anonymous ${A_RPS[-1]} p99 ${A_P99[-1]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
x=$(median "${X_RPS[@]}"); xp=$(median "${X_P99[@]}")
for name in J L A; do
  rps_var="${name}_RPS[@]"; p99_var="${name}_P99[@]"
  r=$(median "${!rps_var}"); p=$(median "${!p99_var}")
  case $name in J) label="nimbus jwt";; L) label="nimbus jwt+rate limit";; A) label="nimbus anonymous";; esac
  echo "median $label: $r req/s (p99 $p ms) = $(ratio "$r" "$x")x nginx throughput, p99 $(ratio "$p" "$xp")x"
done
echo "median nginx proxy: $x req/s (p99 $xp ms)"
