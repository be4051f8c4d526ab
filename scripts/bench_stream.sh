#!/usr/bin/env bash
# Streamed against in-memory training: peak resident memory and training samples/s.
#
#   scripts/bench_stream.sh [ROWS] [REPS] [BUFFER]
#
# Writes ROWS rows of models/seed_avazu_mmoe.toml's generator to a CSV (and the same
# rows as Parquet), then trains one epoch on each, loaded whole and streamed with a
# shuffle buffer of BUFFER rows, REPS times interleaved; prints each run and the
# medians. Peak RSS is GNU time's "Maximum resident set size". Defaults: 2,000,000
# rows (a 250 MB CSV), 2 repetitions, a buffer of 50,000 rows.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-2000000}
REPS=${2:-2}
BUFFER=${3:-50000}
cargo build --release --quiet
BIN=$PWD/target/release/multigate
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

"$BIN" synth models/seed_avazu_mmoe.toml --rows "$ROWS" --out "$dir/train.csv" >/dev/null 2>&1
"$BIN" synth models/seed_avazu_mmoe.toml --rows 20000 --out "$dir/val.csv" >/dev/null 2>&1
python3 - "$dir" "$BUFFER" <<'PY'
import sys
d, buffer = sys.argv[1], sys.argv[2]
s = open("models/seed_avazu_mmoe.toml").read()
a, b = s.index("[data]"), s.index("[[features]]")
for name, train, extra in [
    ("memory_csv", "train.csv", ""),
    ("stream_csv", "train.csv", f"stream = true\nshuffle_buffer = {buffer}\n"),
    ("memory_parquet", "train.parquet", ""),
    ("stream_parquet", "train.parquet", f"stream = true\nshuffle_buffer = {buffer}\n"),
]:
    data = f'[data]\nsource = "csv"\ntrain = ["{train}"]\nvalidation = "val.csv"\n{extra}\n'
    open(f"{d}/{name}.toml", "w").write(s[:a] + data + s[b:])
PY
# The same rows as Parquet (the spec's columns, typed as it reads them).
"$BIN" convert "$dir/memory_csv.toml" --out "$dir/pq" >/dev/null 2>&1
mv "$dir/pq/train.parquet" "$dir/train.parquet"
ls -la "$dir"/train.* | awk '{print $5, $9}'

run() { # name -> "rss_mb samples_per_s"
  /usr/bin/time -v "$BIN" compile-and-train "$dir/$1.toml" --epochs 1 --quiet --out "$dir/out_$1" 2>"$dir/time_$1" >/dev/null
  rss=$(awk -F: '/Maximum resident set size/ {print int($2 / 1024)}' "$dir/time_$1")
  sps=$(python3 -c "import json; print(int(json.load(open('$dir/out_$1/metrics.json'))['report']['epochs'][0]['train_samples_per_sec']))")
  rm -rf "$dir/out_$1" "$dir/out_$1.tensorboard"
  echo "$rss $sps"
}

declare -A RSS SPS
for rep in $(seq "$REPS"); do
  for name in memory_csv stream_csv memory_parquet stream_parquet; do
    read -r rss sps < <(run "$name")
    echo "rep $rep $name: peak RSS $rss MB, $sps samples/s"
    RSS[$name]+="$rss "
    SPS[$name]+="$sps "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo
echo "| $ROWS rows, 1 epoch | peak RSS (MB) | train samples/s |"
echo "|---|---|---|"
for name in memory_csv stream_csv memory_parquet stream_parquet; do
  echo "| $name | $(echo "${RSS[$name]}" | median) | $(echo "${SPS[$name]}" | median) |"
done
