#!/usr/bin/env bash
# Census-Income (KDD), the MMoE paper's real benchmark (section 6.3), groups 1 and 2:
# shared-bottom / OMoE / MMoE / CGC / PLE (2 levels), several seeds each, test AUC
# mean ± sd, written to docs/census_results.md. Protocol of the issue's PyTorch
# reference (scripts/census_spec.sh): train on census-income.data.gz, select and stop
# early on paper-split/validation.gz, report on paper-split/test.gz (see
# ../shared/data/census-income-kdd/README.md); education, marital status and the
# survey weight are not inputs (group 1: income neither); experts of 16 units (8
# experts; CGC/PLE levels 4 shared + 2 per task), shared-bottom 128 units, towers of 8,
# embeddings of 8, Adam 1e-3.
#
#   scripts/reproduce_census.sh [SEEDS] [MAX_EPOCHS] [PATIENCE]    (defaults 5, 20, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/census_spec.sh
seeds=${1:-5}; epochs=${2:-20}; patience=${3:-3}
census_prepare
models="shared_bottom omoe mmoe cgc ple"
for g in 1 2; do
  for m in $models; do
    for s in $(seq 1 "$seeds"); do
      census_spec "$g" "$m" "$s" "$epochs" "$patience" > "$tmp/spec.toml"
      out=$("$bin" compile-and-train "$tmp/spec.toml" --out "$tmp/bundle" --fresh --force)
      aucs=$(echo "$out" | awk '/^test [a-z_]+: auc/ {printf "%s ", $4}')
      best=$(echo "$out" | awk '/^best epoch/ {print $3}')
      echo "$g $m $s $aucs$best" | tee -a "$runs" >&2
    done
  done
done

stat() { # group model column -> "mean ± sd"
  awk -v g="$1" -v m="$2" -v c="$3" '$1 == g && $2 == m { n++; s += $c; ss += $c * $c }
    END { mean = s / n; sd = (n > 1) ? sqrt((ss - n * mean * mean) / (n - 1)) : 0; printf "%.4f ± %.4f", mean, sd }' "$runs"
}
{
  echo "# Census-Income (KDD): MMoE paper groups 1 and 2"
  echo
  echo "\`scripts/reproduce_census.sh $seeds $epochs $patience\` on $(nproc) cores ($(uname -m)), $(date -u +%Y-%m-%d)."
  echo "Train on census-income.data.gz (199,523 rows), select the epoch and stop early (patience $patience, at most $epochs epochs)"
  echo "on paper-split/validation.gz, report test AUC on paper-split/test.gz (49,881 rows each); $seeds seeds; mean ± sd."
  echo
  for g in 1 2; do
    if [ "$g" = 1 ]; then t1="income"; else t1="college"; fi
    echo "Group $g:"
    echo
    echo "| model | $t1 | never married |"
    echo "|---|---|---|"
    for m in $models; do
      echo "| $m | $(stat "$g" "$m" 4) | $(stat "$g" "$m" 5) |"
    done
    echo
  done
  echo "Per-run figures (group, model, seed, test AUC task 1, test AUC never married, best epoch):"
  echo
  echo '```'
  cat "$runs"
  echo '```'
} > docs/census_results.md
sed -n 1,30p docs/census_results.md
