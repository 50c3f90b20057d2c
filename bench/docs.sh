#!/usr/bin/env bash
# Docs (issue 5): point insert, point read, indexed equality (10 items) and 10-NN vector query over
# VECTORS x DIMS floats, through the REST API (wrk with bench/docs/*.lua, admin token), each against
# the same operation done directly on the backend in the same run, alternating, ROUNDS rounds of
# DURATION each. The data is loaded through the API first (bench/docs/load.py); the vector query
# is measured twice: before any other write (after one query that builds the node's vector index),
# and again in each round after that round's inserts. The baselines:
# - SQLite: bench/docs/direct-sqlite (rusqlite on the node's own database file: same rows, same
#   pragmas, one writer connection + a read connection per thread);
# - PostgreSQL: pgbench with bench/docs/pg/*.sql on the node's own schema (a fresh one, dropped at exit).
# Also reported: Nimbus's CPU per request (/proc/<pid>/stat) and the whole machine's CPU per
# operation (/proc/stat) for both sides, load generators and PostgreSQL included.
#
# DURATION=5s ROUNDS=2 ITEMS=10000 VECTORS=100000 DIMS=384 BACKENDS="sqlite postgres" by default;
# PostgreSQL at NIMBUS_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test).
source "$(dirname "$0")/common.sh"
need_packages wrk curl python3 postgresql-client
build_release
BENCH="$ROOT/bench"
DIRECT="$ROOT/target/direct-sqlite/release/direct-sqlite"
(cd "$BENCH/docs/direct-sqlite" && cargo build --release --quiet --target-dir "$ROOT/target/direct-sqlite")

DURATION=${DURATION:-5s}
SECS=${DURATION%s}
[[ $SECS =~ ^[0-9]+$ ]] || { echo "DURATION is whole seconds, e.g. 5s" >&2; exit 1; }
ROUNDS=${ROUNDS:-2}
BACKENDS=${BACKENDS:-sqlite postgres}
CONNS=${CONNS:-50}                 # wrk connections, point operations and the indexed query
VECTOR_CONNS=${VECTOR_CONNS:-4}    # wrk connections, vector query
THREADS=${THREADS:-4}              # direct SQLite threads (the store has 4 readers and 1 writer)
VECTOR_THREADS=${VECTOR_THREADS:-2}
PG_CLIENTS=${PG_CLIENTS:-16}       # pgbench -c (the store's pool holds 16 connections)
PG_URL=${NIMBUS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
export ITEMS=${ITEMS:-10000} DIMS=${DIMS:-384}
VECTORS=${VECTORS:-100000}
# vector0 is the vector query measured first, before any other write; vector, measured after the
# inserts of the same round, also pays for re-reading the writes since (see BENCHMARKS.md).
OPS=(vector0 insert read query vector)
declare -A LABEL=([insert]="point insert" [read]="point read" [query]="indexed query (10 items)"
  [vector0]="10-NN vector query" [vector]="10-NN, after the inserts")

TMP=$(mktemp -d -p "${BENCH_DIR:-/tmp}")
SCHEMA=""
stop_nimbus() {
  if [[ -n "${NIMBUS_PID:-}" ]]; then
    kill "$NIMBUS_PID" 2>/dev/null && wait "$NIMBUS_PID" 2>/dev/null
    NIMBUS_PID=""
  fi
  return 0
}
MAIN_PID=$BASHPID
cleanup() { # once, from the main shell (subshells may see the traps too)
  [[ $BASHPID == "$MAIN_PID" && -d "$TMP" ]] || return 0
  stop_nimbus
  [[ -n "$SCHEMA" ]] && PGOPTIONS="-c client_min_messages=warning" psql "$PG_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

mkdir -p "$TMP/app"
cat >"$TMP/app/nimbus.toml" <<'TOML'
[docs.containers.items]
partition_key = "/pk"
indexes = ["/group"]

[docs.containers.vectors]
partition_key = "/pk"
TOML

proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }                 # user + system, 1/100 s
machine_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; } # all but idle
per_op_us() { awk -v t="$1" -v n="$2" 'BEGIN {printf "%.1f", (n > 0) ? t * 10000 / n : 0}'; }
ms() { # wrk's latency (1.2ms, 850.00us, 1.50s) in ms
  awk -v v="$1" 'BEGIN {if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) sub(/ms/,"",v);
    else if (v ~ /m$/) {sub(/m/,"",v); v*=60000} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; printf "%.2f", v}'
}

