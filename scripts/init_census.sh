#!/usr/bin/env bash
# `multigate init` on the census training file, then compile-and-train of what it wrote,
# beside the hand-written models/census_income_mmoe.toml (same layer and training
# settings): prints both specs' test AUCs. Issue 8's acceptance: within .003.
# Usage: scripts/init_census.sh [OUT_DIR]   (needs ../shared/data/census-income-kdd)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/init_census}"
data=../shared/data/census-income-kdd
bin="${MULTIGATE_BIN:-target/release/multigate}"
[ -x "$bin" ] || cargo build --release
mkdir -p "$out"
# The file has no header: its column names, as the hand-written spec lists them.
cols=$(python3 -c "
import re
s = open('models/census_income_mmoe.toml').read()
i = s.index('columns = ['); j = s.index(']', i)
print(','.join(re.findall(r'\"([^\"]+)\"', s[i:j])))")
"$bin" init "$data/census-income.data.gz" --columns "$cols" \
  --label income_50k --label "marital_stat=Never married" --ignore instance_weight,education \
  --validation "$data/paper-split/validation.gz" --test "$data/paper-split/test.gz" \
  --name census_init --out "$out/census_init.toml" --force
"$bin" compile-and-train "$out/census_init.toml" --out "$out/run_init" --force --quiet --no-tensorboard
"$bin" compile-and-train models/census_income_mmoe.toml --out "$out/run_hand" --force --quiet --no-tensorboard
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def auc(run):
    m = json.load(open(f"{out}/{run}/metrics.json"))
    return [(t, m["tasks"][t]["test"]["auc"]) for t in m["task_order"]]
init, hand = auc("run_init"), auc("run_hand")
print(f"{'task':<28}{'init spec':>10}{'hand spec':>10}{'diff':>9}")
for (ti, a), (th, b) in zip(init, hand):
    print(f"{ti + ' / ' + th:<28}{a:>10.4f}{b:>10.4f}{a - b:>+9.4f}")
PY
