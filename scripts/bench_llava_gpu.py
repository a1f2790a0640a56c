"""LLaVA stage 1 / stage 2 LoRA training step on a random-init Vicuna-7B-shaped LLM in
PyTorch + transformers (+ peft): the reference of crates/semhitok-train/examples/bench_llava.rs
(same shapes, same step: text embeddings, the mlp2x_gelu projector (f32) over random vision
features spliced over the first N positions after BOS, causal-LM loss on the text positions,
backward, AdamW lr 1e-4 without weight decay over the trained tensors). One JSON line on stdout.

Stage 1: LLM frozen (requires_grad False), only the projector trains. Stage 2: peft LoRA
(r, alpha = 2r, dropout 0, bias none) on q,k,v,o,gate,up,down, adapters kept in the base dtype
(autocast_adapter_dtype=False, as ours), plus the projector. No gradient checkpointing (tch 0.24
has none), attention "sdpa". Eager (no torch.compile).

GPU host: torch 2.11 + transformers there; peft from the carried wheel:
  pip install --no-deps --target .gpu/py .gpu/wheels/peft-0.17.1-*.whl
  PYTHONPATH=.gpu/py python3 scripts/bench_llava_gpu.py --stage 2 --batch 8 --seq 512
"""
import argparse
import json
import time

import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--stage", type=int, default=1)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=512)
p.add_argument("--n-image", type=int, default=256)
p.add_argument("--mm-hidden", type=int, default=64)
p.add_argument("--lora-r", type=int, default=128)
p.add_argument("--dtype", default="bf16")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--layers", type=int, default=32)
a = p.parse_args()
dev = "cuda"
dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[a.dtype]
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                  num_hidden_layers=a.layers, num_attention_heads=32, num_key_value_heads=32,
                  max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  attn_implementation="sdpa")
with torch.device(dev):
    model = LlamaForCausalLM(cfg).to(dtype)
model.requires_grad_(False)
trained_llm = 0
if a.stage == 2:
    from peft import LoraConfig, get_peft_model
    lc = LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, bias="none",
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lc, autocast_adapter_dtype=False)
    trained_llm = sum(x.numel() for x in model.parameters() if x.requires_grad)
proj = nn.Sequential(nn.Linear(a.mm_hidden, 4096), nn.GELU(), nn.Linear(4096, 4096)).to(dev)
params = list(proj.parameters()) + [x for x in model.parameters() if x.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
B, L, N = a.batch, a.seq, a.n_image
ids = torch.randint(3, 32000, (B, L), device=dev)
img = torch.zeros(B, L, dtype=torch.bool, device=dev)
img[:, 1:1 + N] = True
labels = ids.masked_fill(img, -100)
feats = torch.randn(B, N, a.mm_hidden, device=dev)
emb = model.get_input_embeddings()
times = []
torch.cuda.reset_peak_memory_stats()
for step in range(a.warmup + a.steps):
    torch.cuda.synchronize()
    t = time.perf_counter()
    text = emb(ids)
    pf = proj(feats).to(text.dtype)
    x = text.clone()
    x[img] = pf.reshape(-1, 4096)
    out = model(inputs_embeds=x, labels=labels, use_cache=False)
    opt.zero_grad(set_to_none=False)
    out.loss.backward()
    opt.step()
    torch.cuda.synchronize()
    if step >= a.warmup:
        times.append(time.perf_counter() - t)
times.sort()
med = times[len(times) // 2]
print(json.dumps({
    "impl": "transformers" + (" + peft" if a.stage == 2 else ""), "stage": a.stage, "batch": B,
    "seq": L, "n_image": N, "mm_hidden": a.mm_hidden, "lora_r": a.lora_r if a.stage == 2 else 0,
    "trained_llm_params": trained_llm, "dtype": a.dtype, "layers": a.layers,
    "step_s_median": med, "tokens_per_s": B * L / med, "loss": out.loss.item(), "steps": a.steps,
    "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
    "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
}))
