#!/usr/bin/env bash
# H200: semhitok-mllm's decoder vs transformers on a Llama-2-7B-shaped model with random bf16
# weights (issue 16 §5). Prepared here, run by the lead (GPU calls are the lead's).
# Usage (on the GPU host, from the repository root, bundle from `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/some/dir scripts/gpu/llm.sh .gpu/bundle
# Needs from the bundle: bin/bench_llm (the semhitok-mllm example) and, for the exactness check
# of the CUDA-graph path, tests/mllm (the semhitok-mllm test binary; its fixtures are read from the
# repository checkout). Host: python3 with torch 2.11 + transformers (scripts/bench_llm_gpu.py).
# Writes $OUT/llm.jsonl (one JSON line per run), $OUT/llm_mem.txt (peak nvidia-smi memory per run),
# $OUT/graph_test.txt (the CUDA tests of the static / graph decode step) and $OUT/log.txt.
# Runs (about 2.5 min in all; each run loads the random 7B model once, 1 warm-up + 2 timed reps):
#   decode b1  (prompt 128, 128 new): dynamic step (ids read every 8 tokens), CUDA graph (ids
#              read every token), CUDA graph (every 8), transformers generate
#   decode b16 (prompt 128, 128 new): dynamic (every 8), CUDA graph (every 8), transformers
#   prefill    2048 tokens: semhitok-mllm, transformers
# The HBM bound at batch 1 is (weights + KV bytes per token) / 4.8 TB/s: 6.74 G params * 2 B
# = 13.5 GB/token (+ <= 0.07 GB of KV at 256 slots) -> ~356 tok/s; the summary prints
# decode_tok_s / 356 for the b1 lines.
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-gpu}
mkdir -p "$OUT"
: > "$OUT/llm.jsonl"
export PYTHONUNBUFFERED=1
run() { echo "+ $*" >&2; "$@"; }
mem() { # sample GPU memory while "$@" runs
  ( while sleep 0.5; do nvidia-smi --query-gpu=memory.used --format=csv,noheader; done ) > "$OUT/.mem" &
  local pid=$!
  "$@"
  local rc=$?
  kill $pid 2>/dev/null
  echo "$* : max $(sort -n "$OUT/.mem" | tail -1)" >> "$OUT/llm_mem.txt"
  return $rc
}
tch() { mem run "$B/run.sh" bench_llm --random llama2-7b --device cuda --dtype bf16 --reps 2 "$@" \
  >> "$OUT/llm.jsonl" 2>> "$OUT/log.txt"; }
hf() { mem run python3 scripts/bench_llm_gpu.py --reps 2 "$@" >> "$OUT/llm.jsonl" 2>> "$OUT/log.txt"; }

# Exactness first (seconds): static step vs dynamic step logits, greedy tokens of the graph path.
run "$B/run.sh" mllm static_decode > "$OUT/graph_test.txt" 2>&1 || echo "graph tests FAILED" >&2
tail -3 "$OUT/graph_test.txt" >&2

D="--prompt-tokens 128 --new-tokens 128"
tch --batch 1 $D --decode dynamic --sync-every 8
tch --batch 1 $D --decode graph --sync-every 1
tch --batch 1 $D --decode graph --sync-every 8
hf --batch 1 $D
tch --batch 16 $D --decode dynamic --sync-every 8
tch --batch 16 $D --decode graph --sync-every 8
hf --batch 16 $D
tch --batch 1 --prompt-tokens 2048 --new-tokens 4 --decode dynamic --sync-every 1
hf --batch 1 --prompt-tokens 2048 --new-tokens 4

python3 - "$OUT/llm.jsonl" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    try:
        r = json.loads(l)
    except Exception:
        continue
    b = r.get("batch"); d = r.get("decode_tok_s", 0.0)
    hbm = f" hbm={d / 356:.0%}" if b == 1 and r.get("prompt_tokens") == 128 else ""
    print(f'{r.get("impl"):22} {str(r.get("decode", "-")):9} sync={r.get("sync_every", "-")} b={b} '
          f'p={r.get("prompt_tokens")} prefill={r.get("prefill_tok_s", 0):9.0f} decode={d:8.1f}{hbm}')
PY
cat "$OUT/llm_mem.txt"
