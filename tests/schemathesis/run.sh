#!/usr/bin/env bash
# Bounded schemathesis run against stockd's own /openapi.json: no 5xx, no response that
# contradicts the schema, no state change on any 4xx; then `stockd verify` on the log it left.
# Usage: tests/schemathesis/run.sh PATH/TO/stockd  (installs schemathesis into a venv if needed)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "$1")"
venv="${SCHEMATHESIS_VENV:-$here/../../target/schemathesis-venv}"
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$venv"
  }
  "$venv/bin/pip" install --quiet "schemathesis>=4,<5" requests
fi

work="$(mktemp -d)"
token="schemathesis-admin-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
STOCKD_TOKENS="fuzzer:admin:$token" RUST_LOG=warn "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
  > "$work/stdout" 2> "$work/stderr" &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$work/stdout" 2>/dev/null && break
  sleep 0.1
done
base="$(sed -n 's/^stockd listening on //p' "$work/stdout")"
[ -n "$base" ] || { echo "stockd did not start:"; cat "$work/stderr"; exit 1; }

# A few products so that generated requests also meet existing data.
STOCKD_BASE="$base" STOCKD_TOKEN="$token" "$venv/bin/python" - <<'PY'
import os, requests
for sku in ["A", "B", "SHOE-42"]:
    r = requests.put(f"{os.environ['STOCKD_BASE']}/v1/products/{sku}", json={"on_hand": 1000},
                     headers={"Authorization": "Bearer " + os.environ["STOCKD_TOKEN"]}, timeout=10)
    r.raise_for_status()
PY

STOCKD_BASE="$base" STOCKD_TOKEN="$token" PYTHONPATH="$here" SCHEMATHESIS_HOOKS=hooks \
  "$venv/bin/schemathesis" run "$base/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,no_state_change_on_4xx \
    -H "Authorization: Bearer $token" \
    --phases examples,coverage,fuzzing --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-40}" \
    --workers 1 --seed 20261121 --generation-database none --request-timeout 10 --no-color

kill -TERM $pid
wait $pid
"$bin" verify --data-dir "$work/data"
