#!/usr/bin/env bash
# Issue 20 on the H200, one call (~3 min): every fused search kernel (v2, v3, tc, tc256, tc1) against the
# GEMM path, a bare matmul+argmax and VQKD's quantizer step; SGHC's fused sub-codebook search
# against the gather path and its PyTorch reference; the fp64 exactness tests on CUDA (all
# kernels, SGHC, the SGHC goldens through the fused path); the SPC stage's step time with the
# v3 kernel, the tc1 kernel (the default) and the GEMM path (SEMHITOK_FUSED_SEARCH=0); the count of LibTorch's
# autocast deprecation warnings in those runs (issue 21: must be 0).
# Usage (GPU host, repository root, bundle from `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/some/dir scripts/gpu/quant.sh .gpu/bundle
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-quant-gpu}
mkdir -p "$OUT"
. "$(dirname "$0")/build_root.sh" && link_build_root "$B"
run() { echo "+ $*" >&2; "$@"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
# Exactness first (a kernel that fails it must not be the default): fp64 checks on CUDA.
run "$B/run.sh" nn search --nocapture > "$OUT/search_test.txt" 2>&1; echo "rc=$?" >> "$OUT/search_test.txt"
run "$B/run.sh" nn sghc >> "$OUT/search_test.txt" 2>&1; echo "rc=$?" >> "$OUT/search_test.txt"
# The search kernels and SGHC, tch / PyTorch / tch (PyTorch once: torch.compile per process).
run "$B/run.sh" bench_search --iters 50 --rounds 2 --sghc 1 >> "$OUT/search.jsonl" 2>> "$OUT/log.txt"
run python3 scripts/bench_quant_gpu_torch.py --iters 50 --rounds 2 --sghc 1 >> "$OUT/search.jsonl" 2>> "$OUT/log.txt"
run "$B/run.sh" bench_search --iters 50 --rounds 1 --sghc 1 | sed 's/"round":0/"round":2/' >> "$OUT/search.jsonl" 2>> "$OUT/log.txt"
# SPC stage steps at paper size (batch 256 = 65,536 tokens): kernel v3 (before), tc1, GEMM path
# (SPC_KERNELS overrides the list).
for r in $(seq 1 "${SPC_ROUNDS:-1}"); do
  for kern in ${SPC_KERNELS:-v3 tc1 gemm}; do
    fused=1; [ "$kern" = gemm ] && fused=0
    SEMHITOK_FUSED_SEARCH=$fused SEMHITOK_SEARCH_KERNEL=${kern/gemm/v3} run "$B/run.sh" semhitok bench \
      --config configs/paper-spc-256.toml --steps "${STEPS:-20}" --warmup 5 --set data.batch_size=256 \
      2>> "$OUT/spc_log.txt" | sed "s/^{/{\"search\":\"$kern\",/" >> "$OUT/spc_bench.jsonl"
  done
done
echo "autocast deprecation warnings in the SPC runs: $(grep -c 'is deprecated' "$OUT/spc_log.txt")" | tee "$OUT/autocast.txt"
