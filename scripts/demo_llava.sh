#!/usr/bin/env bash
# CPU demo of the Fashion-MNIST understanding experiment (issue 17 §4), sized for 2 cores:
# for each tokenizer, only the projector trains (LLaVA's stage 1 recipe, here directly on the
# instruction records: the class question and POPE-style yes/no) with the embedded
# SmolLM2-135M-Instruct frozen, then a fixed subset of the test items is answered and scored.
# The paper's expectation: semantic-only and SGHC close to each other and to the continuous
# teacher features, pixel-only clearly worse.
#
# Usage (repository root, after `cargo build --release` and the tokenizer runs exported as model
# folders, e.g. `semhitok export --run runs/fmnist/sghc --out runs/fmnist/sghc/model`):
#   scripts/demo_llava.sh [TOKENIZERS_DIR]     (default runs/fmnist: sghc/model, sem-only/model, pixel-vq/model)
# Env: STEPS=120 BATCH=16 (projector steps), EVAL=200 (test items), ONLY="sghc sem-only pixel-vq teacher",
#      OUT=runs/llava-demo, BIN=target/release/semhitok, THREADS=2.
set -euo pipefail
TOK=${1:-runs/fmnist}
STEPS=${STEPS:-120}; BATCH=${BATCH:-16}; EVAL=${EVAL:-200}; THREADS=${THREADS:-2}
ONLY=${ONLY:-"sghc sem-only pixel-vq teacher"}
OUT=${OUT:-runs/llava-demo}; BIN=${BIN:-target/release/semhitok}
mkdir -p "$OUT"
DATA=$OUT/data
[ -d "$DATA" ] || "$BIN" data llava-fmnist --out "$DATA" --train $(( STEPS * BATCH / 2 + 1 )) --test $(( EVAL / 2 ))
for name in $ONLY; do
  case $name in
    teacher) folder=$TOK/sghc/model; feats=teacher ;;
    *) folder=$TOK/$name/model; feats=quantized ;;
  esac
  [ -d "$folder" ] || { echo "skip $name: no $folder" >&2; continue; }
  t0=$(date +%s)
  "$BIN" train --config configs/llava-fmnist-stage1.toml --quiet --overwrite \
    --set "llava.tokenizer=\"$folder\"" --set "llava.features=\"$feats\"" \
    --set 'llava.template="chat"' --set "run.out_dir=\"$OUT/$name\"" \
    --set "data.json=\"$DATA/instruct.json\"" --set "data.eval=\"$DATA/test.jsonl\"" \
    --set "data.eval_limit=$EVAL" --set "data.batch_size=$BATCH" --set "schedule.steps=$STEPS" \
    --set "optim.warmup_steps=$(( STEPS * 3 / 100 + 1 ))" --set "schedule.ckpt_every=$STEPS" \
    --set "run.threads=$THREADS" --set 'llava.max_new_tokens=8' 2>&1 | grep -v "^note:" | tail -4
  echo "$name: $(( $(date +%s) - t0 )) s"
done
