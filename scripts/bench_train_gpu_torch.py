#!/usr/bin/env python3
"""PyTorch eager reference for `semhitok bench` (stage `pre` at paper size), same model, batch,
precision and FLOP formula, for the side-by-side images/s + MFU table in
docs/benchmarks/train-gpu.md.

Model (mirrors configs/paper-pre-vitb-256.toml and semhitok-nn): a frozen random-init
SigLIP-L/16-256 vision tower (24 pre-norm blocks, 1024 wide, 16 heads, MLP 4096, tanh-GELU,
post-LN), the frozen SPC head (Linear 1024->1024, Tanh, Linear 1024->32, l2-norm, nearest of 16384
codes), a ViT-B/16 pixel encoder (12 blocks, 768, qkv bias, LN eps 1e-6) -> Linear 768->8 ->
l2-norm -> SGHC (nearest of the 12 sub-codes of each token's semantic code, codebook + 0.25
commitment losses, straight-through), concat [sem 32 | pix 8] -> ViT-B/16 decoder -> Linear to
16*16*3 patch pixels; L2 loss; AdamW (betas 0.9/0.95, foreach), grad clip 1.0, bf16 autocast, one
`.item()` per step (as the Rust loop reads the loss each step).

Usage (on the GPU host):
  python3 scripts/bench_train_gpu_torch.py --batch 32 --steps 20 --warmup 5
  python3 scripts/bench_train_gpu_torch.py --batch 32 --steps 20 --warmup 5 --compile
Prints one JSON line. `--compile` is what a user adds for speed (issue 21's comparison):
`torch.compile(model)` (inductor, default mode) and `AdamW(fused=True)`; the warm-up steps include
the compilation.

Data-parallel (the reference of the multi-GPU runs), under torchrun, NCCL, `--batch` per GPU:
  torchrun --nproc-per-node N scripts/bench_train_gpu_torch.py --ddp overlap   # DistributedDataParallel
  torchrun --nproc-per-node N scripts/bench_train_gpu_torch.py --ddp flat      # one all-reduce
`overlap` is torch's DDP (25 MB gradient buckets all-reduced while backward runs); `flat` is what
the Rust trainer does: after backward, one all-reduce (average) of all gradients flattened into one
buffer, then clip + AdamW. Rank 0 prints the JSON line; images/s counts all ranks, MFU is per GPU.
With `--profile` the phases include `all_reduce` (flat mode).
"""
import argparse
import json
import math
import time

import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, mlp, act="gelu"):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.fc1 = nn.Linear(d, mlp)
        self.fc2 = nn.Linear(mlp, d)
        self.heads = heads
        self.act = act

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        h = self.fc1(self.norm2(x))
        h = F.gelu(h, approximate="tanh" if self.act == "tanh" else "none")
        return x + self.fc2(h)


class Vit(nn.Module):
    def __init__(self, d, depth, heads, mlp, n, act="gelu"):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, n, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, heads, mlp, act) for _ in range(depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def forward(self, x):
        x = x + self.pos
        for b in self.blocks:
            x = b(x)
        return self.norm(x)


def patchify(img, p):
    b, c, h, w = img.shape
    x = img.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x, p, h, w):
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, p, p, 3).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, 3, h, w)