# nimbus_run OP -> "req/s p50 p99 nimbus_cpu_us machine_cpu_us"
nimbus_run() {
  local op=${1%0} conns=$CONNS c0 m0 c1 m1 requests
  [[ $op == vector ]] && conns=$VECTOR_CONNS
  c0=$(proc_ticks "$NIMBUS_PID"); m0=$(machine_ticks)
  BENCH_RUN="$RUN_TAG" wrk -t2 -c"$conns" -d"$DURATION" --timeout 30s --latency \
    -s "$BENCH/docs/$op.lua" "$BASE" >"$TMP/wrk.out"
  c1=$(proc_ticks "$NIMBUS_PID"); m1=$(machine_ticks)
  if grep -qE "Non-2xx|Socket errors" "$TMP/wrk.out"; then
    echo "errors from $op:" >&2; cat "$TMP/wrk.out" >&2; return 1
  fi
  requests=$(awk '/requests in/ {print $1}' "$TMP/wrk.out")
  echo "$(awk '/^Requests\/sec/ {print $2}' "$TMP/wrk.out")" \
    "$(ms "$(awk '$1 == "50%" {print $2}' "$TMP/wrk.out")")" "$(ms "$(awk '$1 == "99%" {print $2}' "$TMP/wrk.out")")" \
    "$(per_op_us $((c1 - c0)) "$requests")" "$(per_op_us $((m1 - m0)) "$requests")"
}

# direct_run OP -> "ops/s client_cpu_us machine_cpu_us"
direct_run() {
  local op=${1%0} m0 m1 out ops
  m0=$(machine_ticks)
  if [[ $BACKEND == sqlite ]]; then
    local threads=$THREADS
    [[ $op == vector ]] && threads=$VECTOR_THREADS
    out=$("$DIRECT" "$DB" "$op" "$SECS" "$threads" "$RUN_TAG") || return 1
    m1=$(machine_ticks)
    ops=$(sed -E 's/.* ops=([0-9]+).*/\1/' <<<"$out")
    echo "$(sed -E 's/.*ops_s=([0-9.]+).*/\1/' <<<"$out")" "$(sed -E 's/.*cpu_us=([0-9.]+).*/\1/' <<<"$out")" \
      "$(per_op_us $((m1 - m0)) "$ops")"
  else
    local clients=$PG_CLIENTS
    [[ $op == vector ]] && clients=$VECTOR_THREADS
    PGOPTIONS="-c search_path=$SCHEMA" pgbench -n -M prepared -D items="$ITEMS" -f "$BENCH/docs/pg/$op.sql" \
      -c "$clients" -j 2 -T "$SECS" "$PG_URL" >"$TMP/pgbench.out" 2>&1 || { cat "$TMP/pgbench.out" >&2; return 1; }
    m1=$(machine_ticks)
    ops=$(awk '/actually processed/ {print $NF}' "$TMP/pgbench.out")
    echo "$(awk '/^tps = / {print $3}' "$TMP/pgbench.out")" "-" "$(per_op_us $((m1 - m0)) "$ops")"
  fi
}

