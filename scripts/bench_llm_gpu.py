"""transformers side of scripts/gpu/llm.sh: a Llama-2-7B-shaped LlamaForCausalLM with random bf16
weights on CUDA; prefill tokens/s at P prompt tokens and greedy decode tokens/s with the KV cache
(`generate`), same prompt ids as crates/semhitok-mllm/examples/bench_llm.rs. One JSON line.

python3 scripts/bench_llm_gpu.py --batch 1 --prompt-tokens 2048 --new-tokens 128
(needs torch 2.11 + transformers 5.24 on the GPU host)
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--prompt-tokens", type=int, default=128)
ap.add_argument("--new-tokens", type=int, default=128)
ap.add_argument("--reps", type=int, default=3)
a = ap.parse_args()
cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                  rms_norm_eps=1e-5, attn_implementation="sdpa")
torch.manual_seed(0)
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
V = cfg.vocab_size
ids = torch.tensor([[(i * 7919 + 13) % V for i in range(a.prompt_tokens)]] * a.batch, device="cuda")
mask = torch.ones_like(ids)
best_pre = best_dec = 0.0
with torch.inference_mode():
    for r in range(a.reps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(ids, attention_mask=mask, use_cache=True)
        out.logits[:, -1].argmax(-1).tolist()
        torch.cuda.synchronize()
        t_pre = time.perf_counter() - t0
        del out
        t0 = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=a.new_tokens,
                       min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        t_gen = time.perf_counter() - t0
        if r == 0:
            continue
        best_pre = max(best_pre, a.batch * a.prompt_tokens / t_pre)
        best_dec = max(best_dec, a.batch * (a.new_tokens - 1) / max(t_gen - t_pre, 1e-9))
print(json.dumps({"impl": f"transformers {__import__('transformers').__version__} (torch {torch.__version__})",
                  "model": "llama2-7b shape, random bf16", "device": torch.cuda.get_device_name(),
                  "batch": a.batch, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
                  "prefill_tok_s": best_pre, "decode_tok_s": best_dec,
                  "max_mem_gib": torch.cuda.max_memory_allocated() / 2**30}))
