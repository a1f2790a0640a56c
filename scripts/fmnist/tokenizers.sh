#!/usr/bin/env bash
# The Fashion-MNIST tokenizer set (issues 17 §4, 18 §3): SPC, then SGHC, the semantic-only
# tokenizer and the pixel-only VQ with one budget; evaluation on the test split; a table; each
# exported as a model folder; train and test splits tokenized with their class labels.
#
#   scripts/fmnist/tokenizers.sh BIN [OUT] [DEVICE] [STEPS]
#
#   BIN     the `semhitok` binary, or a command that runs it (".gpu/bundle/run.sh semhitok")
#   OUT     output folder (default runs/fmnist)
#   DEVICE  cpu | cuda (default cpu)
#   STEPS   steps of each stage-2 run (default: the configs' 800); the SPC gets STEPS / 2 and the
#           discriminator starts at STEPS / 2. One OUT per budget: a finished part is skipped.
#
# `cargo xtask fmnist-tokenizers` builds `semhitok` and runs this script. Environment:
#   PHASES    which parts, in order (default "train eval export tokenize table")
#   N_EVAL    test images evaluated (default 256 on cpu, 10000 on cuda)
#   THREADS   LibTorch threads of each stage-2 run on cpu (default: cores / 3, at least 1; the
#             three run side by side)
#   FMNIST    the Fashion-MNIST IDX folder (default .assets/fashion-mnist)
#   FID       the FID Inception TorchScript (default .assets/weights/fid_inception_v3.pt)
#   CONFIGS   the folder of fmnist-*.toml (default configs)
#   SEQUENTIAL=1  train the three stage-2 runs one after the other
#
# Writes OUT/{spc,sghc,sem-only,pixel-vq}/ (runs; logs OUT/<name>.log), OUT/eval/ (eval.json,
# eval.md, grid.png), OUT/<name>/model/ (`semhitok export`), OUT/<name>/tokens/{train,test}/
# (`semhitok tokenize`, labels per record), OUT/tokenizers.md and OUT/tokenizers.json.
set -euo pipefail

