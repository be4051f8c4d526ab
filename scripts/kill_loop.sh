#!/usr/bin/env bash
# kill -9 at random moments of a training run (epochs, checkpoint commits, the bundle
# commit), each kill followed by the checks of issue 11: the next reader finds a
# complete bundle, the old or the new one (never none, never a mix), and a resume ends
# bit for bit where an uninterrupted run ends, leaving no temporaries.
#
# Usage: scripts/kill_loop.sh [KILLS=20]
#   MULTIGATE_BIN  the binary (default target/release/multigate, built if absent)
# CI runs a short form (3 kills) through tests/suite/runs.rs.
set -euo pipefail
kills=${1:-20}
bin=${MULTIGATE_BIN:-target/release/multigate}
[ -x "$bin" ] || cargo build --release --quiet
spec=models/synthetic_mmoe.toml
args=(--rows 40000 --epochs 3)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export RAYON_NUM_THREADS=1 NO_COLOR=1

"$bin" compile-and-train "$spec" --rows 40000 --epochs 1 --out "$tmp/old" >/dev/null
"$bin" synth "$spec" --rows 50 --out "$tmp/rows.csv" >/dev/null
t0=$(date +%s%N)
"$bin" compile-and-train "$spec" "${args[@]}" --out "$tmp/new" >/dev/null
run_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
old=$(sha256sum < "$tmp/old/model.safetensors")
new=$(sha256sum < "$tmp/new/model.safetensors")

landed=0 lost=0 exact=0
for i in $(seq 1 "$kills"); do
  rm -rf "$tmp/run" "$tmp/run.checkpoint" "$tmp"/.run.*
  cp -r "$tmp/old" "$tmp/run"
  "$bin" compile-and-train "$spec" "${args[@]}" --out "$tmp/run" --force >/dev/null 2>&1 &
  pid=$!
  delay=$(( (RANDOM * 32768 + RANDOM) % (run_ms * 11 / 10 + 1) ))
  sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
  if kill -9 "$pid" 2>/dev/null; then landed=$((landed + 1)); fi
  wait "$pid" 2>/dev/null || true
  # The next reader recovers and finds a complete bundle: the old one or the new one.
  if "$bin" predict "$tmp/run" "$tmp/rows.csv" >/dev/null 2>"$tmp/err"; then
    w=$(sha256sum < "$tmp/run/model.safetensors")
    if [ "$w" != "$old" ] && [ "$w" != "$new" ]; then
      lost=$((lost + 1)); echo "kill $i (${delay} ms): the bundle is neither the old nor the new one"
    fi
  else
    lost=$((lost + 1)); echo "kill $i (${delay} ms): no loadable bundle:"; cat "$tmp/err"
  fi
  # Resume (or rerun, when no checkpoint was written yet) and compare with the uninterrupted run.
  if ! "$bin" compile-and-train "$spec" "${args[@]}" --out "$tmp/run" --force --resume >"$tmp/log" 2>&1; then
    echo "kill $i (${delay} ms): resume failed:"; cat "$tmp/log"; continue
  fi
  if [ "$(sha256sum < "$tmp/run/model.safetensors")" = "$new" ]; then
    exact=$((exact + 1))
  else
    echo "kill $i (${delay} ms): the resumed run's weights differ from the uninterrupted run's"
  fi
  left=$(cd "$tmp" && ls -A | grep -E '^\.run(\.checkpoint)?\.(tmp|ready|old)-' || true)
  [ -z "$left" ] || { echo "kill $i: temporaries left: $left"; lost=$((lost + 1)); }
  [ ! -e "$tmp/run.checkpoint" ] || { echo "kill $i: checkpoint left after the finished run"; lost=$((lost + 1)); }
done

echo "uninterrupted run: ${run_ms} ms; kills that landed during the run: $landed of $kills"
echo "bundles lost: $lost"
echo "resumes bit-exact: $exact of $kills"
[ "$lost" -eq 0 ] && [ "$exact" -eq "$kills" ]
