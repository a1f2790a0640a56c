#!/usr/bin/env bash
# The text-to-image demo on the CPU (issue 18 §3, "a small CPU run of the same path"), run by
# `cargo xtask demo t2i` (which builds `semhitok` and passes its options as the variables below):
#   1. the Fashion-MNIST image tokenizer: reused from a `cargo xtask fmnist-tokenizers` set
#      (TOKENIZERS/NAME/model), else a mini set is trained once into MINI (MINI_STEPS steps);
#   2. train token shards: TOKENIZERS/NAME/tokens/train if tokenized, else the first TRAIN_N
#      training images are tokenized into OUT/tokens;
#   3. the judge: CLASSIFIER, else trained once (CLF_EPOCHS epochs; its test accuracy printed);
#   4. `semhitok train` of the embedded SmolLM2-135M with the visual vocabulary (configs/t2i-tiny-cpu.toml,
#      full fine-tune, STEPS steps of BATCH sequences "a photo of a {class}" + 16 image ids);
#   5. `semhitok t2i-eval`: PER_CLASS images of each of the 10 classes at CFG, grid OUT/eval/cfg-CFG.png;
#   6. `semhitok t2i-score`: the fraction the classifier judges as the asked class (chance 0.10);
#   7. `semhitok generate` of the asked PROMPT (N images; grid OUT/generate/grid.png).
# Every step is skipped when its output exists (a re-run only redoes what is missing; the training
# resumes from its last checkpoint). Wall time of each step in OUT/summary.md.
#
#   scripts/t2i_cpu_demo.sh [BIN]          (repository root; BIN default target/release/semhitok)
# Env: OUT=runs/demo-t2i TOKENIZERS=runs/fmnist NAME=sghc MINI=runs/demo-tokenizers MINI_STEPS=120
#      STEPS=150 BATCH=8 LR=1e-3 TRAIN_N=6000 PER_CLASS=4 CFG=3 PROMPT="a photo of a Trouser" N=8
#      CLASSIFIER=runs/fmnist/classifier.safetensors CLF_EPOCHS=1 CLF_LIMIT=0 CLF_TEST_LIMIT=0
#      LLM=.assets/llm/SmolLM2-135M-Instruct.Q4_1.gguf (GGUF or HF folder) FMNIST=.assets/fashion-mnist THREADS=1
# (THREADS=1: on a 2-core VM shared with other jobs, two LibTorch threads per process were 10x
# slower than one, from OpenMP oversubscription; use 2 on an idle machine.)
set -euo pipefail
BIN=${1:-${BIN:-target/release/semhitok}}
OUT=${OUT:-runs/demo-t2i}
TOKENIZERS=${TOKENIZERS:-runs/fmnist}; NAME=${NAME:-sghc}
MINI=${MINI:-runs/demo-tokenizers}; MINI_STEPS=${MINI_STEPS:-120}
STEPS=${STEPS:-150}; BATCH=${BATCH:-8}; LR=${LR:-1e-3}; TRAIN_N=${TRAIN_N:-6000}
PER_CLASS=${PER_CLASS:-4}; CFG=${CFG:-3}; PROMPT=${PROMPT:-a photo of a Trouser}; N=${N:-8}
CLASSIFIER=${CLASSIFIER:-runs/fmnist/classifier.safetensors}; CLF_EPOCHS=${CLF_EPOCHS:-1}
CLF_LIMIT=${CLF_LIMIT:-0}; CLF_TEST_LIMIT=${CLF_TEST_LIMIT:-0}
LLM=${LLM:-.assets/llm/SmolLM2-135M-Instruct.Q4_1.gguf}
FMNIST=${FMNIST:-.assets/fashion-mnist}; THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS
mkdir -p "$OUT"
T0=$(date +%s)
SUMMARY=$OUT/summary.md.tmp
: > "$SUMMARY"
say() { printf '[demo t2i %4ds] %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }
timed() { # timed LABEL CMD...: run, log its wall time
  local label=$1 t; shift; t=$(date +%s)
  "$@"
  echo "| $label | $(( $(date +%s) - t )) s |" >> "$SUMMARY"
}
[ -e "$LLM" ] || { echo "LLM=$LLM: no such file or folder (run \`cargo xtask assets\`)" >&2; exit 2; }
say "output folder $OUT (load average: $(cut -d' ' -f1-3 /proc/loadavg))"

# 1. The image tokenizer.
TOK=$TOKENIZERS/$NAME/model
if [ -f "$TOK/config.json" ]; then
  say "1/7 tokenizer: reusing $TOK"
else
  TOK=$MINI/$NAME/model
  if [ -f "$TOK/config.json" ]; then say "1/7 tokenizer: reusing the mini set $TOK"; else
    say "1/7 tokenizer: no $TOKENIZERS/$NAME/model; training the mini Fashion-MNIST set once into $MINI" \
      "($MINI_STEPS steps per run; \`cargo xtask fmnist-tokenizers\` makes the full one)"
    timed "mini tokenizer set ($MINI_STEPS steps, train + export)" \
      env PHASES="train export" THREADS=1 FMNIST="$FMNIST" \
      bash scripts/fmnist/tokenizers.sh "$BIN" "$MINI" cpu "$MINI_STEPS"
  fi
fi

# 2. Train token shards.
TOKENS=$(dirname "$TOK")/tokens/train
if [ -f "$TOKENS/complete.json" ]; then say "2/7 tokens: reusing $TOKENS"; else
  TOKENS=$OUT/tokens
  if [ -f "$TOKENS/complete.json" ]; then say "2/7 tokens: reusing $TOKENS"; else
    say "2/7 tokens: the first $TRAIN_N Fashion-MNIST training images -> $TOKENS"
    timed "tokenize $TRAIN_N images" "$BIN" tokenize --model "$TOK" --data "fashion-mnist-train:$FMNIST" \
      --limit "$TRAIN_N" --out "$TOKENS" --batch 256 --shard-size "$TRAIN_N" --workers 1
  fi
fi

# 3. The judge.
if [ -f "$CLASSIFIER" ]; then say "3/7 classifier: reusing $CLASSIFIER"; else
  say "3/7 classifier: training the Fashion-MNIST judge ($CLF_EPOCHS epoch(s)) -> $CLASSIFIER"
  timed "classifier ($CLF_EPOCHS epochs)" "$BIN" fmnist-classifier --data "$FMNIST" --out "$CLASSIFIER" \
    --epochs "$CLF_EPOCHS" --limit "$CLF_LIMIT" --test-limit "$CLF_TEST_LIMIT"
fi
[ -f "${CLASSIFIER%.safetensors}.json" ] && say "    classifier test accuracy: $(sed -n 's/.*"test_accuracy": *\([0-9.]*\).*/\1/p' "${CLASSIFIER%.safetensors}.json" | head -1)"

# 4. Training.
RUN=$OUT/run
LAST=$RUN/checkpoints/$(printf 'step-%08d' "$STEPS")
if [ -d "$LAST" ]; then say "4/7 train: done ($LAST)"; else
  say "4/7 train: SmolLM2-135M + $(sed -n 's/.*"unified_vocab_size": *\([0-9]*\).*/\1/p' "$TOK/config.json" | head -1) visual ids," \
    "$STEPS steps x $BATCH sequences (lr $LR; metrics $RUN/metrics.jsonl)"
  timed "train $STEPS steps x $BATCH" "$BIN" train --config configs/t2i-tiny-cpu.toml --resume auto \
    --set "run.out_dir=\"$RUN\"" --set "llm.weights=\"$LLM\"" --set "t2i.tokenizer=\"$TOK\"" \
    --set "data.tokens=\"$TOKENS\"" --set "schedule.steps=$STEPS" --set "data.batch_size=$BATCH" \
    --set "optim.lr=$LR" --set "optim.warmup_steps=$(( STEPS / 20 + 1 ))" \
    --set "schedule.ckpt_every=$(( STEPS / 2 > 1 ? STEPS / 2 : 1 ))" --set "schedule.log_every=$(( STEPS / 10 > 1 ? STEPS / 10 : 1 ))" \
    --set "run.threads=$THREADS"
fi
first=$(head -n 1 "$RUN/metrics.jsonl" | sed -n 's/.*"ce":\([0-9.]*\).*/\1/p')
last=$(tail -n 1 "$RUN/metrics.jsonl" | sed -n 's/.*"ce":\([0-9.]*\).*/\1/p')
say "    cross-entropy on the visual tokens: ${first:-?} (first logged step) -> ${last:-?} (last)"

# 5. Generation per class.
EVAL=$OUT/eval
if [ -f "$EVAL/cfg-$CFG.safetensors" ] && [ "$EVAL/cfg-$CFG.safetensors" -nt "$LAST" ]; then
  say "5/7 t2i-eval: done ($EVAL)"
else
  say "5/7 t2i-eval: $PER_CLASS images of each class at CFG $CFG -> $EVAL/cfg-$CFG.png"
  timed "t2i-eval ($PER_CLASS per class, CFG $CFG)" "$BIN" t2i-eval --llm "$RUN" --per-class "$PER_CLASS" \
    --cfgs "$CFG" --out "$EVAL"
fi

# 6. Scores.
say "6/7 t2i-score: class accuracy judged by the classifier (chance 0.10; FID is left to the full runs)"
timed "t2i-score" "$BIN" t2i-score "$EVAL/cfg-$CFG.safetensors" --classifier "$CLASSIFIER" --data "$FMNIST" \
  --no-fid --out "$EVAL/scores.jsonl" >&2

# 7. The asked prompt.
say "7/7 generate: \"$PROMPT\" x $N -> $OUT/generate"
timed "generate ($N images)" "$BIN" generate --llm "$RUN" --prompt "$PROMPT" --n "$N" --cfg "$CFG" --out "$OUT/generate" >&2

ACC=$(sed -n 's/.*"accuracy":\([0-9.]*\).*/\1/p' "$EVAL/scores.jsonl" | tail -n 1)
{
  echo "# T2I CPU demo ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "Tokenizer \`$TOK\`, tokens \`$TOKENS\`, LLM \`$LLM\`, $STEPS steps x $BATCH sequences (lr $LR)."
  echo "Cross-entropy on the visual tokens ${first:-?} -> ${last:-?}. Class accuracy of $PER_CLASS x 10 images at CFG $CFG"
  echo "(classifier \`$CLASSIFIER\`): **${ACC:-?}** (chance 0.10). Grid: \`$EVAL/cfg-$CFG.png\` (rows = classes);"
  echo "\`$OUT/generate/grid.png\`: \"$PROMPT\"."
  echo
  echo "| step | wall time |"
  echo "|---|---|"
  cat "$SUMMARY"
  echo "| total (this call) | $(( $(date +%s) - T0 )) s |"
  echo
  echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)."
} > "$OUT/summary.md"
rm -f "$SUMMARY"
cat "$OUT/summary.md" >&2
