#!/usr/bin/env bash
# The Fashion-MNIST tokenizer set's training on a GPU host without Rust, over the bundle's binary,
# packed for the way back (a device call returns at most 8 files of 16 MiB).
#
#   OUT=/dir scripts/fmnist/gpu.sh BUNDLE RUNS STEPS
#     BUNDLE  the bundle folder (`cargo xtask bundle --no-tests --out .gpu/bundle`)
#     RUNS    where the runs go on the host (e.g. runs/fmnist-gpu); resumable: a second call
#             continues unfinished runs and skips finished ones
#     STEPS   steps of each stage-2 run (the SPC gets STEPS / 2)
#
# Needs the Fashion-MNIST IDX files and the EfficientNet-Lite0 weights (under .assets, or
# .gpu/assets linked as .assets; FMNIST=... overrides the dataset folder). Trains on cuda
# (scripts/fmnist/tokenizers.sh, PHASES=train), then writes $OUT/fmnist-runs.tar.part-NN (<= 15 MiB
# each): every run's config, metrics, logs and newest checkpoint. Back here:
#   cat fmnist-runs.tar.part-* | tar x      # recreates RUNS
#   PHASES="eval export tokenize table" scripts/fmnist/tokenizers.sh target/release/semhitok RUNS cpu STEPS
# (evaluation needs the FID Inception, 87 MB, which does not fit a device call with the data).
set -euo pipefail
[ $# -eq 3 ] || { sed -n '2,19p' "$0"; exit 2; }
BUNDLE=$1 RUNS=$2 STEPS=$3
OUT=${OUT:?set OUT to the folder whose files come back}
if [ ! -e .assets ] && [ -d .gpu/assets ]; then ln -sfn .gpu/assets .assets; fi
mkdir -p "$OUT"
PHASES=train scripts/fmnist/tokenizers.sh "$BUNDLE/run.sh semhitok" "$RUNS" cuda "$STEPS" 2>&1 \
  | tee "$OUT/fmnist-train.log"
files=()
for n in spc sghc sem-only pixel-vq; do
  d="$RUNS/$n"
  [ -d "$d" ] || continue
  for f in config.toml run.json metrics.jsonl; do [ -f "$d/$f" ] && files+=("$d/$f"); done
  newest=$(ls -d "$d"/checkpoints/step-* 2>/dev/null | sort | tail -n 1)
  [ -n "$newest" ] && files+=("$newest")
  [ -f "$RUNS/$n.log" ] && files+=("$RUNS/$n.log")
done
tar cf - "${files[@]}" | split -b 15M -d - "$OUT/fmnist-runs.tar.part-"
ls -la "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader >> "$OUT/fmnist-train.log" 2>/dev/null || true
