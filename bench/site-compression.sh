#!/usr/bin/env bash
# Deploy-time compression on a real documentation site: `nimbus site deploy SITE` into a fresh app,
# with compression off (NIMBUS_SITE_COMPRESS=off) and on, alternating, ROUNDS rounds; prints the
# median deploy time of each and their ratio. Then serves the compressed deploy and sums, over every
# file, the bytes a client downloads asking for identity, gzip or br (HEAD requests; a file without a
# variant counts at its own size), and the same over the files that got variants.
# SITE defaults to The Rust Programming Language book that rustup installs with the toolchain's docs
# (HTML, CSS, JavaScript, SVG, fonts); NIMBUS_BIN uses a binary already built instead of building.
#   bench/site-compression.sh
#   SITE=/usr/share/doc/python3-pip/html ROUNDS=5 bench/site-compression.sh
source "$(dirname "$0")/common.sh"
need_packages curl python3
SITE=${SITE:-$(rustc --print sysroot)/share/doc/rust/html/book}
ROUNDS=${ROUNDS:-3}
[[ -d "$SITE" ]] || { echo "no site folder at $SITE (rustup's rust-docs component); set SITE=" >&2; exit 1; }
if [[ -n "${NIMBUS_BIN:-}" ]]; then NIMBUS=$NIMBUS_BIN; else build_release; fi
TMP=$(mktemp -d -p "${BENCH_DIR:-/tmp}")
cleanup() {
  [[ -n "${NIMBUS_PID:-}" ]] && kill "$NIMBUS_PID" 2>/dev/null && wait "$NIMBUS_PID" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

deploy() { # on|off -> seconds, into a fresh app at $TMP/app-$1
  rm -rf "$TMP/app-$1"
  mkdir -p "$TMP/app-$1"
  local start
  start=$(date +%s.%N)
  NIMBUS_SITE_COMPRESS=$1 "$NIMBUS" site --app "$TMP/app-$1" deploy "$SITE" >/dev/null 2>"$TMP/deploy.log" \
    || { cat "$TMP/deploy.log" >&2; exit 1; }
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$start" "$(date +%s.%N)"
}

echo "site: $SITE ($(find "$SITE" -type f | wc -l) files, $(du -sb "$SITE" | cut -f1) bytes)"
OFF=() ON=()
for round in $(seq 1 "$ROUNDS"); do
  OFF+=("$(deploy off)")
  ON+=("$(deploy on)")
  echo "round $round: deploy without compression ${OFF[-1]} s, with ${ON[-1]} s"
done
off=$(median "${OFF[@]}")
on=$(median "${ON[@]}")
python3 -c "import sys; print(f'median deploy: without {sys.argv[1]} s, with {sys.argv[2]} s, ratio {float(sys.argv[2]) / float(sys.argv[1]):.2f}')" "$off" "$on"

PORT=$(free_port)
"$NIMBUS" up "$TMP/app-on" --port "$PORT" >/dev/null 2>"$TMP/nimbus.log" &
NIMBUS_PID=$!
wait_http "http://127.0.0.1:$PORT/_nimbus/health"
python3 - "$SITE" "$PORT" <<'PY'
import http.client, os, sys, urllib.parse
site, port = sys.argv[1], int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
def length(path, accept):
    conn.request("HEAD", path, headers={"accept-encoding": accept})
    r = conn.getresponse(); r.read()
    assert r.status == 200, (path, r.status)
    return int(r.getheader("content-length")), r.getheader("content-encoding")
totals = {"identity": 0, "gzip": 0, "br": 0}
variant = {"identity": 0, "gzip": 0, "br": 0}
files = with_variants = 0
for root, _, names in os.walk(site):
    for name in names:
        rel = os.path.relpath(os.path.join(root, name), site)
        path = "/" + urllib.parse.quote(rel)
        sizes = {a: length(path, a) for a in totals}
        files += 1
        for a, (n, _) in sizes.items():
            totals[a] += n
        if sizes["br"][1] or sizes["gzip"][1]:
            with_variants += 1
            for a, (n, _) in sizes.items():
                variant[a] += n
def row(what, t):
    return f"| {what} | {t['identity']:,} | {t['gzip']:,} ({t['gzip'] / t['identity']:.1%}) | {t['br']:,} ({t['br'] / t['identity']:.1%}) |"
print(f"{files} files, {with_variants} with variants")
print("| | identity bytes | gzip | br |")
print("|---|---|---|---|")
print(row(f"all {files} files", totals))
print(row(f"the {with_variants} files with variants", variant))
PY
