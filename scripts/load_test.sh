#!/usr/bin/env bash
# Load test of `multigate serve` on loopback (issue 10): the seed model, 1-row requests
# with keep-alive at 1, 16 and 64 concurrent clients, then 256-row requests; requests/s,
# rows/s, p50/p99 latency, and the server's CPU use over each run.
#
# Usage: scripts/load_test.sh [SECONDS=10]
#   MULTIGATE_BIN, HTTP_LOAD_BIN  prebuilt binaries (default: built here)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
if [ -z "${MULTIGATE_BIN:-}" ] || [ -z "${HTTP_LOAD_BIN:-}" ]; then
  cargo build --release --quiet --bin multigate --example http_load
fi
bin=${MULTIGATE_BIN:-target/release/multigate}
load=${HTTP_LOAD_BIN:-target/release/examples/http_load}
tmp=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$tmp"' EXIT
spec=models/seed_avazu_mmoe.toml
"$bin" compile-and-train "$spec" --rows 20000 --epochs 1 --out "$tmp/b" >/dev/null 2>&1
"$bin" synth "$spec" --rows 5000 --out "$tmp/rows.csv" >/dev/null
"$bin" serve "$tmp/b" --port 0 >"$tmp/addr" 2>"$tmp/err" &
server=$!
for _ in $(seq 50); do grep -q http "$tmp/addr" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's|.*http://||p' "$tmp/addr")
ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
hz=$(getconf CLK_TCK)
echo "server $addr ($(nproc) cores); $secs s per run"
echo "| clients | rows/request | requests/s | rows/s | p50 ms | p99 ms | errors | server CPU |"
echo "|---|---|---|---|---|---|---|---|"
for run in "1 1" "16 1" "64 1" "16 256"; do
  set -- $run
  before=$(ticks)
  line=$("$load" "$addr" seed_avazu_mmoe "$tmp/rows.csv" "$1" "$2" "$secs")
  cpu=$(awk -v a="$before" -v b="$(ticks)" -v hz="$hz" -v s="$secs" 'BEGIN { printf "%.0f%%", (b - a) / hz / s * 100 }')
  echo "$line $cpu |"
done
