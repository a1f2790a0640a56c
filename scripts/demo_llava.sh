#!/usr/bin/env bash
# The LLaVA understanding demo on the CPU (issue 17 §4), run by `cargo xtask demo llava` (which
# builds `semhitok`, passes its options as the variables below and prints the table):
#   1. the Fashion-MNIST tokenizers: reused from a `cargo xtask fmnist-tokenizers` set
#      (TOKENIZERS/{sghc,sem-only,pixel-vq}/model), else a mini set is trained once into MINI
#      (MINI_STEPS steps per run, the same configs and budget for all three);
#   2. the LLaVA-format set (`semhitok data llava-fmnist`): STEPS * BATCH instruction records
#      (the class question and the POPE-style yes/no question) and the test items;
#   3. per vision feature set (ONLY: sghc, sem-only, pixel-vq quantized codes; teacher = the
#      continuous teacher features, the upper bound): LLaVA's stage-1 recipe, only the projector
#      trains (lr 1e-3, cosine, warmup 3%) with the embedded SmolLM2-135M-Instruct frozen, on the
#      instruction records with its chat template; then the first EVAL test items are answered
#      (the first EVAL / 2 test images, each asked both questions) into OUT/<name>/eval.json;
#   4. `semhitok ask` about ASK_IMAGES test images with the first trained feature set.
# Every step is skipped when its output exists (a re-run redoes only what is missing). Wall times
# in OUT/times.md.
#
#   scripts/demo_llava.sh [BIN]       (repository root; BIN default target/release/semhitok)
# Env: OUT=runs/demo-llava TOKENIZERS=runs/fmnist MINI=runs/demo-tokenizers MINI_STEPS=120
#      STEPS=240 BATCH=8 EVAL=100 ONLY="sghc teacher" ASK_IMAGES=4
#      TEMPLATE=chat (the LLM's chat template; vicuna_v1 for Llama-style LLMs without one)
#      LLM=.assets/llm/SmolLM2-135M-Instruct.Q4_1.gguf (GGUF or HF folder) FMNIST=.assets/fashion-mnist THREADS=1
# (THREADS=1: on a 2-core VM shared with other jobs, two LibTorch threads per process were 10x
# slower than one, from OpenMP oversubscription; use 2 on an idle machine.)
set -euo pipefail
BIN=${1:-${BIN:-target/release/semhitok}}
OUT=${OUT:-runs/demo-llava}
TOKENIZERS=${TOKENIZERS:-runs/fmnist}
MINI=${MINI:-runs/demo-tokenizers}; MINI_STEPS=${MINI_STEPS:-120}
STEPS=${STEPS:-240}; BATCH=${BATCH:-8}; EVAL=${EVAL:-100}; ASK_IMAGES=${ASK_IMAGES:-4}
ONLY=${ONLY:-sghc teacher}
TEMPLATE=${TEMPLATE:-chat}
LLM=${LLM:-.assets/llm/SmolLM2-135M-Instruct.Q4_1.gguf}
FMNIST=${FMNIST:-.assets/fashion-mnist}; THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS
mkdir -p "$OUT"
T0=$(date +%s)
TIMES=$OUT/times.md.tmp
: > "$TIMES"
say() { printf '[demo llava %4ds] %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }
timed() { # timed LABEL CMD...: run, log its wall time
  local label=$1 t; shift; t=$(date +%s)
  "$@"
  echo "| $label | $(( $(date +%s) - t )) s |" >> "$TIMES"
}
[ -e "$LLM" ] || { echo "LLM=$LLM: no such file or folder (run \`cargo xtask assets\`)" >&2; exit 2; }
say "output folder $OUT (load average: $(cut -d' ' -f1-3 /proc/loadavg))"

# 1. Tokenizers.
SET=$TOKENIZERS
if [ -f "$SET/sghc/model/config.json" ]; then say "1/4 tokenizers: reusing $SET/<name>/model"; else
  SET=$MINI
  if [ -f "$SET/sghc/model/config.json" ] && [ -f "$SET/pixel-vq/model/config.json" ]; then
    say "1/4 tokenizers: reusing the mini set $SET"
  else
    say "1/4 tokenizers: no $TOKENIZERS/sghc/model; training the mini Fashion-MNIST set once into $SET" \
      "($MINI_STEPS steps per run; \`cargo xtask fmnist-tokenizers\` makes the full one)"
    timed "mini tokenizer set ($MINI_STEPS steps, train + export)" \
      env PHASES="train export" THREADS=1 FMNIST="$FMNIST" \
      bash scripts/fmnist/tokenizers.sh "$BIN" "$SET" cpu "$MINI_STEPS"
  fi
fi
echo "$SET" > "$OUT/tokenizers.txt"

# 2. The LLaVA-format set.
DATA=$OUT/data
if [ -f "$DATA/test.jsonl" ]; then say "2/4 data: reusing $DATA"; else
  say "2/4 data: $(( STEPS * BATCH / 2 + 1 )) training images x 2 questions, $(( EVAL / 2 )) test images x 2 -> $DATA"
  timed "data llava-fmnist" "$BIN" data llava-fmnist --fmnist "$FMNIST" --out "$DATA" \
    --train $(( STEPS * BATCH / 2 + 1 )) --test $(( EVAL / 2 ))
fi

# 3. Projector training + evaluation per feature set.
i=0; n=$(wc -w <<< "$ONLY"); first=""
for name in $ONLY; do
  i=$(( i + 1 ))
  case $name in
    teacher) folder=$SET/sghc/model; feats=teacher ;;
    *) folder=$SET/$name/model; feats=quantized ;;
  esac
  [ -d "$folder" ] || { say "3/4 [$i/$n] skip $name: no $folder"; continue; }
  [ -n "$first" ] || first=$name
  if [ -f "$OUT/$name/eval.json" ]; then say "3/4 [$i/$n] $name: done ($OUT/$name/eval.json)"; continue; fi
  say "3/4 [$i/$n] $name: projector on $feats features of $folder, $STEPS steps x $BATCH, then $EVAL test items"
  timed "$name (train $STEPS x $BATCH + eval $EVAL)" "$BIN" train --config configs/llava-fmnist-stage1.toml \
    --resume auto --set "llm.weights=\"$LLM\"" \
    --set "llava.tokenizer=\"$folder\"" --set "llava.features=\"$feats\"" \
    --set "llava.template=\"$TEMPLATE\"" --set "run.out_dir=\"$OUT/$name\"" \
    --set "data.json=\"$DATA/instruct.json\"" --set "data.eval=\"$DATA/test.jsonl\"" \
    --set "data.eval_limit=$EVAL" --set "data.batch_size=$BATCH" --set "schedule.steps=$STEPS" \
    --set "optim.warmup_steps=$(( STEPS * 3 / 100 + 1 ))" --set "schedule.ckpt_every=$STEPS" \
    --set "schedule.log_every=$(( STEPS / 10 > 1 ? STEPS / 10 : 1 ))" \
    --set "run.threads=$THREADS" --set 'llava.max_new_tokens=8' 2>&1 | grep --line-buffered -v "^note:" >&2
  [ -f "$OUT/$name/eval.json" ] || { say "$name: no eval.json written"; exit 1; }
