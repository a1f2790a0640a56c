#!/usr/bin/env python3
"""Issue 21's FP8-teacher candidate, measured before any port: is the frozen SigLIP-L/16-256
teacher's forward faster with its GEMMs in FP8 (Hopper `torch._scaled_mm`, e4m3, per-tensor
scales), and how many semantic ids does that change?

The teacher is bench_train_gpu_torch.py's (`SiglipTeacher`: random init, the layout of
semhitok-nn's siglip/mod.rs; no pretrained SigLIP is reachable from this project). FP8 replaces
each encoder-layer linear (qkv, proj, fc1, fc2): the weight quantized once with its per-tensor
scale, the input with a per-tensor scale either

- dynamic: amax of this input (one reduction and a cast per GEMM), or
- static: the amax seen on a calibration batch, applied to a held-out batch (a cast only; what a
  port would fuse into the producing kernels), or
- rowwise: one scale per token (its row's amax) and one per output channel of the weight
  (`_scaled_mm`'s rowwise mode, CUDA only): a producing kernel that holds a whole row (the layer
  norm, the GELU) can quantize in its own pass, with no global reduction first.

Ids: each token feature l2-normalized, its nearest of 16,384 random unit codes (SPC quantizes
l2-normalized vectors against an l2-normalized codebook); agreement on the held-out batch between
bf16 (the trainer's default) and fp8, and between fp32 and each.

Timing: the teacher's whole forward, wall time with the device synchronised around each call
(median of ITERS after WARMUP), bf16 vs fp8, at each batch; plus the encoder GEMMs alone (the 96
GEMM shapes in bf16 vs fp8), the bound on the gain. torch.compile of the fp8 forward (fusing the casts) where it compiles.

Usage (GPU host, repository root): python3 scripts/gpu/fp8_teacher_probe.py [--batches 32 128]
Prints JSON lines. `--device cpu --tiny` is a smoke test of the script (a two-layer tower; CPU
`_scaled_mm` has per-tensor scales only, so the rowwise variant reports an error there).
"""

import argparse
import copy
import json
import statistics
import sys
import os
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_train_gpu_torch import SiglipTeacher, VitSize  # noqa: E402

E4M3_MAX = 448.0
ENC = ("qkv", "proj", "fc1", "fc2")


