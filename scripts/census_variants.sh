#!/usr/bin/env bash
# Trying to beat the reference on Census-Income group 1 (income, never married): the
# same protocol as scripts/reproduce_census.sh with PLE levels, gate temperature,
# dropout and loss balancing varied. Writes docs/census_variants.md.
#
#   scripts/census_variants.sh [SEEDS] [MAX_EPOCHS] [PATIENCE]    (defaults 3, 15, 2)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/census_spec.sh
seeds=${1:-3}; epochs=${2:-15}; patience=${3:-2}
census_prepare
# name | model | keys for every gated layer | keys for [train]
variants=(
  "PLE, DWA loss balancing|ple||loss_balance = \"dwa\""
  "PLE, temperature 0.5, dropout 0.1|ple|temperature = 0.5\ndropout = 0.1|"
  "PLE, 3 levels|ple3||"
  "MMoE, uncertainty weighting|mmoe||loss_balance = \"uncertainty\""
)
for v in "${variants[@]}"; do
  IFS='|' read -r name model layer train <<< "$v"
  for s in $(seq 1 "$seeds"); do
    census_run "$name" "$model" "$s" "$epochs" "$patience" "$layer" "$train"
  done
done
{
  echo "# Census-Income group 1: variants"
  echo
  echo "\`scripts/census_variants.sh $seeds $epochs $patience\` on $(nproc) cores ($(uname -m)), $(date -u +%Y-%m-%d);"
  echo "the protocol of docs/census_results.md (patience $patience, at most $epochs epochs); test AUC, mean ± sd over $seeds seeds."
  echo
  echo "| variant | income | never married |"
  echo "|---|---|---|"
  names=()
  for v in "${variants[@]}"; do IFS='|' read -r name _ <<< "$v"; names+=("$name"); done
  census_table "$runs" "${names[@]}"
  echo
  echo '```'
  cat "$runs"
  echo '```'
} > docs/census_variants.md
cat docs/census_variants.md
