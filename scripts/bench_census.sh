#!/usr/bin/env bash
# Training throughput on the census models of scripts/census_spec.sh (group 1: income and
# never married; embeddings of 8, towers of 8) at batch 1024: shared-bottom, OMoE, MMoE and
# CGC, multigate (`bench`, its categorical generator over the spec's columns) against
# PyTorch writing the same model its fastest way (scripts/torch_census.py), interleaved
# REPS times at THREADS threads; medians, ratios and parameter counts.
# Usage: scripts/bench_census.sh [REPS] [THREADS]   (PYTHON: a Python with torch and
# numpy, else a venv is made in target/bench-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-3}"
threads="${2:-2}"
source scripts/census_spec.sh
census_prepare
source scripts/torch_env.sh
torch_python
for m in shared_bottom omoe mmoe cgc; do census_spec 1 "$m" 1 1 1 > "$tmp/$m.toml"; done
python3 - "$bin" "$py" "$reps" "$threads" "$tmp" <<'PY'
import re, statistics, subprocess, sys
bin, py, reps, threads, tmp = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
models = ["shared_bottom", "omoe", "mmoe", "cgc"]
def mg(m):
    out = subprocess.run([bin, "bench", f"{tmp}/{m}.toml", "--batch", "1024", "--threads", threads, "--steps", "200"],
                         capture_output=True, text=True, check=True).stdout
    params = int(re.search(r": (\d+) parameters", out).group(1))
    return float(re.search(r"train:\s+([0-9.]+) samples/s", out).group(1)), params
def torch(m):
    out = subprocess.run([py, "scripts/torch_census.py", "--model", m, "--threads", threads, "--batch", "1024"],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"samples/s=([0-9.]+)", out).group(1)), int(re.search(r"params=(\d+)", out).group(1))
res = {}
for _ in range(reps):
    for m in models:
        for side, f in (("multigate", mg), ("pytorch", torch)):
            res.setdefault((side, m), []).append(f(m))
print(f"census group 1, batch 1024, {threads} threads, median of {reps} (train samples/s)")
print(f"{'model':<15}{'multigate':>11}{'params':>9}{'pytorch':>11}{'params':>9}{'ratio':>8}")
for m in models:
    a, b = res[("multigate", m)], res[("pytorch", m)]
    ma, mb = statistics.median(v for v, _ in a), statistics.median(v for v, _ in b)
    print(f"{m:<15}{ma:>11,.0f}{a[0][1]:>9,}{mb:>11,.0f}{b[0][1]:>9,}{ma / mb:>7.2f}x")
PY
