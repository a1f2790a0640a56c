#!/usr/bin/env bash
# Issue 21's comparison: `semhitok bench` vs the PyTorch reference eager and with torch.compile
# (+ fused AdamW), same model and batch, at batch 32 and 128, alternating, ROUNDS rounds. STAGE
# picks the stage (default pre; spc, decoder-ft, joint run their configs' batch only).
# Usage on the GPU host, from the repository root:
#   OUT=/some/dir [ROUNDS=3] [STEPS=30] [STAGE=pre] [BATCHES="32 128"] scripts/gpu/train_rounds.sh BUNDLE
# Appends JSON lines to $OUT/train_rounds.jsonl (the PyTorch side's "impl" says eager or compile).
set -uo pipefail
B=${1:?bundle}
OUT=${OUT:-/tmp/semhitok-rounds}
mkdir -p "$OUT"
stage=${STAGE:-pre}
case $stage in
  pre) cfg=configs/paper-pre-vitb-256.toml; batches=${BATCHES:-32 128} ;;
  spc) cfg=configs/paper-spc-256.toml; batches=${BATCHES:-cfg} ;;
  decoder-ft) cfg=configs/paper-decoder-ft-vitl-256.toml; batches=${BATCHES:-cfg} ;;
  joint) cfg=configs/paper-joint-256.toml; batches=${BATCHES:-cfg} ;;
  *) echo "unknown STAGE $stage" >&2; exit 2 ;;
esac
run() { echo "+ $*" >&2; "$@" 2>> "$OUT/log.txt" >> "$OUT/train_rounds.jsonl"; }
for r in $(seq 1 "${ROUNDS:-3}"); do
  for b in $batches; do
    if [ "$b" = cfg ]; then rs=(); ps=(); else rs=(--set "data.batch_size=$b"); ps=(--batch "$b"); fi
    common=(--steps "${STEPS:-30}" --warmup 5)
    run "$B/run.sh" semhitok bench --config "$cfg" "${common[@]}" "${rs[@]}"
    run python3 scripts/bench_train_gpu_torch.py --stage "$stage" --config "$cfg" "${common[@]}" "${ps[@]}"
    run python3 scripts/bench_train_gpu_torch.py --stage "$stage" --config "$cfg" "${common[@]}" "${ps[@]}" --compile
  done
done
