#!/usr/bin/env bash
# Issue 21: the trainer's fused kernels measured one by one at paper size (stage `pre`), in one
# device call. Each round runs `semhitok bench` with the defaults, everything off, and each
# switch off alone:
#   SEMHITOK_FUSED_TEACHER=0  the teacher's residual add + layer norm kernel
#   SEMHITOK_BF16_GRADS=0     the flat bf16 gradient buffer (autograd's per-tensor mixed adds instead)
#   SEMHITOK_FUSED_ADAMW=0    the one-kernel clip + AdamW (LibTorch's op-by-op step instead)
#   SEMHITOK_FUSED_VIT_NORM=0 the trained ViTs' residual add + layer norm as one autograd node
#                             (cuda/vit_norm.cu)
#   SEMHITOK_FUSED_LINEAR=0   the trained linear layers' node writing its gradients into .grad
#                             (cuda/linear.cu)
#   SEMHITOK_FUSED_NORMS=0    the squared norms of the flat buffers in two kernels (optim/sumsq.cu)
# and both autograd nodes off together (nodes_off: the defaults before session 9), and with the
# one that is off by default turned on:
#   SEMHITOK_FUSED_GELU=1     the trained ViTs' fc1 + GELU node (cuda/linear_gelu.rs)
# Usage on the GPU host, from the repository root (bundle from `cargo xtask bundle`):
#   OUT=/some/dir [ROUNDS=2] [STEPS=30] [BATCH=32] [LABELS="all_on nodes_off"] scripts/gpu/train_ab.sh BUNDLE
# (LABELS: run only the settings named; all of them by default.)
# Appends JSON lines (with an "ab" label) to $OUT/train_ab.jsonl.
set -uo pipefail
B=${1:?bundle}
OUT=${OUT:-/tmp/semhitok-ab}
mkdir -p "$OUT"
cfg=configs/paper-pre-vitb-256.toml
bench() {
  local label=$1; shift
  if [ -n "${LABELS:-}" ] && [[ " $LABELS " != *" $label "* ]]; then return; fi
  echo "+ $label: $*" >&2
  env "$@" "$B/run.sh" semhitok bench --config "$cfg" --steps "${STEPS:-30}" --warmup 5 \
    --set "data.batch_size=${BATCH:-32}" 2>> "$OUT/log.txt" \
    | sed "s/^{/{\"ab\":\"$label\",/" >> "$OUT/train_ab.jsonl"
}
for r in $(seq 1 "${ROUNDS:-2}"); do
  bench all_on
  bench all_off SEMHITOK_FUSED_TEACHER=0 SEMHITOK_BF16_GRADS=0 SEMHITOK_FUSED_ADAMW=0 \
    SEMHITOK_FUSED_VIT_NORM=0 SEMHITOK_FUSED_LINEAR=0 SEMHITOK_FUSED_NORMS=0
  bench teacher_off SEMHITOK_FUSED_TEACHER=0
  bench grads_off SEMHITOK_BF16_GRADS=0
  bench adamw_off SEMHITOK_FUSED_ADAMW=0
  bench vit_norm_off SEMHITOK_FUSED_VIT_NORM=0
  bench linear_off SEMHITOK_FUSED_LINEAR=0
  bench nodes_off SEMHITOK_FUSED_VIT_NORM=0 SEMHITOK_FUSED_LINEAR=0
  bench norms_off SEMHITOK_FUSED_NORMS=0
  bench gelu_on SEMHITOK_FUSED_GELU=1
done