[ $# -ge 1 ] || { sed -n '2,25p' "$0"; exit 2; }
read -ra B <<< "$1"
OUT=${2:-runs/fmnist}
DEVICE=${3:-cpu}
STEPS=${4:-}
PHASES=${PHASES:-train eval export tokenize table}
FMNIST=${FMNIST:-.assets/fashion-mnist}
FID=${FID:-.assets/weights/fid_inception_v3.pt}
CONFIGS=${CONFIGS:-configs}
NPROC=$(nproc 2>/dev/null || echo 2)
THREADS=${THREADS:-$(( NPROC / 3 > 1 ? NPROC / 3 : 1 ))}
if [ "$DEVICE" = cpu ]; then N_EVAL=${N_EVAL:-256}; else N_EVAL=${N_EVAL:-10000}; fi
case "$DEVICE" in cpu|cuda) ;; *) echo "DEVICE must be cpu or cuda, not $DEVICE" >&2; exit 2 ;; esac
[ -d "$FMNIST" ] || { echo "FMNIST=$FMNIST: no such folder (run \`cargo xtask assets\`)" >&2; exit 2; }
STAGE2="sghc sem-only pixel-vq"
NAMES="spc $STAGE2"
mkdir -p "$OUT"
T0=$(date +%s)
say() { printf '[fmnist %4ds] %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }
on() { [[ " $PHASES " == *" $1 "* ]]; }

# Steps of a run: STEPS (stage 2) or STEPS / 2 (the SPC), else the config's value.
steps_of() {
  local name=$1
  if [ -n "$STEPS" ]; then
    if [ "$name" = spc ]; then echo $(( STEPS / 2 > 1 ? STEPS / 2 : 1 )); else echo "$STEPS"; fi
  else
    sed -n 's/^steps = \([0-9]*\).*/\1/p' "$CONFIGS/fmnist-$name.toml" | head -1
  fi
}
# The `--set` overrides of a run.
sets_of() {
  local name=$1 s
  s=$(steps_of "$name")
  echo "run.out_dir=\"$OUT/$name\""
  echo "data.root=\"$FMNIST\""
  echo "eval.data.root=\"$FMNIST\""
  echo "schedule.steps=$s"
  echo "schedule.ckpt_every=$(( s / 4 > 1 ? s / 4 : 1 ))"
  if [ "$name" != spc ]; then echo "disc.start_step=$(( s / 2 ))"; fi
  if [ "$name" = sghc ] || [ "$name" = sem-only ]; then echo "init.spc=\"$OUT/spc\""; fi
  if [ "$DEVICE" = cpu ] && [ "$name" != spc ] && [ "${SEQUENTIAL:-0}" != 1 ]; then
    echo "run.threads=$THREADS"
  fi
  if [ "$DEVICE" = cuda ]; then echo "run.threads=0"; fi
}
# A run is finished when its last step's checkpoint exists.
finished() {
  [ -d "$OUT/$1/checkpoints/$(printf 'step-%08d' "$(steps_of "$1")")" ]
}
last_step() {
  tail -n 1 "$OUT/$1/metrics.jsonl" 2>/dev/null | sed -n 's/.*"step":\([0-9]*\).*/\1/p'
}
train_cmd() {
  local name=$1 args=() kv
  while IFS= read -r kv; do args+=(--set "$kv"); done < <(sets_of "$name")
  local mode=(--resume auto)
  "${B[@]}" train --config "$CONFIGS/fmnist-$name.toml" "${mode[@]}" --device "$DEVICE" --quiet \
    "${args[@]}" >> "$OUT/$name.log" 2>&1
}

if on train; then
  if finished spc; then say "spc: done ($(steps_of spc) steps)"; else
    say "spc: training $(steps_of spc) steps (log $OUT/spc.log)"
    train_cmd spc || { tail -n 20 "$OUT/spc.log" >&2; exit 1; }
  fi
  todo=()
  for n in $STAGE2; do
    if finished "$n"; then say "$n: done ($(steps_of "$n") steps)"; else todo+=("$n"); fi
  done
  if [ ${#todo[@]} -gt 0 ]; then
    say "training ${todo[*]} ($(steps_of sghc) steps each; logs $OUT/<name>.log)"
    if [ "${SEQUENTIAL:-0}" = 1 ]; then
      for n in "${todo[@]}"; do train_cmd "$n" || { tail -n 20 "$OUT/$n.log" >&2; exit 1; }; done
    else
      pids=()
      for n in "${todo[@]}"; do train_cmd "$n" & pids+=($!); done
      # Progress: every run's newest logged step, every 30 s, until all have exited.
      while :; do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 1 ] || break
        line=""
        for n in "${todo[@]}"; do line+="$n $(last_step "$n")/$(steps_of "$n")  "; done
        say "$line"
        for _ in $(seq 30); do
          alive=0
          for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
          [ $alive = 1 ] || break
          sleep 1
        done
      done
      rc=0
      for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
          rc=1; say "${todo[$i]} failed; end of $OUT/${todo[$i]}.log:"; tail -n 20 "$OUT/${todo[$i]}.log" >&2
        fi
      done
      [ $rc = 0 ] || exit 1
    fi
  fi
fi

if on eval; then
  if [ -f "$OUT/eval/eval.json" ]; then say "eval: done ($OUT/eval/eval.json)"; else
    [ -f "$FID" ] || { echo "FID=$FID: no FID Inception weights (run \`cargo xtask assets\`, or leave eval out of PHASES)" >&2; exit 2; }
    say "eval: $N_EVAL test images, PSNR/SSIM/rFID of ${STAGE2// /, } (log $OUT/eval.log)"
    "${B[@]}" eval --checkpoint "$OUT/sghc" --name sghc --also "sem-only=$OUT/sem-only" \
      --also "pixel-vq=$OUT/pixel-vq" --n-images "$N_EVAL" --device "$DEVICE" \
      --fid-weights "$FID" --out "$OUT/eval" > "$OUT/eval.log" 2>&1 \
      || { tail -n 20 "$OUT/eval.log" >&2; exit 1; }
  fi
fi

if on export; then
  for n in $STAGE2; do
    if [ -f "$OUT/$n/model/config.json" ]; then say "export $n: done"; continue; fi
    say "export $n -> $OUT/$n/model"
    ev=()
    [ -f "$OUT/eval/eval.json" ] && ev=(--eval "$OUT/eval/eval.json")
    "${B[@]}" export --run "$OUT/$n" --out "$OUT/$n/model" "${ev[@]}" >> "$OUT/export.log" 2>&1 \
      || { tail -n 20 "$OUT/export.log" >&2; exit 1; }
  done
fi

if on tokenize; then
  for n in $STAGE2; do
    for split in train test; do
      dir="$OUT/$n/tokens/$split"
      if [ -f "$dir/complete.json" ]; then say "tokenize $n $split: done"; continue; fi
      kind=fashion-mnist; [ $split = train ] && kind=fashion-mnist-train
      say "tokenize $n $split -> $dir"
      "${B[@]}" tokenize --model "$OUT/$n/model" --data "$kind:$FMNIST" --out "$dir" \
        --device "$DEVICE" --batch 256 --shard-size 10000 --workers 1 >> "$OUT/tokenize.log" 2>&1 \
        || { tail -n 20 "$OUT/tokenize.log" >&2; exit 1; }
    done
  done
fi

if on table; then
  [ -f "$OUT/eval/eval.md" ] || { echo "no $OUT/eval/eval.md: run the eval phase first" >&2; exit 2; }
  {
    echo "# Fashion-MNIST tokenizer set"
    echo
    echo "Made by \`scripts/fmnist/tokenizers.sh\` (\`cargo xtask fmnist-tokenizers\`) on $DEVICE:"
    echo "SPC $(steps_of spc) steps, each stage-2 run $(steps_of sghc) steps of batch" \
      "$(sed -n 's/^batch_size = \([0-9]*\).*/\1/p' "$CONFIGS/fmnist-sghc.toml" | head -1)," \
      "32 x 32 inputs, 16 tokens per image. Reconstruction on the first $N_EVAL test images" \
      "(\`semhitok eval\`, one reference set for all rFIDs; rFID at small N is biased upward:" \
      "compare only numbers with the same N)."
    echo
    cat "$OUT/eval/eval.md"
    echo
    echo "Models: \`$OUT/<name>/model/\`; tokens: \`$OUT/<name>/tokens/{train,test}/\` (docs/tokens-format.md)."
  } > "$OUT/tokenizers.md.tmp"
  mv "$OUT/tokenizers.md.tmp" "$OUT/tokenizers.md"
  cp "$OUT/eval/eval.json" "$OUT/tokenizers.json.tmp" && mv "$OUT/tokenizers.json.tmp" "$OUT/tokenizers.json"
  say "table: $OUT/tokenizers.md"
  cat "$OUT/tokenizers.md" >&2
fi
say "finished: $PHASES"
