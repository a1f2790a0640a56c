"""transformers side of `cargo xtask bench llm`: prefill and decode tokens/s of a GGUF model
loaded by transformers (`from_pretrained(..., gguf_file=...)`, which dequantizes to f32), greedy
`generate` with the KV cache, on the same prompt ids as crates/semhitok-mllm/examples/bench_llm.rs.
One JSON line on stdout.

PYTHONPATH=.pytools:.libtorch python3 scripts/bench_llm_cpu.py --model .assets/llm/X.gguf --threads 2
(torch 2.11.0, transformers 5.24.0; see scripts/fixtures/requirements.txt)
"""
import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging

logging.set_verbosity_error()
ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--prompt-tokens", type=int, default=128)
ap.add_argument("--new-tokens", type=int, default=64)
ap.add_argument("--reps", type=int, default=3)
a = ap.parse_args()
torch.set_num_threads(a.threads)
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
t = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(a.model)),
                                             gguf_file=os.path.basename(a.model), dtype=dtype,
                                             attn_implementation="sdpa").eval()
load_s = time.perf_counter() - t
V = model.config.vocab_size
ids = torch.tensor([[(i * 7919 + 13) % V for i in range(a.prompt_tokens)]] * a.batch)
mask = torch.ones_like(ids)
best_pre = best_dec = 0.0
first = None
with torch.inference_mode():
    for r in range(a.reps + 1):
        t0 = time.perf_counter()
        out = model(ids, attention_mask=mask, use_cache=True)
        out.logits[:, -1].argmax(-1)
        t_pre = time.perf_counter() - t0
        t0 = time.perf_counter()
        seq = model.generate(ids, attention_mask=mask, max_new_tokens=a.new_tokens,
                             min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=0)
        t_gen = time.perf_counter() - t0
        if r == 0:
            first = seq[0, a.prompt_tokens:a.prompt_tokens + 8].tolist()
            continue
        best_pre = max(best_pre, a.batch * a.prompt_tokens / t_pre)
        # generate = one prefill + (new - 1) decode steps
        best_dec = max(best_dec, a.batch * (a.new_tokens - 1) / max(t_gen - t_pre, 1e-9))
print(json.dumps({"impl": f"transformers {__import__('transformers').__version__} (torch {torch.__version__})",
                  "model": a.model, "device": "cpu", "dtype": a.dtype,
                  "threads": torch.get_num_threads(), "batch": a.batch,
                  "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens, "reps": a.reps,
                  "load_s": load_s, "prefill_tok_s": best_pre, "decode_tok_s": best_dec,
                  "first_tokens": first}))
