#!/usr/bin/env bash
# H200: guided text-to-image sampling speed (issue 18 §2), semhitok-mllm vs the PyTorch
# reference loop (scripts/bench_t2i_torch.py, LlamaGen-style), back to back in one call, on a
# Qwen2.5-3B-shaped decoder with random bf16 weights and the paper's visual vocabulary,
# 256 tokens per image, CFG 5 (2B rows), batches 16 and 64.
# Usage (GPU host, repository root, bundle from `cargo xtask bundle --out .gpu/bundle`):
#   OUT=/some/dir scripts/gpu/t2i_bench.sh .gpu/bundle
# Writes $OUT/t2i_bench.jsonl (one line per implementation and batch) and prints the ratios.
set -uo pipefail
B=${1:-.gpu/bundle}
OUT=${OUT:-/tmp/semhitok-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
run() { echo "+ $*" >&2; "$@"; }
ARGS="--batches 16,64 --tokens 256 --cfg 5.0 --reps 3"
for round in 1 2; do
  run "$B/run.sh" bench_t2i --device cuda --dtype bf16 $ARGS >> "$OUT/t2i_bench.jsonl" 2>> "$OUT/log.txt"
  run python3 scripts/bench_t2i_torch.py --device cuda --dtype bf16 $ARGS >> "$OUT/t2i_bench.jsonl" 2>> "$OUT/log.txt"
done
python3 - "$OUT/t2i_bench.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
best = {}
for r in rows:
    k = ("tch" if r["impl"].startswith("semhitok") else "torch", r["batch"])
    best[k] = max(best.get(k, 0), r["images_per_s"])
for b in sorted({k[1] for k in best}):
    t, p = best.get(("tch", b)), best.get(("torch", b))
    if t and p:
        print(f"batch {b}: semhitok-mllm {t:.2f} img/s, PyTorch {p:.2f} img/s, ratio {t / p:.2f}x")
PY
