#!/usr/bin/env bash
# Builds multigate with --features cuda on a machine without a GPU (CUDA 13.0 from pip
# wheels: ../shared/cuda/toolchain.sh), strips it, and packages what
# scripts/device-check.sh needs on a GPU machine (which has no Rust) into dist/cuda/:
#   multigate.gz, multigate-tests.gz   the binary and the integration-test binary
#   torch_mmoe.py                      PyTorch's side of the throughput table
#   census-income-kdd/                 the census files the census run reads
# The target folder is target/cuda (CARGO_TARGET_DIR overrides): the default build's
# target/ stays warm. A clean build takes about 20 minutes on 2 cores.
#
#   scripts/build-cuda.sh            # CUDA build -> dist/cuda
#   scripts/build-cuda.sh --cpu      # the same package from the CPU build -> dist/cpu
#                                    # (a dry run: scripts/device-check.sh OUT cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--cpu" ]; then
  features=(); dist=dist/cpu; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
else
  # shellcheck source=/dev/null
  source ../shared/cuda/toolchain.sh
  features=(--features cuda); dist=dist/cuda; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
fi
cargo build --release "${features[@]}"
# The test binary's path has a hash in it: ask cargo.
tests=$(cargo test --release "${features[@]}" --test main --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "main":
        print(m["executable"])' | tail -1)
[ -n "$tests" ] || { echo "build-cuda: no test binary found" >&2; exit 1; }
rm -rf "$dist" && mkdir -p "$dist/census-income-kdd/paper-split"
strip -o "$dist/multigate" "$CARGO_TARGET_DIR/release/multigate"
strip -o "$dist/multigate-tests" "$tests"
gzip -f "$dist/multigate" "$dist/multigate-tests"
cp ../shared/bench/torch_mmoe.py "$dist/"
census=../shared/data/census-income-kdd
cp "$census/census-income.data.gz" "$dist/census-income-kdd/"
cp "$census/paper-split/validation.gz" "$census/paper-split/test.gz" "$dist/census-income-kdd/paper-split/"
echo "built $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes') into $dist:"
du -sh "$dist"/* | sed 's/^/  /'
