#!/usr/bin/env bash
# Issue 20 on the H200: the fused nearest-code search against the GEMM path, a bare matmul+argmax,
# and VQKD's quantizer step, in one run; the fp64 exactness test on CUDA; the SPC stage's step time
# with the fused search on and off (SEMHITOK_FUSED_SEARCH=0), alternating.
# Usage (GPU host, repository root, bundle from `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/some/dir scripts/gpu/quant.sh .gpu/bundle
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-quant-gpu}
mkdir -p "$OUT"
if [ ! -e /work/main/Cargo.toml ]; then mkdir -p /work && ln -sfn "$PWD" /work/main; fi
run() { echo "+ $*" >&2; "$@"; }
ROUNDS=${ROUNDS:-3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
# The search kernels, alternating tch / PyTorch.
for r in $(seq 1 "$ROUNDS"); do
  run "$B/run.sh" bench_search --iters 50 --rounds 1 >> "$OUT/search.jsonl" 2>> "$OUT/log.txt"
  run python3 scripts/bench_quant_gpu_torch.py --iters 50 --rounds 1 >> "$OUT/search.jsonl" 2>> "$OUT/log.txt"
done
# Exactness against fp64 on CUDA (and the compile test).
run "$B/run.sh" nn search --nocapture > "$OUT/search_test.txt" 2>&1; echo "rc=$?" >> "$OUT/search_test.txt"
# SPC stage steps at paper size (batch 256 = 65,536 tokens), fused search on / off.
for r in $(seq 1 "$ROUNDS"); do
  for fused in 1 0; do
    SEMHITOK_FUSED_SEARCH=$fused run "$B/run.sh" semhitok bench --config configs/paper-spc-256.toml \
      --steps "${STEPS:-20}" --warmup 5 --set data.batch_size=256 \
      | sed "s/^{/{\"fused_search\":$fused,/" >> "$OUT/spc_bench.jsonl" 2>> "$OUT/log.txt"
  done
done
