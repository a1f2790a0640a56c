#!/usr/bin/env bash
# Tokenizer encode throughput at paper size on the GPU host, Rust (tch) vs the PyTorch eager
# reference, alternating, ROUNDS times (prepared for the lead's H200 call; not yet run).
# Model: configs/paper-pre-vitb-256.toml with random weights (SigLIP-L/16-256 teacher, SPC K = 16384,
# ViT-B/16 pixel encoder, SGHC m = 12), written once as a model folder by the Rust side and read by
# the reference, so both run the same weights on the same u8 batch; fp32 (TF32 off: LibTorch and
# PyTorch defaults); the tch line's `bf16_teacher` is the bf16-autocast teacher path on the same batch
# with the share of unified ids it changes; then bf16 autocast on the reference for comparison.
# Usage, from the repository root with the bundle of `cargo xtask bundle --out .gpu/bundle`:
#   OUT=/some/dir BATCH=128 ROUNDS=2 scripts/gpu/tokenize.sh .gpu/bundle
# Writes $OUT/tokenize.jsonl (one JSON line per measurement; the reference's lines carry
# `unified_ids_equal_to_rust`, the share of ids equal to the tch ids of the same batch).
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-tokenize}
BATCH=${BATCH:-128}
ROUNDS=${ROUNDS:-2}
ITERS=${ITERS:-10}
mkdir -p "$OUT"
LOG="$OUT/tokenize.jsonl"
: > "$LOG"
"$B/run.sh" semhitok-smoke >> "$OUT/smoke.txt" 2>&1
for r in $(seq 1 "$ROUNDS"); do
  "$B/run.sh" semhitok bench-tokenize --config configs/paper-pre-vitb-256.toml --device cuda \
    --batch "$BATCH" --iters "$ITERS" --warmup 3 --out "$OUT/bench" --teacher-bf16 --bf16-encoders | tail -1 >> "$LOG"
  python3 scripts/bench_tokenize_torch.py --model "$OUT/bench/model" --bench-out "$OUT/bench" \
    --device cuda --iters "$ITERS" --warmup 3 | tail -1 >> "$LOG"
done
python3 scripts/bench_tokenize_torch.py --model "$OUT/bench/model" --bench-out "$OUT/bench" \
  --device cuda --iters "$ITERS" --warmup 3 --bf16 | tail -1 >> "$LOG"
# End to end on a folder of JPEGs, if given ($IMAGENET: class folders), decoding included.
if [ -n "${IMAGENET:-}" ]; then
  "$B/run.sh" semhitok tokenize --model "$OUT/bench/model" --data "imagenet:$IMAGENET" \
    --out "$OUT/tokens" --device cuda --batch "$BATCH" --workers 12 2>&1 | tail -2 >> "$OUT/tokenize_e2e.txt"
fi
cat "$LOG"
