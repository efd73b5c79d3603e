#!/usr/bin/env bash
# The side-by-side comparison in one command (run as root, on a machine like CI's):
# installs Debian's redis-server and postgresql if missing, starts each on 127.0.0.1 with
# durability equal to stockd's (nothing acknowledged before it is fsynced), then runs the HTTP
# load benchmark: stockd's three workloads, and the flash workload against both peers with the
# same connections for the same time. Prints one table.
#
#   benches/compare.sh                      # 64 connections, 10 s per run, 3 rounds
#   CONNECTIONS=256 SECONDS_PER_RUN=5 ROUNDS=1 benches/compare.sh --workload flash
#
# Each round runs every system in turn; the table shows each one's median round and the range.
set -euo pipefail
cd "$(dirname "$0")/.."
connections="${CONNECTIONS:-64}"
seconds="${SECONDS_PER_RUN:-10}"
rounds="${ROUNDS:-3}"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"

work="$(mktemp -d)"
chmod 755 "$work"
redis_port=16379
pg_port=15432
cleanup() {
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Redis: append-only file, fsync before every reply (appendfsync always), no RDB snapshots.
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work" --appendonly yes \
  --appendfsync always --save '' --daemonize yes --logfile "$work/redis.log" >/dev/null

# PostgreSQL: synchronous_commit on and fsync on (the defaults, stated), trust on loopback.
mkdir -p "$work/pg" "$work/pgsock" "$work/pglog"
chown postgres "$work/pg" "$work/pgsock" "$work/pglog"
runuser -u postgres -- "$pgbin/initdb" -D "$work/pg" --auth=trust -U postgres >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pglog/pg.log" -w start -o \
  "-p $pg_port -c listen_addresses=127.0.0.1 -k $work/pgsock -c synchronous_commit=on -c fsync=on -c max_connections=600 -c shared_buffers=256MB" >/dev/null

cargo bench --bench http_load -- --connections "$connections" --seconds "$seconds" \
  --rounds "$rounds" --redis-port "$redis_port" --pg-port "$pg_port" "$@"
