#!/usr/bin/env bash
# H200: the paper's generation claim on Fashion-MNIST (issue 18 §3). For each tokenizer
# (sghc, sem-only, pixel-vq): SmolLM2-135M with that tokenizer's visual vocabulary fully
# fine-tuned on "a photo of a {class}" -> ids (configs/t2i-fmnist-smollm2.toml), then
# PER_CLASS images per class at CFG 1, 3, 5, scored by the Fashion-MNIST classifier (trained
# here first) and by FID against the test split; with FID_INCEPTION also the real-vs-real
# reference (10,000 real train images through `t2i-real` + `t2i-score`).
# Usage (GPU host, repository root, bundle from `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/dir WORK=/scratch scripts/gpu/t2i.sh BUNDLE GGUF FMNIST_RUNS DATA [FID_INCEPTION]
#     GGUF         SmolLM2-135M-Instruct.Q4_1.gguf (98 MB: staged in pieces, scripts/gpu/stage.sh)
#     FMNIST_RUNS  folder with {sghc,sem-only,pixel-vq}/model (SemHiTok model folders) and
#                  {..}/tokens/train (semhitok tokenize of the train split, with labels)
#     DATA         the Fashion-MNIST IDX folder (.assets/fashion-mnist, 31 MB)
#     FID_INCEPTION fid_inception_v3.pt (87 MB, staged in pieces); without it only accuracy
# Env: STEPS (3000), PER_CLASS (1000), CFGS (1,3,5), TOKS (sghc sem-only pixel-vq),
#      CLF_EPOCHS (8), BATCH (500 images per generation batch).
# $OUT (small, comes back): scores.jsonl, classifier.json, per run metrics.jsonl, eval grids,
# and a 100-per-class u8 subset of every images file (cfg-*.sub.safetensors, 3 MB each) so
# accuracy can be re-checked on the CPU. $WORK (stays): runs, checkpoints, full images files.
set -uo pipefail
B=${1:?BUNDLE}; GGUF=${2:?GGUF}; RUNS=${3:?FMNIST_RUNS}; DATA=${4:?DATA}; FID=${5:-}
OUT=${OUT:-/tmp/semhitok-gpu}; WORK=${WORK:-/tmp/semhitok-t2i-work}
STEPS=${STEPS:-3000}; PER_CLASS=${PER_CLASS:-1000}; CFGS=${CFGS:-1,3,5}
TOKS=${TOKS:-sghc sem-only pixel-vq}; CLF_EPOCHS=${CLF_EPOCHS:-8}; BATCH=${BATCH:-500}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
run() { echo "+ $*" >&2; "$@"; }
S="$B/run.sh semhitok"
t0=$(date +%s)
run $S fmnist-classifier --device cuda --data "$DATA" --epochs "$CLF_EPOCHS" \
  --out "$WORK/classifier.safetensors" >> "$OUT/log.txt" 2>&1
cp "$WORK/classifier.json" "$OUT/classifier.json"
for tok in $TOKS; do
  R="$WORK/runs/$tok"
  run $S train --config configs/t2i-fmnist-smollm2.toml --quiet --overwrite \
    --set "run.name=\"t2i-fmnist-$tok\"" --set "run.out_dir=\"$R\"" \
    --set "llm.weights=\"$GGUF\"" --set "t2i.tokenizer=\"$RUNS/$tok/model\"" \
    --set "data.tokens=\"$RUNS/$tok/tokens/train\"" --set "schedule.steps=$STEPS" \
    >> "$OUT/log.txt" 2>&1 || { echo "train $tok failed" | tee -a "$OUT/log.txt"; continue; }
  mkdir -p "$OUT/$tok"; cp "$R/metrics.jsonl" "$OUT/$tok/metrics.jsonl"
  run $S t2i-eval --llm "$R" --per-class "$PER_CLASS" --cfgs "$CFGS" --out "$WORK/eval/$tok" \
    --device cuda --batch "$BATCH" >> "$OUT/log.txt" 2>&1 || { echo "eval $tok failed" | tee -a "$OUT/log.txt"; continue; }
  cp "$WORK/eval/$tok"/cfg-*.png "$OUT/$tok/"
  FIDARGS=(--no-fid)
  [ -n "$FID" ] && FIDARGS=(--fid-inception "$FID" --real-stats "$WORK/real_stats.safetensors")
  run $S t2i-score "$WORK/eval/$tok"/cfg-*.safetensors --classifier "$WORK/classifier.safetensors" \
    --data "$DATA" --device cuda "${FIDARGS[@]}" --out "$OUT/scores.jsonl" >> "$OUT/log.txt" 2>&1
  for f in "$WORK/eval/$tok"/cfg-*.safetensors; do
    python3 - "$f" "$OUT/$tok/$(basename "$f" .safetensors).sub.safetensors" 100 "$PER_CLASS" <<'PY'
import sys, torch
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1]); k, pc = int(sys.argv[3]), int(sys.argv[4])
idx = torch.cat([torch.arange(c * pc, c * pc + k) for c in range(10)])
save_file({"images": t["images"][idx].contiguous(), "labels": t["labels"][idx].contiguous()}, sys.argv[2])
PY
  done
done
# The real-vs-real reference: 10,000 real train images scored like the generated ones.
if [ -n "$FID" ]; then
  run $S t2i-real --data "$DATA" --split train --n 10000 --out "$WORK/real-train.safetensors" >> "$OUT/log.txt" 2>&1 \
    && run $S t2i-score "$WORK/real-train.safetensors" --classifier "$WORK/classifier.safetensors" --data "$DATA" \
      --device cuda --fid-inception "$FID" --real-stats "$WORK/real_stats.safetensors" --out "$OUT/scores.jsonl" >> "$OUT/log.txt" 2>&1
fi
echo "t2i.sh: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/log.txt"
cat "$OUT/scores.jsonl" 2>/dev/null
