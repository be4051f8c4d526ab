#!/usr/bin/env bash
# Step time against embedding-table size: the bench shape (models/bench_avazu_mmoe_64.toml,
# eleven tables) at 10^4, 10^6 and 10^7 rows per table, multigate with lazy_adam and dense
# Adam and PyTorch (sparse + SparseAdam, and fused Adam) beside it, interleaved REPS times
# at THREADS threads; medians of samples/s, each size's step time against 10^4, and peak RSS.
# At 10^7 the tables are 1.76e9 parameters: 7 GiB of weights and as much again for each of
# Adam's two moments, about 20 GiB resident. That size runs only where /proc/meminfo shows
# 22 GiB available, and without PyTorch's fused Adam, whose dense gradient adds another
# 7 GiB. Its dense-Adam runs time 5 steps (each sweeps 21 GiB of state), the rest 100.
# Usage: scripts/bench_table_size.sh [REPS] [THREADS]   (PYTHON: a Python with torch and
# numpy, else a venv is made in target/bench-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-3}"
threads="${2:-2}"
bin="${MULTIGATE_BIN:-target/release/multigate}"
[ -x "$bin" ] || cargo build --release
source scripts/torch_env.sh
torch_python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$bin" "$py" "$reps" "$threads" "$work" <<'PY'
import re, statistics, subprocess, sys
bin, py, reps, threads, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
script = "../shared/bench/torch_mmoe.py"
base = open("models/bench_avazu_mmoe_64.toml").read()
sizes = [10_000, 1_000_000]
available = int(re.search(r"MemAvailable:\s+(\d+) kB", open("/proc/meminfo").read()).group(1)) / 2**20
if available >= 22:
    sizes.append(10_000_000)
else:
    print(f"10^7 rows per table not run: it needs about 20 GiB resident, {available:.1f} GiB is available")
def spec(rows):
    path = f"{work}/bench_{rows}.toml"
    open(path, "w").write(base.replace("hash_buckets = 10000", f"hash_buckets = {rows}"))
    return path
def timed(cmd):
    r = subprocess.run(["/usr/bin/time", "-f", "RSS %M", *cmd], capture_output=True, text=True, check=True)
    return r.stdout, int(re.search(r"RSS (\d+)", r.stderr).group(1)) / 1024
def steps(opt, rows):
    return "5" if rows >= 10_000_000 and opt == "adam" else "100"
def mg(opt, rows):
    out, rss = timed([bin, "bench", spec(rows), "--optimizer", opt, "--threads", threads, "--steps", steps(opt, rows)])
    return float(re.search(r"train:\s+([0-9.]+) samples/s", out).group(1)), rss
def torch(flags, rows):
    out, rss = timed([py, script, *flags, "--threads", threads, "--steps", "100", "--buckets", str(rows)])
    return float(re.search(r"samples/s=([0-9.]+)", out).group(1)), rss
runs = {
    "multigate lazy_adam": lambda n: mg("lazy_adam", n),
    "multigate adam": lambda n: mg("adam", n),
    "pytorch sparse + SparseAdam": lambda n: torch(["--fused", "--one-table", "--sparse", "--adam", "fused"], n),
    "pytorch fused Adam": lambda n: torch(["--fused", "--one-table", "--adam", "fused"], n),
}
# (name, rows) pairs that do not fit: PyTorch's dense Adam keeps a table-sized gradient.
skip = {("pytorch fused Adam", 10_000_000)}
res = {}
for _ in range(reps):
    for n in sizes:
        for name, f in runs.items():
            if (name, n) not in skip:
                res.setdefault((name, n), []).append(f(n))
print(f"threads {threads}, median of {reps}; step time relative to 10^4 rows per table")
print(f"{'configuration':<30}{'rows/table':>12}{'samples/s':>12}{'step ms':>9}{'x 10^4':>8}{'peak RSS MiB':>14}")
for name in runs:
    base_sps = statistics.median(v for v, _ in res[(name, sizes[0])])
    for n in sizes:
        if (name, n) in skip:
            print(f"{name:<30}{n:>12,}  not run: a dense gradient the size of the tables does not fit")
            continue
        sps = statistics.median(v for v, _ in res[(name, n)])
        rss = max(r for _, r in res[(name, n)])
        print(f"{name:<30}{n:>12,}{sps:>12,.0f}{512e3 / sps:>9.2f}{base_sps / sps:>8.2f}{rss:>14,.0f}")
PY
