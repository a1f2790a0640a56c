#!/usr/bin/env python3
"""PyTorch eager reference of SemHiTok's encode path, for `semhitok bench-tokenize`
(docs/benchmarks/tokenize.md): the same model folder, inputs and batch, timed side by side.

Path (mirrors semhitok-nn, names from the folder's model.safetensors): u8 -> [-1, 1]; the frozen
teacher (EfficientNet-Lite0 with ImageNet normalization up to the stride-8/16 tap, or a SigLIP
vision tower, HF layout); SPC head Linear -> Tanh -> Linear -> l2-normalize -> nearest of the
l2-normalized codebook (argmin |c|^2 - 2 z.c, one addmm); ViT pixel encoder (GEMM patchify,
pos_embed, pre-norm blocks with exact GELU, final norm, Linear to D_pix); SGHC: l2-normalize,
nearest of the m sub-codes of each token's semantic code; unified = k * m + j. Eager mode,
`torch.inference_mode()`, fp32 (optionally bf16 autocast on CUDA with --bf16).

Usage:
  semhitok bench-tokenize --model DIR --out OUT --batch 64 --threads 2
  PYTHONPATH=.libtorch python3 scripts/bench_tokenize_torch.py --model DIR --bench-out OUT --threads 2
Prints one JSON line with images/s and the share of unified ids equal to the Rust ones.
"""
import argparse
import json
import pathlib
import time

import torch
import torch.nn.functional as F

DT = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
      "U8": torch.uint8, "BF16": torch.bfloat16, "F16": torch.float16}


def read_safetensors(path):
    b = pathlib.Path(path).read_bytes()
    n = int.from_bytes(b[:8], "little")
    header = json.loads(b[8:8 + n])
    out = {}
    for k, t in header.items():
        if k == "__metadata__":
            continue
        lo, hi = t["data_offsets"]
        buf = bytearray(b[8 + n + lo:8 + n + hi])
        x = torch.frombuffer(buf, dtype=DT[t["dtype"]]) if hi > lo else torch.empty(0, dtype=DT[t["dtype"]])
        out[k] = x.reshape(t["shape"])
    return out


