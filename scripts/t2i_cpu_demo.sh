#!/usr/bin/env bash
# The text-to-image path on the CPU in a few minutes (issue 18 §3, "a small CPU run of the same
# path"): configs/t2i-tiny-cpu.toml (SmolLM2-135M GGUF, full fine-tune, 10 steps of 4 sequences),
# then `semhitok generate` (2 prompts x 2 images, CFG 3) decoded by the image tokenizer, then
# `semhitok export` and generation again from the exported folder. It shows the path runs end to
# end; 10 steps do not make a generator.
#   scripts/t2i_cpu_demo.sh BIN TOKENIZER_DIR TOKENS_DIR [OUT]
#   BIN: the semhitok binary (target/release/semhitok); TOKENIZER_DIR: a Fashion-MNIST SemHiTok
#   model folder (runs/fmnist/sghc/model); TOKENS_DIR: its `semhitok tokenize` output with labels.
set -euo pipefail
BIN=${1:?BIN}; TOK=${2:?TOKENIZER_DIR}; TOKENS=${3:?TOKENS_DIR}; OUT=${4:-runs/t2i/cpu-demo}
t0=$(date +%s)
"$BIN" train --config configs/t2i-tiny-cpu.toml --quiet --overwrite \
  --set "run.out_dir=\"$OUT/run\"" --set "t2i.tokenizer=\"$TOK\"" --set "data.tokens=\"$TOKENS\""
t1=$(date +%s)
"$BIN" generate --llm "$OUT/run" --prompt "a photo of a Trouser" --n 2 --cfg 3 --out "$OUT/gen"
"$BIN" export --run "$OUT/run" --out "$OUT/export" --overwrite
"$BIN" generate --llm "$OUT/export" --prompts <(printf 'a photo of a Bag\n{"prompt": "a photo of a Sneaker"}\n') \
  --n 2 --cfg 3 --out "$OUT/gen-export"
echo "train $((t1 - t0)) s, total $(( $(date +%s) - t0 )) s; images in $OUT/gen, $OUT/gen-export"
