#!/usr/bin/env bash
# Trains the same specs with an older multigate binary and this checkout's, with the same
# spec, rows, epochs and seed, and compares the weights they end with (bit-identical, or
# the largest difference relative above 1). Needs python3 with numpy and safetensors.
#   scripts/train_ab.sh OLD_BINARY       (e.g. built from 00d3e5b in a worktree)
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: scripts/train_ab.sh OLD_BINARY}
new=${MULTIGATE_BIN:-target/release/multigate}
[ -x "$new" ] || cargo build --release --quiet
echo "# $old against $(git rev-parse --short HEAD): same spec, rows, epochs and seed; $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'); $(date -u +%Y-%m-%dT%H:%MZ)"
for case in "models/synthetic_mmoe.toml --rows 20000 --epochs 3" "models/synthetic_esmm.toml --rows 20000 --epochs 3" "tests/inputs/onnx/every_op.toml --rows 6000 --epochs 3"; do
  set -- $case
  for who in old new; do
    bin=${!who}
    rm -rf /tmp/ab_$who /tmp/ab_$who.*
    RAYON_NUM_THREADS=1 "$bin" compile-and-train "$@" --out /tmp/ab_$who --no-tensorboard --quiet >/dev/null
  done
  python3 - "$1" <<'PY'
import sys, numpy as np
from safetensors.numpy import load_file
a, b = load_file("/tmp/ab_old/model.safetensors"), load_file("/tmp/ab_new/model.safetensors")
assert a.keys() == b.keys()
worst = max(float(np.max(np.abs(a[k] - b[k]) / np.maximum(np.abs(a[k]), 1.0))) if a[k].size else 0.0 for k in a)
same = all(np.array_equal(a[k], b[k]) for k in a)
steps = None
print(f"{sys.argv[1]}: {len(a)} tensors; bit-identical: {same}; largest difference (relative above 1): {worst:.3g}")
PY
done
