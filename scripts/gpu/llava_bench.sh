#!/usr/bin/env bash
# H200: LLaVA training step on a random-init Vicuna-7B-shaped LLM (issue 17 §2): peak memory and
# tokens/s of stage 1 (projector only) and stage 2 LoRA (r = 128, alpha = 256, all linear
# layers) in semhitok (tch) and in PyTorch transformers (+ peft), back to back per setting.
# Prepared here, run by the lead.
# Usage (GPU host, repository root, bundle from `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/tmp/llava-bench PYTHONPATH=.gpu/py scripts/gpu/llava_bench.sh .gpu/bundle
# (peft 0.17.1 + accelerate from the carried wheels in .gpu/py.)
# Writes $OUT/llava_bench.jsonl (one line per run) and $OUT/llava_mem.txt (the largest
# nvidia-smi memory.used sample while each run is busy; both sides measured the same way).
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/llava-bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
run() { echo "+ $*" >&2; "$@"; }
mem() {
  ( while sleep 0.5; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done ) > "$OUT/.mem" &
  local pid=$!
  "$@"
  local rc=$?
  kill $pid 2>/dev/null
  echo "$* : max $(sort -n "$OUT/.mem" | tail -1) MiB" >> "$OUT/llava_mem.txt"
  return $rc
}
# batch x seq: 256 image positions (SemHiTok 256 px, 16 x 16 tokens) + text.
for setting in "1 8 512" "2 8 512" "2 4 1024"; do
  set -- $setting
  st=$1; b=$2; l=$3
  mem run "$B/run.sh" bench_llava --stage $st --batch $b --seq $l --n-image 256 --dtype bf16 \
    --steps 10 --warmup 3 >> "$OUT/llava_bench.jsonl" 2>> "$OUT/log.txt"
  mem run python3 scripts/bench_llava_gpu.py --stage $st --batch $b --seq $l --n-image 256 \
    --dtype bf16 --steps 10 --warmup 3 >> "$OUT/llava_bench.jsonl" 2>> "$OUT/log.txt"
done
cat "$OUT/llava_bench.jsonl"
cat "$OUT/llava_mem.txt"
