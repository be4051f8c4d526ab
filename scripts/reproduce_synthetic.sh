#!/usr/bin/env bash
# The MMoE paper's synthetic experiment (Ma et al., KDD 2018, section 3.2 and figure 4):
# shared-bottom vs OMoE vs MMoE (and PLE, for reference) at task relatedness
# p in {0.5, 0.9, 1.0}, with the paper's sizes (models/synthetic_*.toml), many seeds
# (data and weights both change with the seed). Writes docs/synthetic_results.md:
# test MSE (mean over both tasks) mean ± sd per cell, and the trainability view (the
# spread of final losses over the seeds: min, max).
#
#   scripts/reproduce_synthetic.sh [SEEDS] [EPOCHS] [ROWS]     (defaults 10, 30, 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-10}; epochs=${2:-30}; rows=${3:-100000}
cargo build --release -q
bin=${MULTIGATE_BIN:-target/release/multigate}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
runs="$tmp/runs.txt"
for p in 0.5 0.9 1.0; do
  for m in shared_bottom omoe mmoe ple; do
    for s in $(seq 1 "$seeds"); do
      sed -e "s/^correlation = .*/correlation = $p/" -e "s/^seed = 1$/seed = $s/" -e "s/^seed = 42$/seed = $((42 + s))/" \
        "models/synthetic_$m.toml" > "$tmp/spec.toml"
      out=$("$bin" compile-and-train "$tmp/spec.toml" --rows "$rows" --epochs "$epochs" --out "$tmp/bundle" --fresh)
      mse=$(echo "$out" | awk '/^test y[12]: mse/ {s += $4} END {printf "%.5f", s / 2}')
      echo "$p $m $s $mse" | tee -a "$runs" >&2
    done
  done
done
{
  echo "# MMoE paper, synthetic data (section 3.2)"
  echo
  echo "\`scripts/reproduce_synthetic.sh $seeds $epochs $rows\` on $(nproc) cores ($(uname -m)), $(date -u +%Y-%m-%d):"
  echo "$rows rows (80/10/10 split), $epochs epochs, the paper's sizes, $seeds seeds per cell (data and weights)."
  echo "Test MSE averaged over the two tasks; mean ± sd over seeds, then [min, max] (the paper's trainability view)."
  echo
  echo "| p | shared-bottom | OMoE | MMoE | PLE (2 levels) |"
  echo "|---|---|---|---|---|"
  for p in 0.5 0.9 1.0; do
    row="| $p |"
    for m in shared_bottom omoe mmoe ple; do
      cell=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { n++; s += $4; ss += $4 * $4; if (n == 1 || $4 < lo) lo = $4; if (n == 1 || $4 > hi) hi = $4 }
        END { mean = s / n; sd = (n > 1) ? sqrt((ss - n * mean * mean) / (n - 1)) : 0; printf "%.4f ± %.4f [%.4f, %.4f]", mean, sd, lo, hi }' "$runs")
      row="$row $cell |"
    done
    echo "$row"
  done
  echo
  echo "Per-run figures (p, model, seed, test MSE):"
  echo
  echo '```'
  cat "$runs"
  echo '```'
} > docs/synthetic_results.md
cat docs/synthetic_results.md | head -12