done

# 4. Ask.
if [ -n "$first" ] && [ "$ASK_IMAGES" -gt 0 ]; then
  imgs=(); for k in $(seq 0 $(( ASK_IMAGES - 1 ))); do imgs+=(--image "$DATA/images/test/$(printf '%05d' "$k").png"); done
  say "4/4 ask ($first): \"What is this item? Answer with the class name.\" about test images 0..$(( ASK_IMAGES - 1 ))"
  timed "ask ($ASK_IMAGES images)" "$BIN" ask --llava "$OUT/$first" "${imgs[@]}" --max-new-tokens 8 \
    "What is this item? Answer with the class name." | tee "$OUT/ask.txt" >&2
  sed -n 's/.*"answer": *"\([^"]*\)".*/\1/p' "$DATA/test.jsonl" | awk 'NR % 2 == 1' | head -n "$ASK_IMAGES" \
    > "$OUT/ask.truth.txt" || true
fi
{
  echo "| step | wall time |"
  echo "|---|---|"
  cat "$TIMES"
  echo "| total (this call) | $(( $(date +%s) - T0 )) s |"
  echo
  echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) ($(getconf _NPROCESSORS_ONLN) cores)."
} > "$OUT/times.md"
rm -f "$TIMES"
say "done: $OUT (tables: cargo xtask demo llava prints them)"
