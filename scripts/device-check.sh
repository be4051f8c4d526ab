#!/usr/bin/env bash
# The GPU check of the CUDA issue, as one script for a GPU machine that has no Rust
# (Python with torch, NVIDIA libraries under its site-packages). It needs the package
# scripts/build-cuda.sh makes (dist/cuda: binary, test binary, torch_mmoe.py, census
# files) and the repository's models/ beside it, and writes one results file:
#   1. CUDA parity tests (tests/suite/device.rs, #[ignore]d in CI): forward equal to
#      CPU within 1e-4 for every models/ spec, 200 training steps within 1e-3, the
#      device kernels against their CPU twins, a CLI run scoring like the CPU's;
#   2. census-income MMoE (models/census_income_mmoe.toml) trained on the CPU and on
#      the device, same seed and epochs: test AUCs and epoch times side by side;
#   3. training throughput on the seed shape (models/bench_avazu_mmoe_64.toml) at batch
#      512, 8192 and 65536: multigate bench against PyTorch eager
#      (torch_mmoe.py --fused --one-table --adam fused), interleaved.
# Under 8 minutes on an H200.
#
#   scripts/device-check.sh RESULTS [DEVICE] [DIST]   # DEVICE cuda (default), cuda:N, or
#                                                     # cpu: a dry run of the script here
#                                                     # (DIST then defaults to dist/cpu;
#                                                     # STEPS_DIV=10 shortens the benches)
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:?usage: scripts/device-check.sh RESULTS [DEVICE] [DIST]}
device=${2:-cuda}
if [ "$device" = cpu ]; then dist=${3:-dist/cpu}; else dist=${3:-dist/cuda}; fi
[ -f "$dist/multigate.gz" ] || { echo "no $dist/multigate.gz: run scripts/build-cuda.sh first" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gunzip -c "$dist/multigate.gz" > "$work/multigate" && gunzip -c "$dist/multigate-tests.gz" > "$work/multigate-tests"
chmod +x "$work/multigate" "$work/multigate-tests"
bin=$work/multigate
py=${PYTHON:-python3}
if [ "$device" != cpu ]; then
  # cuBLAS, cuRAND, NVRTC and the runtime from the Python's NVIDIA wheels.
  site=$("$py" -c 'import site; print(site.getsitepackages()[0])')
  for d in "$site"/nvidia/cu13/lib "$site"/nvidia/*/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH=$d:${LD_LIBRARY_PATH:-}
  done
  export LD_LIBRARY_PATH
fi
: > "$results"
say() { echo "$*" | tee -a "$results"; }
run() { "$@" 2>&1 | tee -a "$results"; }
say "# multigate device check, $(date -u +%FT%TZ), device $device"
say "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$device" != cpu ]; then
  say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
fi
say "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

say ""; say "## 1. parity (largest differences)"
MULTIGATE_REPO=$PWD MULTIGATE_BIN=$bin MULTIGATE_TEST_DEVICE=$device RUST_BACKTRACE=1 \
  run timeout 300 "$work/multigate-tests" --ignored --test-threads 1 --nocapture cuda_
say "parity exit: ${PIPESTATUS[0]}"

say ""; say "## 2. census-income MMoE, CPU against $device"
census=$(cd "$dist/census-income-kdd" && pwd)
sed "s#\.\./\.\./shared/data/census-income-kdd#$census#" models/census_income_mmoe.toml > "$work/census.toml"
devices=cpu; [ "$device" = cpu ] || devices="cpu $device"
for d in $devices; do
  timeout 240 "$bin" compile-and-train "$work/census.toml" --device "$d" --epochs 4 --quiet \
    --out "$work/census-$d" --force --no-tensorboard > "$work/census-$d.log" 2>&1
  say "census on $d: exit $?"
  "$py" - "$work/census-$d/metrics.json" "$d" <<'PY' 2>&1 | tee -a "$results"
import json, sys
r = json.load(open(sys.argv[1]))["report"]
secs = [e["seconds"] for e in r["epochs"]]
rate = [e["train_samples_per_sec"] for e in r["epochs"]]
aucs = " ".join(f"{m.get('auc', float('nan')):.4f}" for m in r["test"] or [])
print(f"  {sys.argv[2]}: test AUC {aucs}; best epoch {r['best_epoch']}; epoch seconds "
      f"{' '.join(f'{s:.1f}' for s in secs)}; median train samples/s {sorted(rate)[len(rate)//2]:.0f}")
PY
done

say ""; say "## 3. training throughput, seed shape (samples/s), interleaved"
for b in 512 8192 65536; do
  steps=$(( (b >= 65536 ? 40 : (b >= 8192 ? 100 : 300)) / ${STEPS_DIV:-1} + 1 ))
  for rep in 1 2; do
    "$bin" bench models/bench_avazu_mmoe_64.toml --device "$device" --batch "$b" --steps "$steps" \
      > "$work/bench.log" 2>&1
    mg=$(awk '/^train:/ {print $2}' "$work/bench.log")
    # The whole report once per batch size (the host's share of each phase), and the
    # error of a failed run.
    if [ -z "$mg" ] || [ "$rep" = 1 ]; then sed 's/^/    /' "$work/bench.log" | head -8 >> "$results"; fi
    pt=$(timeout 120 "$py" "$dist/torch_mmoe.py" --device "${device%%:*}" --fused --one-table --adam fused \
      --batch "$b" --steps "$steps" --warmup 10 --threads "$(nproc)" 2>&1 | grep '^RESULT' | head -1 |
      sed -n 's/.*samples\/s=\([0-9]*\).*/\1/p')
    ratio=$(awk -v a="${mg:-0}" -v b="${pt:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a" }')
    say "batch $b rep $rep: multigate ${mg:-failed}  pytorch ${pt:-failed}  ratio $ratio"
  done
done
say "(pytorch: torch_mmoe.py --fused --one-table --adam fused, torch $("$py" -c 'import torch; print(torch.__version__)' 2>&1))"
say ""; say "done $(date -u +%FT%TZ)"
