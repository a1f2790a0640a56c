"""PyTorch reference for guided text-to-image sampling speed (issue 18 §2), the loop of
LlamaGen's autoregressive/models/generate.py (written here, not copied): a Qwen2.5-3B-shaped
decoder with random bf16 weights and a preallocated KV cache, conditional and unconditional
prompts as one batch of 2B (left padded, masked), prefill, then one token per step for all 2B
rows; guided logits u + s (c - u); temperature / top-k / top-p; torch.multinomial. The head
has the visual rows only (LlamaGen's head is its image vocabulary; semhitok-mllm also multiplies
only the visual rows). One JSON line per batch size. Eager mode (no torch.compile).

Usage: python3 scripts/bench_t2i_torch.py --batches 16,64 --tokens 256 --cfg 5.0 --reps 3
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

N_VISUAL = 16384 * 12


class Block(torch.nn.Module):
    def __init__(s, d, ff, h, kv, hd):
        super().__init__()
        s.h, s.kv, s.hd = h, kv, hd
        s.n1 = torch.nn.RMSNorm(d, eps=1e-6)
        s.n2 = torch.nn.RMSNorm(d, eps=1e-6)
        s.qkv = torch.nn.Linear(d, (h + 2 * kv) * hd, bias=True)
        s.o = torch.nn.Linear(h * hd, d, bias=False)
        s.gu = torch.nn.Linear(d, 2 * ff, bias=False)
        s.down = torch.nn.Linear(ff, d, bias=False)

    def forward(s, x, cos, sin, kc, vc, pos, mask):
        b, l, _ = x.shape
        q, k, v = s.qkv(s.n1(x)).split([s.h * s.hd, s.kv * s.hd, s.kv * s.hd], -1)
        q = q.view(b, l, s.h, s.hd).transpose(1, 2)
        k = k.view(b, l, s.kv, s.hd).transpose(1, 2)
        v = v.view(b, l, s.kv, s.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        kc[:, :, pos : pos + l] = k
        vc[:, :, pos : pos + l] = v
        kk, vv = kc[:, :, : pos + l], vc[:, :, : pos + l]
        y = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, enable_gqa=True)
        x = x + s.o(y.transpose(1, 2).reshape(b, l, -1))
        g, u = s.gu(s.n2(x)).chunk(2, -1)
        return x + s.down(F.silu(g) * u)


def rope(x, cos, sin):
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Model(torch.nn.Module):
    def __init__(s, text_rows=151936, d=2048, ff=11008, layers=36, h=16, kv=2, hd=128):
        super().__init__()
        s.embed = torch.nn.Embedding(text_rows + N_VISUAL + 2, d)
        s.blocks = torch.nn.ModuleList([Block(d, ff, h, kv, hd) for _ in range(layers)])
        s.norm = torch.nn.RMSNorm(d, eps=1e-6)
        s.head = torch.nn.Linear(d, N_VISUAL, bias=False)  # the visual rows only
        s.kv, s.hd, s.start = kv, hd, text_rows
        s.inv = 1.0 / (1e6 ** (torch.arange(0, hd, 2).float() / hd))

    def setup(s, rows, cap, dev, dt):
        shape = (rows, s.kv, cap, s.hd)
        s.kc = [torch.zeros(shape, device=dev, dtype=dt) for _ in s.blocks]
        s.vc = [torch.zeros(shape, device=dev, dtype=dt) for _ in s.blocks]

    def forward(s, ids, pos, mask):
        x = s.embed(ids)
        t = torch.arange(pos, pos + ids.shape[1], device=ids.device).float()
        f = torch.outer(t, s.inv.to(ids.device))
        emb = torch.cat([f, f], -1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for blk, kc, vc in zip(s.blocks, s.kc, s.vc):
            x = blk(x, cos, sin, kc, vc, pos, mask)
        return s.head(s.norm(x[:, -1])).float()


def sample(logits, temperature, top_k, top_p):
    logits = logits / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, top_k)[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sl, si = torch.sort(logits, descending=True)
        cum = torch.cumsum(F.softmax(sl, -1), -1)
        rm = cum > top_p
        rm[..., 1:] = rm[..., :-1].clone()
        rm[..., 0] = False
        logits = logits.masked_fill(rm.scatter(1, si, rm), -math.inf)
    return torch.multinomial(F.softmax(logits, -1), 1)[:, 0]


@torch.no_grad()
def generate(m, b, p_tokens, n, cfg, args, dev):
    guided = cfg != 1.0
    rows = 2 * b if guided else b
    lp = p_tokens + 2
    ids = torch.randint(0, 151000, (rows, lp), device=dev)
    keep = torch.ones(rows, lp, dtype=torch.bool, device=dev)
    if guided:  # unconditional rows: [bos] <boi>, left padded
        keep[b:, : lp - 2] = False
    cap = lp + n
    m.setup(rows, cap, dev, torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    causal = torch.ones(cap, cap, dtype=torch.bool, device=dev).tril()
    full = causal.unsqueeze(0) & torch.cat([keep, torch.ones(rows, n, dtype=torch.bool, device=dev)], 1).unsqueeze(1)
    full = (full | torch.eye(cap, dtype=torch.bool, device=dev)).unsqueeze(1)  # [R, 1, cap, cap]
    logits = m(ids, 0, full[:, :, :lp, :lp])
    out = []
    for t in range(n):
        if guided:
            c, u = logits.split(b, 0)
            lg = u + cfg * (c - u)
        else:
            lg = logits
        tok = sample(lg, args.temperature, args.top_k, args.top_p)
        out.append(tok)
        if t + 1 < n:
            x = (tok + m.start).unsqueeze(1)
            if guided:
                x = torch.cat([x, x])
            pos = lp + t
            logits = step(m, x, pos, full[:, :, pos : pos + 1, : pos + 1])
    return torch.stack(out, 1).cpu()


def step(m, x, pos, mask):
    return m(x, pos, mask)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--prompt-tokens", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    kw = dict(d=64, ff=128, layers=2, h=4, kv=2, hd=16) if args.tiny else {}
    t0 = time.time()
    with torch.device(dev):
        m = Model(**kw)
    for p in m.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02)
    m = m.to(dt).eval()
    load_s = time.time() - t0
    for b in [int(x) for x in args.batches.split(",")]:
        best = math.inf
        for r in range(args.reps + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.time()
            ids = generate(m, b, args.prompt_tokens, args.tokens, args.cfg, args, dev)
            s = time.time() - t
            assert ids.shape == (b, args.tokens)
            if r > 0:
                best = min(best, s)
        print(json.dumps({
            "impl": f"pytorch {torch.__version__} eager (LlamaGen-style loop)",
            "shape": "tiny" if args.tiny else "qwen2.5-3b", "device": str(dev), "dtype": args.dtype,
            "batch": b, "tokens_per_image": args.tokens, "cfg": args.cfg,
            "rows": 2 * b if args.cfg != 1.0 else b, "seconds": best, "images_per_s": b / best,
            "tokens_per_s": b * args.tokens / best, "load_s": load_s,
        }), flush=True)


if __name__ == "__main__":
    main()
