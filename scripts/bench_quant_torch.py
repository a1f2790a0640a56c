#!/usr/bin/env python3
"""PyTorch CPU baseline for `cargo xtask bench quant`: the peers' way of doing the same work.

Prints one JSON object. Shapes match crates/semhitok-quant/examples/bench_quant.rs:
- semantic search: N=4096, K=16384, D=32, cosine: F.normalize(q) @ normalized_codes.T, argmax
  (UniTok / VQKD style: the [N, K] score matrix is materialized);
- SGHC search: N=4096, K_sem=16384, m=12, D_pix in {8, 32}, squared L2: gather each token's m
  candidates (pixel[sem_ids] -> [N, m, D]) then argmin. Two formulations are timed, the direct
  (q - c)^2 sum and the expanded |q|^2 - 2 q.c + |c|^2 (bmm); the faster one is the baseline;
- SGEMM peak: best time of a 2048 x 2048 x 2048 fp32 matmul.
Run with the project-local torch: PYTHONPATH=.libtorch python3 scripts/bench_quant_torch.py --threads T
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def times_ms(fn, reps):
    """Sorted wall times (ms) of `reps` runs after one warm-up; index 0 (the best) is reported,
    as in the Rust side: on a shared machine it is the least disturbed by other processes."""
    fn()  # warm-up
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    out.sort()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    res = {"threads": torch.get_num_threads(), "torch_version": torch.__version__}

    n, k, d = 4096, 16384, 32
    codes = F.normalize(torch.rand(k, d) * 2 - 1, dim=1)
    q = torch.rand(n, d) * 2 - 1

    def sem():
        return (F.normalize(q, dim=1) @ codes.T).argmax(dim=1)

    with torch.inference_mode():
        ms = times_ms(sem, args.reps)[0]
        res["torch_sem_search_ms"] = ms
        res["torch_sem_search_tokens_per_s"] = n / (ms * 1e-3)
        res["torch_sem_search_gflops"] = 2.0 * n * k * d / (ms * 1e6)

        s = 2048
        a, b = torch.rand(s, s), torch.rand(s, s)
        best = times_ms(lambda: a @ b, max(args.reps, 5))[0]
        res["sgemm_size"] = s
        res["sgemm_peak_gflops"] = 2.0 * s**3 / (best * 1e6)

        k_sem, m = 16384, 12
        sem_ids = torch.randint(0, k_sem, (n,))
        for d_pix in (8, 32):
            pixel = torch.rand(k_sem, m, d_pix) * 2 - 1
            qp = torch.rand(n, d_pix) * 2 - 1

            def direct():
                cand = pixel[sem_ids]  # [N, m, D] gather
                j = ((qp[:, None, :] - cand) ** 2).sum(-1).argmin(dim=1)
                return sem_ids * m + j

            def expanded():
                cand = pixel[sem_ids]
                dist = (qp * qp).sum(-1, keepdim=True) - 2 * torch.bmm(cand, qp[:, :, None])[..., 0] + (cand * cand).sum(-1)
                return sem_ids * m + dist.argmin(dim=1)

            t_direct = times_ms(direct, args.reps * 5)[0]
            t_expanded = times_ms(expanded, args.reps * 5)[0]
            ms = min(t_direct, t_expanded)
            res[f"torch_sghc_d{d_pix}_direct_ms"] = t_direct
            res[f"torch_sghc_d{d_pix}_expanded_ms"] = t_expanded
            res[f"torch_sghc_d{d_pix}_ms"] = ms
            res[f"torch_sghc_d{d_pix}_tokens_per_s"] = n / (ms * 1e-3)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
