#!/usr/bin/env bash
# H200, issue 16: the decode GEMV (llm::gemv) and the fused add+RMSNorm / SiLU x up kernels
# (llm::fused) against cuBLAS + LibTorch's kernels, in one run, on the Llama-2-7B shape (random
# bf16): their CUDA tests, batch-1 CUDA-graph decode with SEMHITOK_CUDA_GEMV / SEMHITOK_CUDA_FUSED
# off / on (2 rounds, alternating), batch 16, the 2048-token prefill, and transformers for both.
# Usage (GPU host, repository root): OUT=/dir scripts/gpu/llm_fused_ab.sh BUNDLE
# (bundle from `cargo xtask bundle`: bin/bench_llm, tests/mllm, run.sh). Prints one line per run.
set -uo pipefail
B=${1:?BUNDLE}
O=${OUT:-/tmp/semhitok-llm-ab}; mkdir -p "$O"; : > "$O/llm.jsonl"
export PYTHONUNBUFFERED=1
for t in fused gemv static_decode; do $B/run.sh mllm $t 2>&1 | grep -E "^test |test result|panicked" -A2; done > $O/tests.txt
cat $O/tests.txt | grep -E "test result|FAILED|panicked"
D="--prompt-tokens 128 --new-tokens 128"
t() { g=$1; f=$2; shift 2; SEMHITOK_CUDA_GEMV=$g SEMHITOK_CUDA_FUSED=$f $B/run.sh bench_llm --random llama2-7b --device cuda --dtype bf16 --reps 2 "$@" 2>>$O/log.txt | sed "s/^{/{\"gemv\":$g,\"fused\":$f,/" >> $O/llm.jsonl; }
for r in 1 2; do
  t 0 0 --batch 1 $D --decode graph --sync-every 8
  t 1 0 --batch 1 $D --decode graph --sync-every 8
  t 1 1 --batch 1 $D --decode graph --sync-every 8
done
t 1 1 --batch 1 $D --decode graph --sync-every 1
python3 scripts/bench_llm_gpu.py --reps 2 --batch 1 $D >> $O/llm.jsonl 2>>$O/log.txt
t 1 0 --batch 16 $D --decode graph --sync-every 8
t 1 1 --batch 16 $D --decode graph --sync-every 8
for r in 1 2; do
  t 1 0 --batch 1 --prompt-tokens 2048 --new-tokens 4 --decode dynamic --sync-every 1
  t 1 1 --batch 1 --prompt-tokens 2048 --new-tokens 4 --decode dynamic --sync-every 1
done
python3 scripts/bench_llm_gpu.py --reps 2 --batch 1 --prompt-tokens 2048 --new-tokens 4 >> $O/llm.jsonl 2>>$O/log.txt
python3 - $O/llm.jsonl <<'PY'
import json, sys
for l in open(sys.argv[1]):
    try: r = json.loads(l)
    except Exception: continue
    print(r.get("gemv", "hf"), r.get("fused", "-"), r.get("batch"), r.get("prompt_tokens"), r.get("decode"), r.get("sync_every"),
          "prefill", round(r.get("prefill_tok_s", 0), 1), "decode", round(r.get("decode_tok_s", 0), 1),
          "hbm%", round(100 * r.get("decode_tok_s", 0) / 356, 1), r.get("first_tokens"))
PY
