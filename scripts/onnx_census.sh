#!/usr/bin/env bash
# Issue 10's acceptance run: train the census MMoE, export it to ONNX, score the paper's
# test split with onnxruntime in Python, and compare each task's AUC with the one
# `multigate predict --evaluate` reports on the same file.
#
# Then serves the bundle and sends the first raw test row with curl (both probabilities
# back), beside `predict`'s numbers for that row.
#
# Usage: scripts/onnx_census.sh [EPOCHS=10]   (needs ../shared/data/census-income-kdd and
# python3 with onnxruntime and numpy)
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-10}
data=../shared/data/census-income-kdd
[ -f "$data/paper-split/test.gz" ] || { echo "SKIPPED: $data is absent" >&2; exit 0; }
cargo build --release -q
bin=target/release/multigate
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
test_file="$data/paper-split/test.gz"
"$bin" compile-and-train models/census_income_mmoe.toml --epochs "$epochs" --out "$tmp/b" | tail -4
"$bin" export "$tmp/b" --out "$tmp/m.onnx"
"$bin" encode "$tmp/b" "$test_file" --out "$tmp/enc.csv"
"$bin" predict "$tmp/b" "$test_file" --out "$tmp/preds.csv" --evaluate 2>"$tmp/metrics.txt"
echo "multigate predict --evaluate:"; sed 's/^/  /' "$tmp/metrics.txt"
# The labels as the spec reads them (income_50k == "50000+.", marital_stat == "Never married").
zcat "$test_file" | awk -F', *' '{ print ($42 == "50000+." ? 1 : 0) "," ($8 == "Never married" ? 1 : 0) }' >"$tmp/labels.csv"
python3 - "$tmp/m.onnx" "$tmp/enc.csv" "$tmp/labels.csv" "$tmp/preds.csv" <<'PY'
import csv, json, sys
import numpy as np
import onnxruntime as ort

model, enc, labels, preds = sys.argv[1:5]
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = json.loads(sess.get_modelmeta().custom_metadata_map["multigate.encoding"])
n_cat = len(meta["inputs"]["categorical"])
rows = np.loadtxt(enc, delimiter=",", skiprows=1, dtype=np.float64)
feeds = {"categorical": rows[:, :n_cat].astype(np.int64)}
if rows.shape[1] > n_cat:
    feeds["dense"] = rows[:, n_cat:].astype(np.float32)
names = [o.name for o in sess.get_outputs()]
outs = sess.run(names, feeds)
y = np.loadtxt(labels, delimiter=",")
mine = np.loadtxt(preds, delimiter=",", skiprows=1)

def auc(score, label):
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score)); ranks[order] = np.arange(1, len(score) + 1)
    # Ties share their mean rank.
    s = score[order]; i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]: j += 1
        ranks[order[i:j + 1]] = (i + j + 2) / 2; i = j + 1
    pos = label == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())

print(f"onnxruntime on {len(rows)} test rows:")
for k, (name, out) in enumerate(zip(names, outs)):
    print(f"  {name}: auc {auc(out, y[:, k]):.6f}  (max |onnxruntime - predict| {np.abs(out - mine[:, k]).max():.2g})")
PY

# Serve the bundle and score the first raw test row over HTTP.
"$bin" serve "$tmp/b" --port 0 >"$tmp/addr" 2>/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do grep -q http "$tmp/addr" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's|.*http://||p' "$tmp/addr")
body=$(python3 - "$test_file" "$addr" <<'PY'
import gzip, json, sys, urllib.request
meta = json.load(urllib.request.urlopen(f"http://{sys.argv[2]}/v2/models/census_income_mmoe"))
cols = [
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour",
    "hs_college", "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin",
    "sex", "union_member", "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses",
    "stock_dividends", "tax_filer_stat", "region_prev_res", "state_prev_res", "det_hh_fam_stat",
    "det_hh_summ", "instance_weight", "mig_chg_msa", "mig_chg_reg", "mig_move_reg", "mig_same",
    "mig_prev_sunbelt", "num_emp", "fam_under_18", "country_father", "country_mother",
    "country_self", "citizenship", "own_or_self", "vet_question", "vet_benefits", "weeks_worked",
    "year", "income_50k",
]
row = dict(zip(cols, [f.strip() for f in gzip.open(sys.argv[1], "rt").readline().split(",")]))
wanted = [i["name"] for i in meta["inputs"]]
print(json.dumps({"instances": [{c: row[c] for c in wanted}]}))
PY
)
echo "curl POST /v1/models/census_income_mmoe:predict with the first raw test row:"
curl -s "http://$addr/v1/models/census_income_mmoe:predict" -d "$body"; echo
echo "predict's first row: $(sed -n 2p "$tmp/preds.csv")"