# The requests the wrk scripts make, once, checked: each must answer what it should.
check_api() {
  local auth=(-H "Authorization: Bearer $NIMBUS_TOKEN" -H "Content-Type: application/json") got
  got=$(curl -fsS "${auth[@]}" "$BASE/_nimbus/docs/items/items/r7?pk=p7" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  [[ $got == r7 ]] || { echo "point read answered $got" >&2; return 1; }
  got=$(curl -fsS "${auth[@]}" -d '{"query":"SELECT * FROM c WHERE c.group = @g","parameters":[{"name":"@g","value":"g3"}]}' \
    "$BASE/_nimbus/docs/items/query" | python3 -c 'import json, sys; p = json.load(sys.stdin); print(len(p["items"]), len({i["pk"] for i in p["items"]}))')
  [[ $got == "10 10" ]] || { echo "indexed query: $got items/partitions, expected 10 10" >&2; return 1; }
  local q
  q=$(python3 -c "import random; print(','.join(f'{random.uniform(-1, 1):.6f}' for _ in range($DIMS)))")
  local started=$EPOCHREALTIME
  got=$(curl -fsS "${auth[@]}" -d "{\"query\":\"SELECT TOP 10 c.id FROM c ORDER BY VectorDistance(c.embedding, @q) DESC\",\"parameters\":[{\"name\":\"@q\",\"value\":[$q]}]}" \
    "$BASE/_nimbus/docs/vectors/query" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["items"]))')
  local took
  took=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.2f", b - a}')
  [[ $got == 10 ]] || { echo "vector query answered $got items" >&2; return 1; }
  echo "$BACKEND: first vector query (builds the node's vector index from the change feed): $took s"
  local times=()
  for _ in 1 2 3 4 5; do
    started=$EPOCHREALTIME
    curl -fsS -o /dev/null "${auth[@]}" -d "{\"query\":\"SELECT TOP 10 c.id FROM c ORDER BY VectorDistance(c.embedding, @q) DESC\",\"parameters\":[{\"name\":\"@q\",\"value\":[$q]}]}" \
      "$BASE/_nimbus/docs/vectors/query"
    times+=("$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", (b - a) * 1000}')")
  done
  echo "$BACKEND: vector query once warm, before any other write: median $(median "${times[@]}") ms of 5"
}

declare -A RES
measure() { # OP ROUND: Nimbus, then the direct baseline; results kept in RES
  local op=$1 n_rps n_p50 n_p99 n_cpu n_machine d_rps d_cpu d_machine field
  read -r n_rps n_p50 n_p99 n_cpu n_machine < <(nimbus_run "$op") || exit 1
  read -r d_rps d_cpu d_machine < <(direct_run "$op") || exit 1
  [[ -n "$n_rps" && -n "$d_rps" ]] || { echo "$BACKEND $op: a measurement failed" >&2; exit 1; }
  for field in n_rps n_p50 n_p99 n_cpu n_machine d_rps d_cpu d_machine; do
    RES[$BACKEND/$op/$field]+=" ${!field}"
  done
  printf '%s round %d %-26s nimbus %9.1f req/s p50 %7.2f ms p99 %7.2f ms (%s µs CPU/req, machine %s) | direct %9.1f ops/s (client %s µs, machine %s) | ratio %.2f\n' \
    "$BACKEND" "$2" "${LABEL[$op]}" "$n_rps" "$n_p50" "$n_p99" "$n_cpu" "$n_machine" "$d_rps" "$d_cpu" "$d_machine" \
    "$(awk -v a="$n_rps" -v b="$d_rps" 'BEGIN {print a / b}')"
}

