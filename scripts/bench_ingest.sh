#!/usr/bin/env bash
# Ingest throughput on census-income (199,523 rows, the 40 columns the census spec reads):
# multigate (parse + hash + encode into training rows) from gzip CSV and from Parquet,
# against pandas read_csv + hashing of the same columns and pyarrow + hashing, run
# interleaved ROUNDS times; the best of each is printed with its ratio.
# Usage: scripts/bench_ingest.sh [ROUNDS]   (needs ../shared/data; pip install pandas pyarrow)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
bin="${MULTIGATE_BIN:-target/release/multigate}"
[ -x "$bin" ] || cargo build --release
spec=models/census_income_mmoe.toml
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" convert "$spec" --out "$work" > /dev/null
python3 - "$bin" "$spec" "$work" "$rounds" <<'PY'
import re, subprocess, sys, time
import pandas as pd, pyarrow.parquet as pq
bin, spec, work, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
gz = "../shared/data/census-income-kdd/census-income.data.gz"
s = open(spec).read()
i = s.index("columns = ["); j = s.index("]", i)
cols = re.findall(r'"([^"]+)"', s[i:j])
dense = ["age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp", "weeks_worked"]
cat = [c for c in cols if c not in dense + ["education", "instance_weight", "income_50k", "marital_stat"]]
def encode(df):
    # What multigate does per row: hash each categorical into its buckets, read the
    # dense columns as float32, the two labels as 0/1.
    for c in cat:
        pd.util.hash_array(df[c].astype(str).to_numpy()) % 1000
    for c in dense:
        df[c].astype("float32").to_numpy()
    (df["income_50k"].astype(str).str.strip() == "50000+.").to_numpy()
    (df["marital_stat"].astype(str).str.strip() == "Never married").to_numpy()
    return len(df)
def mg(path):
    out = subprocess.run([bin, "bench-ingest", spec, "--data", path, "--repeat", "1"], capture_output=True, text=True, check=True).stdout
    return float(re.search(r"\(([0-9.]+) s;", out).group(1))
def pandas_csv():
    t = time.perf_counter(); encode(pd.read_csv(gz, header=None, names=cols, skipinitialspace=True)); return time.perf_counter() - t
def pyarrow_pq():
    t = time.perf_counter(); encode(pq.read_table(f"{work}/census-income.parquet").to_pandas()); return time.perf_counter() - t
runs = {"multigate, CSV gz": lambda: mg(gz), "multigate, Parquet": lambda: mg(f"{work}/census-income.parquet"),
        "pandas read_csv, CSV gz": pandas_csv, "pyarrow, Parquet": pyarrow_pq}
best = {k: float("inf") for k in runs}
for _ in range(rounds):
    for k, f in runs.items():
        best[k] = min(best[k], f())
rows = 199523
print(f"{'reader':<26}{'rows/s':>12}{'seconds':>10}")
for k, v in best.items():
    print(f"{k:<26}{rows / v:>12,.0f}{v:>10.3f}")
print(f"CSV gz: multigate / pandas = {best['pandas read_csv, CSV gz'] / best['multigate, CSV gz']:.1f}x; "
      f"Parquet: multigate / pyarrow = {best['pyarrow, Parquet'] / best['multigate, Parquet']:.1f}x")
PY
