#!/usr/bin/env bash
# Per-kernel GPU time of ONE `pre` optimizer step at paper size, Rust (tch) vs the PyTorch eager
# reference, with Nsight Compute (kernels are serialised and replayed: totals are kernel times,
# not wall time). Usage on the GPU host, from the repository root:
#   OUT=/some/dir [COMPILE=1] [SKIP_TCH=1] scripts/gpu/ncu_step.sh .gpu/bundle
# (COMPILE=1: the PyTorch side with --compile, i.e. torch.compile + fused AdamW; its warm-up steps
# compile outside the profiled step. SKIP_TCH=1: reuse $OUT/ncu_tch.csv from an earlier run.)
# Writes $OUT/ncu_{tch,torch}.csv, $OUT/ncu_summary.txt (kernel-time totals grouped by name) and, for
# each pattern in $CONTEXT (Python regexes on kernel names, ;-separated), $OUT/ncu_context_N.txt: the
# launches around each match in both runs (scripts/gpu/ncu_context.py).
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-ncu}
mkdir -p "$OUT"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
args=(--profile-from-start off --metrics gpu__time_duration.sum,launch__grid_size,launch__block_size
  --csv --print-units base)
if [ -z "${SKIP_TCH:-}" ]; then
  "$NCU" "${args[@]}" "$B/run.sh" semhitok bench --config configs/paper-pre-vitb-256.toml \
    --steps 2 --warmup 2 --cuda-profiler-step > "$OUT/ncu_tch.csv" 2> "$OUT/ncu_tch.log"
fi
compile=(); [ -n "${COMPILE:-}" ] && compile=(--compile)
"$NCU" "${args[@]}" python3 scripts/bench_train_gpu_torch.py --batch 32 --steps 2 --warmup 3 \
  "${compile[@]}" --cuda-profiler-step > "$OUT/ncu_torch.csv" 2> "$OUT/ncu_torch.log"
python3 scripts/gpu/ncu_summary.py "$OUT/ncu_tch.csv" "$OUT/ncu_torch.csv" | tee "$OUT/ncu_summary.txt"
IFS=";" read -ra pats <<< "${CONTEXT:-}"
for i in "${!pats[@]}"; do
  for impl in tch torch; do
    python3 scripts/gpu/ncu_context.py "$OUT/ncu_$impl.csv" "${pats[$i]}" --before 5 --after 3
  done > "$OUT/ncu_context_$i.txt"
done
