#!/usr/bin/env bash
# Shared-bottom vs OMoE vs MMoE on the MMoE paper's synthetic data, over task
# correlations and seeds (the paper's figure 4 setting, scaled to a 2-core machine).
# Prints one line per run and a mean test MSE (over both tasks) per model and p.
#
#   scripts/synthetic_sweep.sh [ROWS] [EPOCHS] [SEEDS...]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-100000}; epochs=${2:-10}; shift 2 || true
seeds=("${@:-1 2 3}"); read -r -a seeds <<< "${seeds[*]}"
cargo build --release -q
bin=target/release/multigate
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for p in 0.9 0.5 0.1; do
  for m in shared_bottom omoe mmoe; do
    sum=0; n=0
    for s in "${seeds[@]}"; do
      sed -e "s/^correlation = .*/correlation = $p/" -e "s/^seed = 1$/seed = $s/" -e "s/^seed = 42$/seed = $((42 + s))/" \
        models/synthetic_$m.toml > "$tmp/spec.toml"
      out=$("$bin" compile-and-train "$tmp/spec.toml" --rows "$rows" --epochs "$epochs" --out "$tmp/bundle" --force)
      mse=$(echo "$out" | awk '/^test y[12]: mse/ {s += $4} END {printf "%.4f", s / 2}')
      echo "p=$p model=$m seed=$s test_mse=$mse"
      sum=$(echo "$sum + $mse" | bc -l); n=$((n + 1))
    done
    printf 'MEAN p=%s model=%-13s test_mse=%.4f over %d seeds\n' "$p" "$m" "$(echo "$sum / $n" | bc -l)" "$n"
  done
done
