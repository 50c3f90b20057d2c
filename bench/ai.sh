#!/usr/bin/env bash
# AI gateway overhead (issue 16): chat completions through Nimbus (`/v1/*`, anonymous route, one
# backend) against calling the fake upstream directly, in the same run. The upstream is nginx
# answering a fixed chat.completion (and, for streams, a fixed 64-event SSE answer), so what is
# measured is the gateway: parsing and checking the body, choosing the backend, the upstream call,
# metering (tiktoken when the answer has no usage), relaying the stream event by event.
#  1. latency at a fixed rate (RATE, default 1,000 req/s, open loop with oha's latency correction):
#     p50 and p99, direct and through Nimbus; the difference is what the gateway adds;
#  2. streamed: events relayed per second at full load (oha -c 50), direct, through Nimbus, and
#     through nginx's own reverse proxy (unbuffered, keep-alive: a relay that parses nothing) as a peer.
# ROUNDS rounds alternate direct and Nimbus; DURATION each.
source "$(dirname "$0")/common.sh"
need_packages nginx-light curl python3
build_release
RATE=${RATE:-1000}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
OHA="$ROOT/target/bench-tools/bin/oha"
[[ -x "$OHA" ]] || cargo install --quiet --locked --root "$ROOT/target/bench-tools" oha
TMP=$(mktemp -d)
cleanup() {
  [[ -n "${NIMBUS_PID:-}" ]] && kill "$NIMBUS_PID" 2>/dev/null && wait "$NIMBUS_PID" 2>/dev/null
  [[ -f "$TMP/nginx.pid" ]] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

UP_PORT=$(free_port); NIMBUS_PORT=$(free_port); PROXY_PORT=$(free_port)
mkdir -p "$TMP/app"
ANSWER='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, friend"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}'
EVENTS=64
python3 - "$EVENTS" >"$TMP/stream.sse" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": {"content": " word%d" % i}, "finish_reason": None}]}
    print("data: " + json.dumps(chunk, separators=(",", ":")) + "\n")
print('data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":64,"total_tokens":73}}\n')
print("data: [DONE]\n")
PY

cat >"$TMP/nginx.conf" <<CONF
daemon on; pid $TMP/nginx.pid; error_log $TMP/error.log; worker_processes 1;
events { worker_connections 1024; }
http {
  access_log off; client_body_temp_path $TMP; proxy_temp_path $TMP;
  fastcgi_temp_path $TMP; uwsgi_temp_path $TMP; scgi_temp_path $TMP;
  server { listen 127.0.0.1:$UP_PORT; keepalive_requests 1000000;
    location = /v1/chat/completions { default_type application/json; return 200 '$ANSWER'; }
    # A static file answers POST with 405; the error page redirects to the same URI as a GET.
    location = /stream/v1/chat/completions { default_type text/event-stream; error_page 405 =200 \$uri; alias $TMP/stream.sse; }
  }
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server { listen 127.0.0.1:$PROXY_PORT; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
CONF
nginx -c "$TMP/nginx.conf" -p "$TMP"

cat >"$TMP/app/nimbus.toml" <<TOML
[[routes]]
path = "/v1/*"
backend = "ai"
auth = "anonymous"

[[routes]]
path = "/s/v1/*"
backend = "ai"
auth = "anonymous"

[ai]
[[ai.backends]]
name = "fast"
url = "http://127.0.0.1:$UP_PORT/v1"
models = ["m"]

[[ai.backends]]
name = "streaming"
url = "http://127.0.0.1:$UP_PORT/stream/v1"
models = ["s"]
TOML
NIMBUS_LOG=warn "$NIMBUS" up "$TMP/app" --port "$NIMBUS_PORT" >/dev/null 2>"$TMP/nimbus.log" &
NIMBUS_PID=$!
for _ in $(seq 1 500); do curl -fsS -o /dev/null "http://127.0.0.1:$NIMBUS_PORT/_nimbus/health" 2>/dev/null && break; sleep 0.02; done

BODY='{"model":"m","messages":[{"role":"user","content":"Say hello"}]}'
SBODY='{"model":"s","stream":true,"messages":[{"role":"user","content":"Say hello"}]}'
# One of each first: both paths answer as expected.
curl -fsS -X POST -H 'content-type: application/json' -d "$BODY" "http://127.0.0.1:$NIMBUS_PORT/v1/chat/completions" | grep -q 'Hello there'
curl -fsS -X POST -H 'content-type: application/json' -d "$SBODY" "http://127.0.0.1:$NIMBUS_PORT/v1/chat/completions" | grep -q '\[DONE\]'
curl -fsS -X POST -H 'content-type: application/json' -d "$SBODY" "http://127.0.0.1:$UP_PORT/stream/v1/chat/completions" | grep -q '\[DONE\]'

oha_json() { # URL BODY [oha options...] -> oha's JSON summary
  local url=$1 body=$2
  shift 2
  "$OHA" --no-tui --output-format json -z "$DURATION" -m POST -H 'content-type: application/json' -d "$body" "$@" "$url"
}
fixed() { # URL -> "p50_ms p99_ms success_rate"
  oha_json "$1" "$BODY" -q "$RATE" -c 50 --latency-correction | python3 -c '
import json, sys
s = json.load(sys.stdin)
p = s["latencyPercentiles"]
print("%.3f %.3f %.4f" % (p["p50"] * 1000, p["p99"] * 1000, s["summary"]["successRate"]))'
}
streamed() { # URL -> "requests/s success_rate"
  oha_json "$1" "$SBODY" -c 50 | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("%.1f %.4f" % (s["summary"]["requestsPerSec"], s["summary"]["successRate"]))'
}

echo "AI gateway overhead: $RATE req/s for $DURATION, $ROUNDS rounds alternating (p50 / p99 ms, success)"
for round in $(seq 1 "$ROUNDS"); do
  read -r d50 d99 dok < <(fixed "http://127.0.0.1:$UP_PORT/v1/chat/completions")
  read -r n50 n99 nok < <(fixed "http://127.0.0.1:$NIMBUS_PORT/v1/chat/completions")
  awk -v r="$round" -v d50="$d50" -v d99="$d99" -v n50="$n50" -v n99="$n99" -v dok="$dok" -v nok="$nok" 'BEGIN {
    printf "round %d  direct %.3f / %.3f (%s)  nimbus %.3f / %.3f (%s)  added p50 %.3f ms, p99 %.3f ms\n",
      r, d50, d99, dok, n50, n99, nok, n50 - d50, n99 - d99 }'
done
echo "Streamed ($EVENTS content events + usage + [DONE] an answer; -c 50, requests/s x $EVENTS = events/s)"
for round in $(seq 1 "$ROUNDS"); do
  read -r drps dok < <(streamed "http://127.0.0.1:$UP_PORT/stream/v1/chat/completions")
  read -r nrps nok < <(streamed "http://127.0.0.1:$NIMBUS_PORT/s/v1/chat/completions")
  read -r prps pok < <(streamed "http://127.0.0.1:$PROXY_PORT/stream/v1/chat/completions")
  awk -v r="$round" -v d="$drps" -v n="$nrps" -v p="$prps" -v e="$EVENTS" -v dok="$dok" -v nok="$nok" -v pok="$pok" 'BEGIN {
    printf "round %d  direct %.0f events/s (%s)  nimbus %.0f (%s) ratio %.2f  nginx proxy %.0f (%s) ratio %.2f\n",
      r, d * e, dok, n * e, nok, n / d, p * e, pok, p / d }'
done
