#!/usr/bin/env bash
# The MMoE paper's synthetic experiment (Ma et al., KDD 2018, section 3.2 and figure 4):
# shared-bottom vs OMoE vs MMoE (and PLE, for reference) at task relatedness
# p in {0.5, 0.9, 1.0}, with the paper's sizes (models/synthetic_*.toml), many seeds
# (data and weights both change with the seed). Writes docs/synthetic_results.md:
# test MSE (mean over both tasks) mean ± sd per cell with [min, max] (the paper's
# trainability view), and each model's per-seed difference to MMoE (same seed, same
# data), which removes the data draw's share of the spread.
#
#   scripts/reproduce_synthetic.sh [SEEDS] [EPOCHS] [ROWS] [OUT]
#                                   (defaults 10, 30, 100000, docs/synthetic_results.md)
#   scripts/reproduce_synthetic.sh --summarize RUNS_FILE       (tables from saved runs)
set -euo pipefail
cd "$(dirname "$0")/.."
models="shared_bottom omoe mmoe ple"
ps="0.5 0.9 1.0"

summarize() { # runs file, header lines on stdin
  local runs=$1
  cat
  echo "| p | shared-bottom | OMoE | MMoE | PLE (2 levels) |"
  echo "|---|---|---|---|---|"
  for p in $ps; do
    row="| $p |"
    for m in $models; do
      cell=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { n++; s += $4; ss += $4 * $4; if (n == 1 || $4 < lo) lo = $4; if (n == 1 || $4 > hi) hi = $4 }
        END { if (!n) { printf "-"; exit } mean = s / n; sd = (n > 1) ? sqrt((ss - n * mean * mean) / (n - 1)) : 0; printf "%.4f ± %.4f [%.4f, %.4f]", mean, sd, lo, hi }' "$runs")
      row="$row $cell |"
    done
    echo "$row"
  done
  echo
  echo "Paired by seed (same data): test MSE minus MMoE's, mean ± sd over seeds, and the seeds where MMoE is lower:"
  echo
  echo "| p | shared-bottom - MMoE | OMoE - MMoE | PLE - MMoE |"
  echo "|---|---|---|---|"
  for p in $ps; do
    row="| $p |"
    for m in shared_bottom omoe ple; do
      cell=$(awk -v p="$p" -v m="$m" '$1 == p { v[$2 " " $3] = $4; if ($2 == m) seeds[$3] = 1 }
        END { for (s in seeds) if (("mmoe " s) in v) { d = v[m " " s] - v["mmoe " s]; n++; t += d; tt += d * d; if (d > 0) w++ }
              if (!n) { printf "-"; exit } mean = t / n; sd = (n > 1) ? sqrt((tt - n * mean * mean) / (n - 1)) : 0
              printf "%+.5f ± %.5f (MMoE lower on %d of %d)", mean, sd, w, n }' "$runs")
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
}

if [ "${1:-}" = "--summarize" ]; then
  summarize "$2" < /dev/null
  exit 0
fi
seeds=${1:-10}; epochs=${2:-30}; rows=${3:-100000}; out_md=${4:-docs/synthetic_results.md}
cargo build --release -q
bin=${MULTIGATE_BIN:-target/release/multigate}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
runs="$tmp/runs.txt"
for p in $ps; do
  for m in $models; do
    for s in $(seq 1 "$seeds"); do
      sed -e "s/^correlation = .*/correlation = $p/" -e "s/^seed = 1$/seed = $s/" -e "s/^seed = 42$/seed = $((42 + s))/" \
        "models/synthetic_$m.toml" > "$tmp/spec.toml"
      out=$("$bin" compile-and-train "$tmp/spec.toml" --rows "$rows" --epochs "$epochs" --out "$tmp/bundle" --fresh --force)
      mse=$(echo "$out" | awk '/^test y[12]: mse/ {s += $4} END {printf "%.5f", s / 2}')
      echo "$p $m $s $mse" | tee -a "$runs" >&2
    done
  done
done
summarize "$runs" > "$out_md" <<HEADER
# MMoE paper, synthetic data (section 3.2)

\`scripts/reproduce_synthetic.sh $seeds $epochs $rows $out_md\` on $(nproc) cores ($(uname -m)), $(date -u +%Y-%m-%d):
$rows rows (80/10/10 split), $epochs epochs, the paper's sizes, $seeds seeds per cell (data and weights).
Test MSE averaged over the two tasks; mean ± sd over seeds, then [min, max] (the paper's trainability view).
The label noise has variance 0.01, the floor of every figure here.

HEADER
head -22 "$out_md"
