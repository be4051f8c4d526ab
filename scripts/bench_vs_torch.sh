#!/usr/bin/env bash
# Training and forward-only throughput of multigate against PyTorch on the same MMoE shape
# (models/bench_avazu_mmoe_64.toml = ../shared/bench/torch_mmoe.py's defaults: eleven
# tables of 10,000 x 16, the product of two embeddings, 8 experts x 64, towers of 32, two
# binary tasks, batch 512, Adam lr 1e-3). Every configuration runs at 1 and 2 threads,
# interleaved, REPS times; one table of medians and the ratios the speed issue targets,
# with the forward pass's ceiling: its FLOPs at the f32 FMA peak `bench` measures.
# Usage: scripts/bench_vs_torch.sh [REPS] [STEPS]
#   PYTHON=/path/to/python   a Python with torch and numpy (else a venv is made in
#                            target/bench-venv with `pip install torch numpy`)
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-3}"
steps="${2:-300}"
bin="${MULTIGATE_BIN:-target/release/multigate}"
[ -x "$bin" ] || cargo build --release
torch_script="${TORCH_MMOE:-../shared/bench/torch_mmoe.py}"
[ -f "$torch_script" ] || { echo "needs $torch_script (the shared PyTorch side)"; exit 2; }
source scripts/torch_env.sh
torch_python
python3 - "$bin" "$py" "$torch_script" "$reps" "$steps" <<'PY'
import os, re, statistics, subprocess, sys
bin, py, script, reps, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
spec = "models/bench_avazu_mmoe_64.toml"

def multigate(opt, threads):
    out = subprocess.run([bin, "bench", spec, "--optimizer", opt, "--threads", str(threads), "--steps", steps],
                         capture_output=True, text=True, check=True).stdout
    train = float(re.search(r"train:\s+([0-9.]+) samples/s", out).group(1))
    fwd = float(re.search(r"forward only:\s+([0-9.]+) samples/s", out).group(1))
    res = {f"multigate {opt}": train, f"multigate forward-only ({opt} run)": fwd}
    # The forward pass's FLOPs at the FMA peak bench measures on the same threads.
    ceiling = re.search(r"ceiling:\s+([0-9.]+) samples/s", out)
    if ceiling and opt == "adam":
        res["forward-only ceiling: FLOPs at the FMA peak"] = float(ceiling.group(1))
    return res

def torch(name, flags, threads):
    out = subprocess.run([py, script, *flags, "--threads", str(threads), "--steps", steps],
                         capture_output=True, text=True, check=True).stdout
    return {name: float(re.search(r"samples/s=([0-9.]+)", out).group(1))}

torch_runs = [
    ("pytorch naive (loop of experts, Adam)", []),
    ("pytorch fused + one table + fused Adam", ["--fused", "--one-table", "--adam", "fused"]),
    ("pytorch fused + one table + sparse + SparseAdam", ["--fused", "--one-table", "--sparse", "--adam", "fused"]),
    ("pytorch forward-only (fused, inference_mode)", ["--fused", "--one-table", "--forward-only"]),
]
results = {}  # (name, threads) -> [samples/s]
for rep in range(reps):
    for threads in (1, 2):
        runs = [lambda: multigate("adam", threads), lambda: multigate("lazy_adam", threads)]
        runs += [lambda n=n, f=f: torch(n, f, threads) for n, f in torch_runs]
        for run in runs:
            for name, v in run().items():
                results.setdefault((name, threads), []).append(v)
    print(f"repetition {rep + 1}/{reps} done", file=sys.stderr)

med = {k: statistics.median(v) for k, v in results.items()}
names = list(dict.fromkeys(n for n, _ in results))
names.remove("multigate forward-only (lazy_adam run)")
print(f"{'configuration (median of ' + str(reps) + ')':<50}{'1 thread':>12}{'2 threads':>12}")
for n in names:
    print(f"{n:<50}{med[(n, 1)]:>12,.0f}{med[(n, 2)]:>12,.0f}")
best = lambda n: max(med[(n, 1)], med[(n, 2)])
def ratio(label, a, b, target=None):
    print(f"{label:<68}{a / b:>6.2f}x" + (f"  (target {target})" if target else ""))
print()
ratio("dense Adam: multigate best / pytorch fused best", best("multigate adam"),
      best("pytorch fused + one table + fused Adam"), ">= 1.5x")
ratio("lazy_adam: multigate best / pytorch sparse best", best("multigate lazy_adam"),
      best("pytorch fused + one table + sparse + SparseAdam"), ">= 1.5x")
ratio("forward-only: multigate best / pytorch best", best("multigate forward-only (adam run)"),
      best("pytorch forward-only (fused, inference_mode)"), ">= 2x")
ceiling = "forward-only ceiling: FLOPs at the FMA peak"
if (ceiling, 1) in med:
    # The most any f32 pass of these FLOPs reaches, and what the VM gives a second core.
    ratio("forward-only ceiling (FMA peak, nothing else) / pytorch best", best(ceiling),
          best("pytorch forward-only (fused, inference_mode)"))
    ratio("two cores: FMA peak, 2 threads / 1 thread", med[(ceiling, 2)], med[(ceiling, 1)])
for n in ("multigate adam", "multigate forward-only (adam run)"):
    ratio(f"two cores: {n}, 2 threads / 1 thread", med[(n, 2)], med[(n, 1)], ">= 1.6x")
PY
