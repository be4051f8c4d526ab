#!/usr/bin/env bash
# Census-Income group 1 (income, never married): MMoE with MLP experts against MMoE with
# DCN-v2 cross-network experts (two cross layers below each expert's MLP), the protocol
# of scripts/reproduce_census.sh. Writes docs/census_cross.md and its raw lines to
# bench/results/.
#
#   scripts/census_cross.sh [SEEDS] [MAX_EPOCHS] [PATIENCE]    (defaults 5, 15, 2)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/census_spec.sh
seeds=${1:-5}; epochs=${2:-15}; patience=${3:-2}
census_prepare
# name | model | keys for every gated layer
variants=(
  "MMoE, MLP experts|mmoe|"
  "MMoE, cross experts (2 DCN-v2 layers)|mmoe|cross_layers = 2"
)
for s in $(seq 1 "$seeds"); do
  for v in "${variants[@]}"; do
    IFS='|' read -r name model layer <<< "$v"
    census_run "$name" "$model" "$s" "$epochs" "$patience" "$layer"
  done
done
commit=$(git rev-parse --short HEAD)
raw="bench/results/$(date -u +%Y-%m-%d)-census_cross-$commit.txt"
{
  echo "# scripts/census_cross.sh $seeds $epochs $patience at $commit, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p')"
  echo "# variant, seed, test income auc, test never_married auc, best epoch, seconds"
  cat "$runs"
} > "$raw"
{
  echo "# Census-Income group 1: MLP against DCN-v2 cross experts in MMoE"
  echo
  echo "\`scripts/census_cross.sh $seeds $epochs $patience\` at $commit on $(nproc) cores ($(uname -m)), $(date -u +%Y-%m-%d);"
  echo "the protocol of docs/census_results.md (patience $patience, at most $epochs epochs); test AUC, mean ± sd over $seeds seeds."
  echo "Raw lines: \`$raw\`."
  echo
  echo "| experts | income | never married |"
  echo "|---|---|---|"
  names=()
  for v in "${variants[@]}"; do IFS='|' read -r name _ <<< "$v"; names+=("$name"); done
  census_table "$runs" "${names[@]}"
} > docs/census_cross.md
cat docs/census_cross.md
