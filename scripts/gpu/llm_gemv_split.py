"""Where the batch-1 decode time of a 7B Llama shape goes on the GPU (issue 16): the weight
products alone, as one CUDA graph per token (32 layers x qkv / o / gate_up / down + the head, bf16,
M = 1, each layer its own weights: 13.2 GB read per token), through cuBLAS (`F.linear`, what
semhitok-mllm's decode step calls) against a plain read of the same bytes (`amax` over each
weight, a reduction kernel: close to the achievable HBM bandwidth). Compare with the measured
decode step (docs/benchmarks/llm.md) to split products from the other kernels.

Usage (GPU host): python3 scripts/gpu/llm_gemv_split.py  -> one JSON line.
"""
import json
import time

import torch
import torch.nn.functional as F

H, I, V, L = 4096, 11008, 32000, 32
shapes = [(3 * H, H), (H, H), (2 * I, H), (H, I)]
dev = "cuda"
torch.manual_seed(0)
ws = [[torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for (n, k) in shapes] for _ in range(L)]
head = torch.randn(V, H, device=dev, dtype=torch.bfloat16) * 0.02
xs = {k: torch.randn(1, k, device=dev, dtype=torch.bfloat16) for k in (H, I)}
nbytes = sum(w.numel() * 2 for layer in ws for w in layer) + head.numel() * 2


def step_linear():
    for layer in ws:
        for w in layer:
            F.linear(xs[w.shape[1]], w)
    F.linear(xs[H], head)


def step_read():
    for layer in ws:
        for w in layer:
            torch.amax(w)
    torch.amax(head)


def graph_ms(fn, reps=50):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(5):
        g.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            g.replay()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / reps)
    return best * 1e3


out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "gb_per_token": nbytes / 1e9}
for name, fn in [("linear", step_linear), ("read", step_read)]:
    ms = graph_ms(fn)
    out[f"{name}_ms"] = ms
    out[f"{name}_tb_s"] = nbytes / ms / 1e9
out["hbm_bound_ms_at_4.8"] = nbytes / 4.8e12 * 1e3
print(json.dumps(out))
