#!/usr/bin/env bash
# ESMM, AITM and the naive CVR model on the funnel generator (the model zoo, item 14;
# AITM: the op program issue).
# Usage: scripts/reproduce_esmm.sh [SEEDS]   (default 5); writes docs/esmm_funnel.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-5}"
cargo build --release --example esmm_funnel
{
  echo "# ESMM and AITM on the funnel generator"
  echo
  echo "\`scripts/reproduce_esmm.sh $seeds\` on $(nproc) cores, $(date -u +%Y-%m-%d)."
  echo "Specs: models/synthetic_esmm.toml, models/synthetic_aitm.toml and models/synthetic_esmm_naive.toml (200,000 impressions, 5 epochs; commit $(git rev-parse --short HEAD), $(lscpu | sed -n 's/Model name: *//p'))."
  echo
  target/release/examples/esmm_funnel "$seeds"
} > docs/esmm_funnel.md
cat docs/esmm_funnel.md