def l2n(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class EffNetTeacher:
    """EfficientNet-Lite0 (lukemelas names), eval-mode batch norms, up to the tap block."""
    STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
              (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]

    def __init__(self, w, features, eps=1e-3, channels_last=False):
        self.w, self.eps, self.channels_last = w, eps, channels_last
        want = {"stride8": 8, "stride16": 16}[features]
        self.blocks, stride, cin = [], 2, 32
        for k, s, e, out, r in self.STAGES:
            for i in range(r):
                st = s if i == 0 else 1
                stride *= st
                self.blocks.append((k, st, e, cin, out, stride))
                cin = out
        self.tap = max(i for i, b in enumerate(self.blocks) if b[5] == want)
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def bn(self, x, p):
        w = self.w
        return F.batch_norm(x, w[p + ".running_mean"], w[p + ".running_var"], w[p + ".weight"],
                            w[p + ".bias"], False, 0.0, self.eps)

    def to(self, dev):
        self.w = {k: v.to(dev) for k, v in self.w.items()}
        self.mean, self.std = self.mean.to(dev), self.std.to(dev)
        return self

    def __call__(self, x):
        w = self.w
        z = ((x + 1) * 0.5 - self.mean) / self.std
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        h = F.relu6(self.bn(F.conv2d(z, w["_conv_stem.weight"], stride=2, padding=1), "_bn0"))
        for i, (k, st, e, cin, out, _) in enumerate(self.blocks[:self.tap + 1]):
            p = f"_blocks.{i}."
            y = h
            if e != 1:
                y = F.relu6(self.bn(F.conv2d(y, w[p + "_expand_conv.weight"]), p + "_bn0"))
            mid = y.shape[1]
            y = F.relu6(self.bn(F.conv2d(y, w[p + "_depthwise_conv.weight"], stride=st, padding=k // 2,
                                         groups=mid), p + "_bn1"))
            y = self.bn(F.conv2d(y, w[p + "_project_conv.weight"]), p + "_bn2")
            h = y + h if (st == 1 and cin == out) else y
        return h.flatten(2).transpose(1, 2).contiguous()  # [B, N, C]


class SiglipTeacher:
    """SigLIP vision tower (HF SiglipVisionModel names), last (post-LN) or penultimate state."""

    def __init__(self, w, vision, layer, resize):
        self.w, self.c, self.layer, self.resize = w, vision, layer, resize

    def to(self, dev):
        self.w = {k: v.to(dev) for k, v in self.w.items()}
        return self

    def __call__(self, x):
        w, c = self.w, self.c
        if self.resize:
            x = F.interpolate(x, size=tuple(self.resize), mode="bilinear", align_corners=False)
        h = F.conv2d(x, w["embeddings.patch_embedding.weight"], w["embeddings.patch_embedding.bias"],
                     stride=c["patch_size"]).flatten(2).transpose(1, 2)
        h = h + w["embeddings.position_embedding.weight"]
        d, heads, eps = c["hidden_size"], c["num_attention_heads"], c["layer_norm_eps"]
        n_layers = c["num_hidden_layers"] - (1 if self.layer == "penultimate" else 0)
        act = "tanh" if c.get("hidden_act", "gelu_pytorch_tanh") == "gelu_pytorch_tanh" else "none"
        b, n, _ = h.shape
        for i in range(n_layers):
            p = f"encoder.layers.{i}."
            y = F.layer_norm(h, (d,), w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], eps)
            q, k, v = (F.linear(y, w[p + f"self_attn.{t}_proj.weight"], w[p + f"self_attn.{t}_proj.bias"])
                       .view(b, n, heads, d // heads).transpose(1, 2) for t in "qkv")
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
            h = h + F.linear(a, w[p + "self_attn.out_proj.weight"], w[p + "self_attn.out_proj.bias"])
            y = F.layer_norm(h, (d,), w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], eps)
            y = F.gelu(F.linear(y, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]), approximate=act)
            h = h + F.linear(y, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
        if self.layer == "last":
            h = F.layer_norm(h, (d,), w["post_layernorm.weight"], w["post_layernorm.bias"], eps)
        return h


class Encoder:
    def __init__(self, cfg, w, dev, channels_last=False):
        self.cfg = cfg
        sub = lambda pre: {k[len(pre):]: v.to(dev) for k, v in w.items() if k.startswith(pre)}
        t = cfg["teacher"]
        tw = sub("teacher.")
        if t["kind"] == "efficientnet-lite0":
            self.teacher = EffNetTeacher(tw, t["features"], channels_last=channels_last).to(dev)
        else:
            self.teacher = SiglipTeacher(tw, t["vision"], t["layer"], t["resize"]).to(dev)
        self.spc, self.pix = sub("spc."), sub("pixel.")
        m = cfg["model"]
        self.m, self.l2 = m["sghc"]["m"], m["sghc"]["l2_norm"]
        v = m["encoder"]["vit"]
        self.d, self.heads, self.eps, self.depth = v["hidden_size"], v["num_heads"], v["layer_norm_eps"], v["depth"]
        self.patch = m["encoder"]["patch_size"]
        cb = self.spc["quantize.embedding"]
        self.cc = (cb * cb).sum(-1)
        sc = self.pix["quantize.embedding"].float()
        self.sub = l2n(sc) if self.l2 else sc  # [K, m, D]
        self.semantic_only = cfg["decode_mode"] == "semantic_only"

    def vit(self, x):
        w, d, p = self.pix, self.d, self.patch
        b, c, hh, ww = x.shape
        g = hh // p
        pt = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)
        h = F.linear(pt, w["encoder.patch_embed.proj.weight"].reshape(d, -1), w["encoder.patch_embed.proj.bias"])
        h = h + w["encoder.pos_embed"]
        n = h.shape[1]
        for i in range(self.depth):
            q = f"encoder.blocks.{i}."
            y = F.layer_norm(h, (d,), w[q + "norm1.weight"], w[q + "norm1.bias"], self.eps)
            qkv = F.linear(y, w[q + "attn.qkv.weight"], w.get(q + "attn.qkv.bias"))
            qq, kk, vv = qkv.reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(qq, kk, vv).transpose(1, 2).reshape(b, n, d)
            h = h + F.linear(a, w[q + "attn.proj.weight"], w[q + "attn.proj.bias"])
            y = F.layer_norm(h, (d,), w[q + "norm2.weight"], w[q + "norm2.bias"], self.eps)
            y = F.gelu(F.linear(y, w[q + "mlp.fc1.weight"], w[q + "mlp.fc1.bias"]))
            h = h + F.linear(y, w[q + "mlp.fc2.weight"], w[q + "mlp.fc2.bias"])
        h = F.layer_norm(h, (d,), w["encoder.norm.weight"], w["encoder.norm.bias"], self.eps)
        return F.linear(h, w["encoder.proj.weight"], w["encoder.proj.bias"])

    def __call__(self, u8, bf16=False):
        x = u8.float() * (1.0 / 127.5) - 1.0
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            feats = self.teacher(x)
            s = self.spc
            hdn = torch.tanh(F.linear(feats, s["encode_task_layer.0.weight"], s["encode_task_layer.0.bias"]))
            z = F.linear(hdn, s["encode_task_layer.2.weight"], s["encode_task_layer.2.bias"]).float()
        b, n, d = z.shape
        z = l2n(z).reshape(b * n, d)
        k = torch.addmm(self.cc.unsqueeze(0), z * -2.0, s["quantize.embedding"].t()).argmin(-1)
        if self.semantic_only:
            return (k * self.m).reshape(b, n)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            zp = self.vit(x)
        zp = zp.float().reshape(b * n, -1)
        if self.l2:
            zp = l2n(zp)
        cand = self.sub.index_select(0, k)  # [M, m, D]
        j = ((zp.unsqueeze(1) - cand) ** 2).sum(-1).argmin(-1)
        return (k * self.m + j).reshape(b, n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bench-out", required=True, help="the --out of semhitok bench-tokenize")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the networks (CUDA)")
    ap.add_argument("--channels-last", action="store_true", help="EfficientNet teacher in channels-last")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    model = pathlib.Path(a.model)
    cfg = json.loads((model / "config.json").read_text())
    enc = Encoder(cfg, read_safetensors(model / "model.safetensors"), dev, a.channels_last)
    out = pathlib.Path(a.bench_out)
    x = read_safetensors(out / "inputs.safetensors")["images"].to(dev)
    rust_ids = read_safetensors(out / "ids.safetensors")["unified"].reshape(x.shape[0], -1)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(a.warmup):
            ids = enc(x, a.bf16)
        sync()
        times = []
        for _ in range(a.iters):
            t = time.perf_counter()
            ids = enc(x, a.bf16)
            sync()
            times.append(time.perf_counter() - t)
    times.sort()
    med, best = times[len(times) // 2], times[0]
    agree = (ids.cpu() == rust_ids).double().mean().item()
    r = {"impl": "pytorch eager", "torch": torch.__version__, "batch": x.shape[0],
         "image_size": x.shape[-1], "device": a.device, "threads": torch.get_num_threads(),
         "bf16": a.bf16, "channels_last": a.channels_last, "iters": a.iters, "median_s": med, "best_s": best,
         "images_per_s_median": x.shape[0] / med, "images_per_s_best": x.shape[0] / best,
         "unified_ids_equal_to_rust": agree}
    print(json.dumps(r))


if __name__ == "__main__":
    main()