class Fp8Linear(nn.Module):
    """y = x W^T + b with x, W in e4m3 and per-tensor (or, `rowwise`, per-row) scales; bf16 out."""

    def __init__(self, lin: nn.Linear, fast_accum: bool, rowwise: bool = False):
        super().__init__()
        w = lin.weight.detach().float()
        self.rowwise = rowwise
        # Rowwise: [out, 1], one per output channel; else a 0-d scale.
        self.w_scale = amax_scale(w, rowwise)
        # [out, in] row-major = [in, out] column-major, the layout _scaled_mm takes for mat2.
        self.w8 = (w / self.w_scale).to(torch.float8_e4m3fn)
        self.bias = lin.bias.detach().to(torch.bfloat16)
        self.fast_accum = fast_accum
        self.static_scale = None  # set by calibrate()
        self.seen_scale = None  # the largest dynamic scale while calibrating

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.rowwise:
            scale = amax_scale(x2, True)  # [rows, 1]
        elif self.static_scale is not None:
            scale = self.static_scale
        else:
            scale = amax_scale(x2, False)
            if self.seen_scale is not None:
                self.seen_scale = torch.maximum(self.seen_scale, scale)
        x8 = (x2.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        w_scale = self.w_scale.t() if self.rowwise else self.w_scale
        y = torch._scaled_mm(x8, self.w8.t(), scale_a=scale, scale_b=w_scale, bias=self.bias,
                             out_dtype=torch.bfloat16, use_fast_accum=self.fast_accum)
        return y.reshape(*shape[:-1], y.shape[-1])


def amax_scale(t, rowwise):
    """The e4m3 scale of t: its amax over E4M3_MAX, per row ([rows, 1]) or whole (0-d)."""
    amax = t.abs().amax(1, keepdim=True) if rowwise else t.abs().amax()
    return (amax.float() / E4M3_MAX).clamp_min(1e-12)


def to_fp8(teacher, fast_accum, rowwise=False):
    t = copy.deepcopy(teacher)
    for blk in t.vit.blocks:
        for name in ENC:
            setattr(blk, name, Fp8Linear(getattr(blk, name), fast_accum, rowwise))
    return t


def fp8_layers(t):
    return [getattr(b, n) for b in t.vit.blocks for n in ENC]


def calibrate(t, x):
    for l in fp8_layers(t):
        l.static_scale, l.seen_scale = None, torch.zeros((), device=x.device)
    with torch.no_grad(), torch.autocast(x.device.type, torch.bfloat16):
        t(x)
    for l in fp8_layers(t):
        l.static_scale, l.seen_scale = l.seen_scale, None


def ids(feats, codes):
    f = torch.nn.functional.normalize(feats.float().reshape(-1, feats.shape[-1]), dim=-1)
    return torch.cat([(c @ codes.t()).argmax(-1) for c in f.split(4096)])


def rel(a, b):
    return ((a.float() - b.float()).abs().mean() / b.float().abs().mean()).item()


def time_ms(fn, dev, warmup, iters):
    """Median wall time of fn in ms, the device synchronised before and after each call."""
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(out)


def gemm_bound(batch, v, n, dev, warmup, iters):
    """The encoder's GEMMs alone, bf16 vs fp8 (dynamic scales excluded): ms per forward."""
    m = batch * n
    shapes = [(v.d, 3 * v.d), (v.d, v.d), (v.d, v.mlp), (v.mlp, v.d)]
    xs = [torch.randn(m, k, device=dev, dtype=torch.bfloat16) for k, _ in shapes]
    ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for k, n in shapes]
    x8 = [x.to(torch.float8_e4m3fn) for x in xs]
    w8 = [w.to(torch.float8_e4m3fn) for w in ws]
    one = torch.ones((), device=dev)

    def bf16():
        for _ in range(v.depth):
            for x, w in zip(xs, ws):
                x @ w.t()

    def fp8(fast):
        def f():
            for _ in range(v.depth):
                for x, w in zip(x8, w8):
                    torch._scaled_mm(x, w.t(), scale_a=one, scale_b=one,
                                     out_dtype=torch.bfloat16, use_fast_accum=fast)
        return f

    return (time_ms(bf16, dev, warmup, iters), time_ms(fp8(False), dev, warmup, iters),
            time_ms(fp8(True), dev, warmup, iters))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--id-batch", type=int, default=16)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of each")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a two-layer tower (smoke test)")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = a.device
    if a.tiny:
        v, n, pp = VitSize(d=64, depth=2, heads=4, mlp=256), 16, 48
    else:
        v, n, pp = VitSize(d=1024, depth=24, heads=16, mlp=4096), 256, 16 * 16 * 3
    t32 = SiglipTeacher(v, n, pp).to(dev).eval()
    tb = copy.deepcopy(t32).to(torch.bfloat16)
    calib = torch.rand(a.id_batch, n, pp, device=dev) * 2 - 1
    held = torch.rand(a.id_batch, n, pp, device=dev) * 2 - 1
    codes = torch.nn.functional.normalize(torch.randn(16384, v.d, device=dev), dim=-1)

    def run(t, x, amp=True):
        with torch.no_grad(), torch.autocast(dev, torch.bfloat16, enabled=amp):
            return t(x)

    f32 = run(t32, held, amp=False)
    fb = run(tb, held)
    i32, ib = ids(f32, codes), ids(fb, codes)
    agree = lambda p, q: (p == q).float().mean().item()  # noqa: E731
    name = torch.cuda.get_device_name() if dev == "cuda" else dev
    base = {"probe": "fp8_teacher", "device": name, "tiny": a.tiny,
            "torch": torch.__version__, "tokens": i32.numel()}
    print(json.dumps({**base, "variant": "bf16", "rel_err_vs_fp32": rel(fb, f32),
                      "ids_vs_fp32": agree(ib, i32)}), flush=True)
    variants = {}
    for fast in (False, True):
        t8 = to_fp8(tb, fast)
        fd = run(t8, held)
        calibrate(t8, calib)
        fs = run(t8, held)
        for mode, f in (("dynamic", fd), ("static", fs)):
            i8 = ids(f, codes)
            print(json.dumps({**base, "variant": f"fp8_{mode}", "fast_accum": fast,
                              "rel_err_vs_fp32": rel(f, f32), "rel_err_vs_bf16": rel(f, fb),
                              "ids_vs_fp32": agree(i8, i32), "ids_vs_bf16": agree(i8, ib)}),
                  flush=True)
        variants[fast] = t8
    try:
        rw = to_fp8(tb, True, rowwise=True)
        fr = run(rw, held)
        ir = ids(fr, codes)
        print(json.dumps({**base, "variant": "fp8_rowwise", "fast_accum": True,
                          "rel_err_vs_fp32": rel(fr, f32), "rel_err_vs_bf16": rel(fr, fb),
                          "ids_vs_fp32": agree(ir, i32), "ids_vs_bf16": agree(ir, ib)}),
              flush=True)
    except Exception as e:  # rowwise scaling needs sm_89+ and a bf16 output
        rw = None
        print(json.dumps({**base, "variant": "fp8_rowwise", "error": str(e)[:300]}), flush=True)
    del f32, t32
    for b in a.batches:
        x = torch.rand(b, n, pp, device=dev) * 2 - 1
        rec = {**base, "batch": b}
        rec["bf16_ms"] = time_ms(lambda: run(tb, x), dev, a.warmup, a.iters)
        for fast, t8 in variants.items():
            key = "fp8_fast" if fast else "fp8"
            calibrate(t8, x)
            rec[f"{key}_static_ms"] = time_ms(lambda: run(t8, x), dev, a.warmup, a.iters)
            for l in fp8_layers(t8):
                l.static_scale = None
            rec[f"{key}_dynamic_ms"] = time_ms(lambda: run(t8, x), dev, a.warmup, a.iters)
        if rw is not None:
            rec["fp8_fast_rowwise_ms"] = time_ms(lambda: run(rw, x), dev, a.warmup, a.iters)
        if a.compile:
            cb = torch.compile(tb)
            rec["bf16_compile_ms"] = time_ms(lambda: run(cb, x), dev, a.warmup + 2, a.iters)
            t8 = variants[True]
            calibrate(t8, x)
            try:
                c8 = torch.compile(t8)
                rec["fp8_fast_static_compile_ms"] = time_ms(lambda: run(c8, x), dev, a.warmup + 2,
                                                            a.iters)
            except Exception as e:  # report, keep the rest
                rec["fp8_compile_error"] = str(e)[:300]
            torch._dynamo.reset()
        g = gemm_bound(b, v, n, dev, a.warmup, a.iters)
        rec.update({"gemm_bf16_ms": g[0], "gemm_fp8_ms": g[1], "gemm_fp8_fast_ms": g[2]})
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