class Pre(nn.Module):
    def __init__(self, size=256, k=16384, m=12, dsem=32, dpix=8):
        super().__init__()
        n = (size // 16) ** 2
        self.size, self.m = size, m
        # frozen teacher + SPC
        self.t_embed = nn.Linear(16 * 16 * 3, 1024)
        self.teacher = Vit(1024, 24, 16, 4096, n, act="tanh")
        self.h0, self.h2 = nn.Linear(1024, 1024), nn.Linear(1024, dsem)
        self.register_buffer("sem_codebook", F.normalize(torch.randn(k, dsem), dim=-1))
        for p in [*self.t_embed.parameters(), *self.teacher.parameters(), *self.h0.parameters(), *self.h2.parameters()]:
            p.requires_grad_(False)
        # trained: encoder, SGHC codebook, decoder
        self.e_embed = nn.Linear(16 * 16 * 3, 768)
        self.encoder = Vit(768, 12, 12, 3072, n)
        self.e_out = nn.Linear(768, dpix)
        self.pix_codebook = nn.Parameter(torch.empty(k, m, dpix).uniform_(-1 / (k * m), 1 / (k * m)))
        self.d_embed = nn.Linear(dsem + dpix, 768)
        self.decoder = Vit(768, 12, 12, 3072, n)
        self.d_out = nn.Linear(768, 16 * 16 * 3)

    def forward(self, img):
        b = img.shape[0]
        x = patchify(img, 16)
        with torch.no_grad():
            f = self.teacher(self.t_embed(x))
            z = F.normalize(self.h2(torch.tanh(self.h0(f))).float(), dim=-1)
            ids = torch.argmax(z.reshape(-1, z.shape[-1]) @ self.sem_codebook.t(), dim=-1)
            sem = self.sem_codebook[ids].reshape(b, -1, self.sem_codebook.shape[1])
        zp = F.normalize(self.e_out(self.encoder(self.e_embed(x))).float(), dim=-1).reshape(-1, self.pix_codebook.shape[-1])
        with torch.autocast("cuda", enabled=False):
            cand = F.normalize(self.pix_codebook.float(), dim=-1)[ids]  # [M, m, D]
            dist = ((zp.unsqueeze(1) - cand) ** 2).sum(-1)
            j = dist.argmin(-1)
            zq = cand.gather(1, j.view(-1, 1, 1).expand(-1, 1, zp.shape[-1])).squeeze(1)
            l_cb = F.mse_loss(zq, zp.detach())
            l_commit = 0.25 * F.mse_loss(zq.detach(), zp)
            q = zp + (zq - zp).detach()
        fused = torch.cat([sem, q.reshape(b, -1, q.shape[-1])], -1)
        out = self.d_out(self.decoder(self.d_embed(fused)))
        rec = unpatchify(out, 16, self.size, self.size)
        return F.mse_loss(rec.float(), img) + l_cb + l_commit


def vit_flops(d, depth, n, mlp):
    return depth * (2 * n * (4 * d * d + 2 * d * mlp) + 4 * n * n * d)


def flops_per_image(size=256):
    n = (size // 16) ** 2
    pin = 16 * 16 * 3
    teacher = vit_flops(1024, 24, n, 4096) + 2 * n * pin * 1024
    spc = 2 * n * (1024 * 1024 + 1024 * 32)
    enc = vit_flops(768, 12, n, 3072) + 2 * n * pin * 768 + 2 * n * 768 * 8
    dec = vit_flops(768, 12, n, 3072) + 2 * n * 40 * 768 + 2 * n * 768 * pin
    return teacher + spc + 3 * (enc + dec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--precision", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--cuda-profiler-step", action="store_true",
                    help="then one step between cudaProfilerStart/Stop (for ncu --profile-from-start off)")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed run, time each phase with a sync at its end (phases_ms)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile(model) and AdamW(fused=True) (the warm-up steps compile)")
    ap.add_argument("--ddp", choices=["none", "overlap", "flat"], default="none",
                    help="data-parallel under torchrun (NCCL): DDP with bucketed overlap, or one flat all-reduce")
    a = ap.parse_args()
    world, rank = 1, 0
    if a.ddp != "none":
        dist.init_process_group("nccl")
        world, rank = dist.get_world_size(), dist.get_rank()
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.manual_seed(0)
    dev = "cuda"
    model = Pre().to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    fwd = model
    if a.ddp == "overlap":
        fwd = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()], gradient_as_bucket_view=True)
    elif a.ddp == "flat":
        for p in params:
            dist.broadcast(p.data, 0)
    if a.compile:
        fwd = torch.compile(fwd)
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0,
                            fused=True if a.compile else None)
    torch.manual_seed(rank)
    x = torch.rand(a.batch, 3, 256, 256, device=dev) * 2 - 1

    phases = {}

    def lap(name, t0, on):
        if not on:
            return t0
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + (t1 - t0)
        return t1

    def step(prof=False):
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = fwd(x)
        t0 = lap("forward", t0, prof)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t0 = lap("backward", t0, prof)
        if a.ddp == "flat":
            grads = [p.grad for p in params]
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat, op=dist.ReduceOp.AVG)
            for g, f in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                g.copy_(f)
            t0 = lap("all_reduce", t0, prof)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        t0 = lap("clip", t0, prof)
        opt.step()
        lap("optimizer", t0, prof)
        return loss.item()  # one sync per step, at the end (as the Rust trainer reads its losses)

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    ips = a.steps * a.batch * world / dt
    if a.cuda_profiler_step:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        step()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    if a.profile:
        for _ in range(a.steps):
            step(True)
    fpi = flops_per_image()
    if rank != 0:
        dist.destroy_process_group()
        return
    print(json.dumps({
        "impl": f"pytorch {torch.__version__} " + ("compile" if a.compile else "eager")
        + ("" if a.ddp == "none" else f" ddp-{a.ddp}"),
        "world_size": world,
        "device": torch.cuda.get_device_name(),
        "precision": a.precision,
        "batch": a.batch,
        "steps": a.steps,
        "seconds": dt,
        "images_per_s": ips,
        "gflops_per_image": fpi / 1e9,
        "peak_tflops": a.peak_tflops,
        "mfu": ips * fpi / (a.peak_tflops * 1e12 * world),
        "phases_ms": {k: 1e3 * v / a.steps for k, v in phases.items()} if a.profile else None,
    }))
    if a.ddp != "none":
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