RUN=$(date +%s)
for BACKEND in $BACKENDS; do
  PORT=$(free_port)
  BASE="http://127.0.0.1:$PORT"
  DATA="$TMP/data-$BACKEND"
  args=(up "$TMP/app" --port "$PORT" --data-dir "$DATA")
  if [[ $BACKEND == postgres ]]; then
    SCHEMA="nimbus_bench_docs_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
    psql "$PG_URL" -v ON_ERROR_STOP=1 -qc "CREATE SCHEMA $SCHEMA" >/dev/null
    sep='?'; [[ $PG_URL == *\?* ]] && sep='&'
    args+=(--store "${PG_URL}${sep}options=-c%20search_path%3D$SCHEMA")
  fi
  "$NIMBUS" "${args[@]}" >/dev/null 2>"$TMP/nimbus-$BACKEND.log" &
  NIMBUS_PID=$!
  wait_http "$BASE/_nimbus/health/ready" || { cat "$TMP/nimbus-$BACKEND.log" >&2; exit 1; }
  export NIMBUS_TOKEN
  NIMBUS_TOKEN=$(cat "$DATA/admin-token")
  DB="$DATA/nimbus.db"
  echo "$BACKEND: $(python3 "$BENCH/docs/load.py" "$BASE" "$NIMBUS_TOKEN" items "$ITEMS")"
  echo "$BACKEND: $(python3 "$BENCH/docs/load.py" "$BASE" "$NIMBUS_TOKEN" vectors "$VECTORS" "$DIMS")"
  check_api
  RUN_TAG="$RUN-$BACKEND-0"
  for round in $(seq 1 "$ROUNDS"); do
    measure vector0 "$round"
  done
  for round in $(seq 1 "$ROUNDS"); do
    RUN_TAG="$RUN-$BACKEND-$round"  # makes inserted ids unique
    for op in "${OPS[@]}"; do
      [[ $op == vector0 ]] && continue
      measure "$op" "$round"
    done
  done
  stop_nimbus
  if [[ $BACKEND == postgres ]]; then
    PGOPTIONS="-c client_min_messages=warning" psql "$PG_URL" -qc "DROP SCHEMA $SCHEMA CASCADE" >/dev/null
    SCHEMA=""
  fi
done

med() { median ${RES[$1]}; }
commas() { python3 -c "import sys; print(f'{float(sys.argv[1]):,.0f}')" "$1"; }
echo
echo "Medians of $ROUNDS rounds of $DURATION; CPU in µs per operation (nimbus: its process; machine: every core, load generator included)"
printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' backend operation "Nimbus req/s (p50 / p99 ms)" "direct ops/s" ratio \
  "Nimbus CPU/req" "machine CPU/op, Nimbus" "machine CPU/op, direct"
echo "|---|---|---|---|---|---|---|---|"
for BACKEND in $BACKENDS; do
  for op in "${OPS[@]}"; do
    n=$(med "$BACKEND/$op/n_rps"); d=$(med "$BACKEND/$op/d_rps")
    printf '| %s | %s | %s (%s / %s) | %s | **%s** | %s | %s | %s |\n' "$BACKEND" "${LABEL[$op]}" \
      "$(commas "$n")" "$(med "$BACKEND/$op/n_p50")" "$(med "$BACKEND/$op/n_p99")" "$(commas "$d")" \
      "$(awk -v a="$n" -v b="$d" 'BEGIN {printf "%.2f", a / b}')" "$(med "$BACKEND/$op/n_cpu")" \
      "$(med "$BACKEND/$op/n_machine")" "$(med "$BACKEND/$op/d_machine")"
  done
done
if [[ " $BACKENDS " == *" sqlite "* ]]; then
  echo
  r=$(med sqlite/read/n_rps); i=$(med sqlite/insert/n_rps)
  echo "goal point read ≥ 20,000/s on SQLite: $(awk -v v="$r" 'BEGIN {print (v >= 20000) ? "met" : "NOT met"}') ($r)"
  echo "goal point insert ≥ 5,000/s on SQLite: $(awk -v v="$i" 'BEGIN {print (v >= 5000) ? "met" : "NOT met"}') ($i)"
fi
for BACKEND in $BACKENDS; do
  for op in "${OPS[@]}"; do
    ratio=$(awk -v a="$(med "$BACKEND/$op/n_rps")" -v b="$(med "$BACKEND/$op/d_rps")" 'BEGIN {printf "%.2f", a / b}')
    echo "goal ≥ 0.5x direct, $BACKEND ${LABEL[$op]}: $(awk -v v="$ratio" 'BEGIN {print (v >= 0.5) ? "met" : "NOT met"}') ($ratio)"
  done
done
