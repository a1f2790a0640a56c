#!/usr/bin/env python3
"""PyTorch references for `examples/bench_search` (semhitok-nn) at the SPC's training shapes
(N = 65,536 tokens, K = 16,384 codes, D = 32, fp32, TF32 off), on CUDA:

* `vqkd_step_ms`: the quantizer step of VQKD's `NormEMAVectorQuantizer` (the module TokenFlow also
  uses), written here from its algorithm: squared distances z^2 + c^2 - 2 z c^T, argmin, code
  lookup, straight-through, EMA of counts and sums through a one-hot [N, K] matrix, Laplace
  smoothing, l2-normalized codes.
* `bare_ms`: z @ c^T then argmax (a GEMM-based search's floor), eager and `torch.compile`.
* `addmm_ms`: the same search as semhitok's GEMM path (addmm with the |c|^2 row, then argmin).

With --sghc 1 also SGHC's sub-codebook search at the pixel stage's shapes (65,536 tokens,
16,384 semantic codes x m = 12 sub-codes, D = 8): `sghc_gather_ms` is the gather computation of
semhitok-nn's `sghc::search_gather` (index_select of the [M, m, D] candidates, squared
distances, argmin, gather of the chosen codes), eager and `torch.compile`.

Each figure: mean of --iters calls after --warmup, between two syncs; --rounds repeats. JSON lines.
    python3 scripts/bench_quant_gpu_torch.py --iters 50 --rounds 3 --sghc 1
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def timed(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3 / iters


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--k", type=int, default=16384)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sghc", type=int, default=0)
    p.add_argument("--sghc-n", type=int, default=65536)
    p.add_argument("--sghc-k", type=int, default=16384)
    p.add_argument("--sghc-m", type=int, default=12)
    p.add_argument("--sghc-d", type=int, default=8)
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda"
    torch.manual_seed(0)
    z = F.normalize(torch.randn(a.n, a.d, device=dev), dim=-1)
    codes = F.normalize(torch.randn(a.k, a.d, device=dev), dim=-1)
    zg = z.clone().requires_grad_(True)
    cluster = torch.zeros(a.k, device=dev)
    embed_avg = codes.clone()
    decay, eps = 0.99, 1e-5

    def vqkd_step():
        zz = F.normalize(zg, dim=-1)
        flat = zz.reshape(-1, a.d)
        dist = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()
        ids = dist.argmin(1)
        zq = F.embedding(ids, codes)
        _st = zz + (zq - zz).detach()
        with torch.no_grad():
            onehot = F.one_hot(ids, a.k).type(flat.dtype)
            bins = onehot.sum(0)
            cluster.mul_(decay).add_(bins, alpha=1 - decay)
            sums = flat.detach().t() @ onehot
            embed_avg.mul_(decay).add_(sums.t(), alpha=1 - decay)
            n = cluster.sum()
            smoothed = (cluster + eps) / (n + a.k * eps) * n
            new = embed_avg / smoothed.unsqueeze(1)
            codes.copy_(torch.where((bins > 0).unsqueeze(1), F.normalize(new, dim=-1), codes))

    def bare():
        return (z @ codes.t()).argmax(-1)

    cc = codes.pow(2).sum(-1)

    def addmm():
        return torch.addmm(cc.unsqueeze(0), z * -2.0, codes.t()).argmin(-1)

    bare_c = torch.compile(bare)
    for r in range(a.rounds):
        rec = {"impl": "torch", "torch": torch.__version__, "round": r, "n": a.n, "k": a.k, "d": a.d}
        rec["vqkd_step_ms"] = timed(vqkd_step, a.iters, a.warmup)
        rec["bare_ms"] = timed(bare, a.iters, a.warmup)
        rec["bare_compile_ms"] = timed(bare_c, a.iters, a.warmup)
        rec["addmm_ms"] = timed(addmm, a.iters, a.warmup)
        print(json.dumps(rec), flush=True)
        if a.sghc:
            print(json.dumps(bench_sghc(a, r)), flush=True)


def bench_sghc(a, r):
    torch.manual_seed(1)
    dev = "cuda"
    z = F.normalize(torch.randn(a.sghc_n, a.sghc_d, device=dev), dim=-1)
    codes = F.normalize(torch.randn(a.sghc_k, a.sghc_m, a.sghc_d, device=dev), dim=-1)
    sem = torch.randint(a.sghc_k, (a.sghc_n,), device=dev)

    def gather():
        cand = codes.index_select(0, sem)  # [M, m, D]
        j = (z.unsqueeze(1) - cand).pow(2).sum(-1).argmin(-1)
        zq = cand.gather(1, j.view(-1, 1, 1).expand(-1, 1, a.sghc_d)).squeeze(1)
        return j, zq

    gather_c = torch.compile(gather)
    rec = {"impl": "torch", "bench": "sghc", "torch": torch.__version__, "round": r,
           "n": a.sghc_n, "k_sem": a.sghc_k, "m": a.sghc_m, "d": a.sghc_d}
    rec["sghc_gather_ms"] = timed(gather, a.iters, a.warmup)
    rec["sghc_gather_compile_ms"] = timed(gather_c, a.iters, a.warmup)
    return rec


if __name__ == "__main__":
    main()
