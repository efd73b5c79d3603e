#!/usr/bin/env bash
# Instructions per HTTP reserve, counted by callgrind: the server's whole user-space work for
# one durable flash-sale reserve (event loop, actor, log writer), kernel time excluded.
#
# Why: on this project's shared VM a build's throughput moves by ±20% between runs, so a
# change worth a few percent cannot be seen in req/s. An instruction count is the same from
# run to run (within ~1%), so two builds can be compared by it whatever the hour.
#
#   benches/instructions.sh                       # this build
#   STOCKD_BIN=/path/to/other/stockd benches/instructions.sh
#
# Runs the flash workload of `http_load` (16 connections) against stockd under callgrind,
# zeroes the counters once the load is under way, counts for MEASURE_SECONDS, and divides by
# the reserves answered in that window. Installs valgrind if it is missing (as root). Bounded:
# the load stops by itself after 30 s and every wait below gives up on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
measure_seconds="${MEASURE_SECONDS:-6}"

if ! command -v valgrind >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
cargo build --release --quiet
cargo bench --bench http_load --no-run --quiet 2>/dev/null
bin="${STOCKD_BIN:-$PWD/target/release/stockd}"

work="$(mktemp -d)"
load_pid=""
cleanup() {
  # The load runs in a process group of its own: end it, its server with it.
  [ -n "$load_pid" ] && kill -- "-$load_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/stockd" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$work/callgrind.%p "$bin" "\$@"
EOF
chmod +x "$work/stockd"

STOCKD_BIN="$work/stockd" setsid cargo bench --bench http_load --quiet -- --workload flash \
  --connections 16 --seconds 30 --rounds 1 >"$work/load.out" 2>&1 &
load_pid=$!

# The server under valgrind, and the port it listens on.
server="" port=""
for _ in $(seq 1 120); do
  server="$(pgrep -f "callgrind-out-file=$work/" | head -n 1 || true)"
  if [ -n "$server" ]; then
    port="$(ss -ltnpH 2>/dev/null | grep "pid=$server," | head -n 1 | awk '{print $4}' | sed 's/.*://' || true)"
    [ -n "$port" ] && break
  fi
  sleep 0.5
done
[ -n "$port" ] || { echo "stockd under valgrind did not start" >&2; exit 1; }

# Reserves answered so far (201s), from the server's own metrics.
reserves() {
  curl -s --max-time 10 "http://127.0.0.1:$port/metrics" |
    awk '/^stockd_http_requests_total\{.*route="\/v1\/reservations".*status="201"/ {n += $NF} END {print n + 0}'
}

# Warm-up: the connections are open and the engine has seen its first thousand reserves.
for _ in $(seq 1 60); do
  [ "$(reserves)" -ge 1000 ] && break
  sleep 0.5
done
before="$(reserves)"
callgrind_control -z "$server" >/dev/null 2>&1
sleep "$measure_seconds"
callgrind_control -d "$server" >/dev/null 2>&1
after="$(reserves)"

dump="$(ls "$work"/callgrind.*.1 2>/dev/null | head -n 1 || true)"
for _ in $(seq 1 20); do
  [ -n "$dump" ] && [ -s "$dump" ] && break
  sleep 0.5
  dump="$(ls "$work"/callgrind.*.1 2>/dev/null | head -n 1 || true)"
done
[ -n "$dump" ] || { echo "callgrind wrote no counts" >&2; exit 1; }
total="$(callgrind_annotate --threshold=100 --auto=no "$dump" 2>/dev/null |
  awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
answered=$((after - before))
[ "$answered" -gt 0 ] || { echo "no reserves answered while counting" >&2; exit 1; }
cp "$dump" target/callgrind.flash.out
echo "$answered reserves in ${measure_seconds} s under callgrind: $total instructions," \
  "$((total / answered)) per reserve"
echo "(per function: callgrind_annotate --inclusive=yes target/callgrind.flash.out)"
