#!/usr/bin/env bash
# H200: semhitok-mllm's decoder vs transformers on a Llama-2-7B-shaped model with random bf16
# weights (issue 16 §5). Prepared here, run by the lead (GPU calls are the lead's).
# Usage (on the GPU host, from the repository root, bundle from `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/some/dir scripts/gpu/llm.sh .gpu/bundle
# Writes $OUT/llm.jsonl (one line per run, tch and transformers back to back per setting) and
# $OUT/llm_mem.txt (nvidia-smi memory samples while each run is busy).
# Settings: decode at batch 1 and 16 (prompt 128, 128 new tokens), prefill at 2048 tokens.
# The HBM bound at batch 1 is (weights + KV bytes per token) / 4.8 TB/s: 6.74 G params * 2 B
# = 13.5 GB/token -> ~356 tok/s; report decode_tok_s / 356.
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
run() { echo "+ $*" >&2; "$@"; }
mem() { # sample GPU memory while "$@" runs
  ( while sleep 1; do nvidia-smi --query-gpu=memory.used --format=csv,noheader; done ) > "$OUT/.mem" &
  local pid=$!
  "$@"
  local rc=$?
  kill $pid 2>/dev/null
  echo "$* : max $(sort -n "$OUT/.mem" | tail -1)" >> "$OUT/llm_mem.txt"
  return $rc
}
for setting in "1 128 128" "16 128 128" "1 2048 16"; do
  set -- $setting
  b=$1; p=$2; n=$3
  # tch: ids read every token (like transformers) and every 8 tokens (the GPU runs ahead).
  for k in 1 8; do
    mem run "$B/run.sh" bench_llm --random llama2-7b --device cuda --dtype bf16 --sync-every $k \
      --batch $b --prompt-tokens $p --new-tokens $n --reps 3 >> "$OUT/llm.jsonl" 2>> "$OUT/log.txt"
  done
  mem run python3 scripts/bench_llm_gpu.py --batch $b --prompt-tokens $p --new-tokens $n --reps 3 \
    >> "$OUT/llm.jsonl" 2>> "$OUT/log.txt"
done
cat "$OUT/llm.jsonl"
