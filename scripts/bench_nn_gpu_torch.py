"""PyTorch eager reference of crates/semhitok-nn/examples/bench_stage2.rs: the SAME SemHiTok stage-2
training step (same dims, same ops, same measurement), to put next to the tch numbers in
docs/benchmarks/nn-gpu.md.

Model (SemHiTokConfig::paper_256 in the Rust crate): random-weight SigLIP-L/16 teacher at 256 px
(transformers SiglipVisionModel, sdpa attention, last hidden state after post_layernorm, no pooling head)
under no_grad -> frozen SPC head (Linear 1024-1024, Tanh, Linear 1024-32) + l2-normalized nearest code of a
[16384, 32] codebook (fp32, autocast off) -> ViT-B/16 pixel encoder (timm Blocks, learned pos_embed, final
LayerNorm, Linear 768->8) -> SGHC ([16384, 12, 8] codebook, l2-normalized, gather of the 12 candidates, fp32)
-> channel concat [32 | 8] -> ViT-B/16 pixel decoder (Linear 40->768, pos_embed, 12 Blocks, LayerNorm,
Linear 768->768 = 16*16*3, unpatchify). Generator loss = MSE + codebook + 0.25 commitment + 0.1 * hinge G loss
of a taming PatchGAN (ndf 64, 3 layers, BatchNorm in train mode); AdamW (lr 1e-4, betas 0.9/0.95, wd 0.05)
on encoder + pixel codebook and on the decoder; then a discriminator hinge step. bf16 autocast on CUDA.

Timing: warm-up steps untimed; the clock covers `steps` steps and ends after torch.cuda.synchronize().
peak_mem_gb = total - free from cudaMemGetInfo (torch.cuda.mem_get_info) after the timed steps, exactly
what the Rust binary reports; max_allocated_gb / max_reserved_gb are PyTorch's allocator counters.

Run on the H200:  python3 scripts/bench_nn_gpu_torch.py --size paper --batch 32 --steps 10 --warmup 3
CPU smoke check:  PYTHONPATH=.pytools:.libtorch python3 scripts/bench_nn_gpu_torch.py --size tiny --batch 2 --steps 2 --warmup 1
Prints one JSON line {"impl": "torch", "step_ms", "peak_mem_gb", "imgs_per_s", ...}.
"""
import argparse
import json
import time
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

p = argparse.ArgumentParser()
p.add_argument("--size", default="paper", choices=["paper", "tiny"])
p.add_argument("--batch", type=int, default=32)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--teacher", default="siglip", choices=["siglip", "features"])
p.add_argument("--disc", default="on", choices=["on", "off"])
p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
args = p.parse_args()

dev = torch.device("cuda" if (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())) else "cpu")
cuda = dev.type == "cuda"
torch.manual_seed(0)

if args.size == "paper":
    S, P, WIDTH, DEPTH, HEADS = 256, 16, 768, 12, 12
    CT, K, DS, M, DP = 1024, 16384, 32, 12, 8
    sig = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=256, patch_size=16)
else:  # SemHiTokConfig::tiny(32, 8, 64, 64, 4)
    S, P, WIDTH, DEPTH, HEADS = 32, 8, 32, 2, 2
    CT, K, DS, M, DP = 64, 64, 8, 4, 4
    sig = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
G = S // P
N = G * G


def blocks(width, depth, heads):
    return nn.ModuleList([Block(width, heads, 4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth)])


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, WIDTH, P, P)
        self.pos_embed = nn.Parameter(torch.randn(1, N, WIDTH) * 0.02)
        self.blocks = blocks(WIDTH, DEPTH, HEADS)
        self.norm = nn.LayerNorm(WIDTH, eps=1e-6)
        self.proj = nn.Linear(WIDTH, DP)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for b in self.blocks:
            x = b(x)
        return self.proj(self.norm(x))


class Decoder(nn.Module):
    def __init__(self, din):
        super().__init__()
        self.embed = nn.Linear(din, WIDTH)
        self.pos_embed = nn.Parameter(torch.randn(1, N, WIDTH) * 0.02)
        self.blocks = blocks(WIDTH, DEPTH, HEADS)
        self.norm = nn.LayerNorm(WIDTH, eps=1e-6)
        self.head = nn.Linear(WIDTH, P * P * 3)

    def forward(self, t):
        x = self.embed(t) + self.pos_embed
        for b in self.blocks:
            x = b(x)
        x = self.head(self.norm(x))
        b = x.shape[0]
        return x.reshape(b, G, G, P, P, 3).permute(0, 5, 1, 3, 2, 4).reshape(b, 3, S, S)


def nlayer(ndf=64, n_layers=3):
    seq = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers):
        prev, mult = mult, min(2 ** n, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
    prev, mult = mult, min(2 ** n_layers, 8)
    seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
    seq += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
    return nn.Sequential(*seq)


teacher = None
if args.teacher == "siglip":
    teacher = SiglipVisionModel(SiglipVisionConfig(vision_use_head=False, attn_implementation="sdpa", **sig)).to(dev).eval().requires_grad_(False)
spc_head = nn.Sequential(nn.Linear(CT, CT), nn.Tanh(), nn.Linear(CT, DS)).to(dev).requires_grad_(False)
spc_codebook = F.normalize(torch.randn(K, DS, device=dev), dim=-1)
encoder = Encoder().to(dev)
pix_codebook = nn.Parameter(F.normalize(torch.rand(K, M, DP, device=dev) * 2 / (K * M) - 1 / (K * M), dim=-1))
decoder = Decoder(DS + DP).to(dev)
disc = nlayer().to(dev)
adamw = dict(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, eps=1e-8)
opt_pix = torch.optim.AdamW(list(encoder.parameters()) + [pix_codebook], **adamw)
opt_dec = torch.optim.AdamW(decoder.parameters(), **adamw)
opt_disc = torch.optim.AdamW(disc.parameters(), **adamw)
images = torch.rand(args.batch, 3, S, S, device=dev) * 2 - 1
feats_fixed = torch.randn(args.batch, N, CT, device=dev)


def autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)


def fp32():
    return torch.autocast("cuda", enabled=False)


def step():
    with torch.no_grad():
        if teacher is not None:
            with autocast():
                feats = teacher(pixel_values=images).last_hidden_state
            feats = feats.float()
        else:
            feats = feats_fixed
        # frozen SPC: head + nearest l2-normalized code (fp32)
        with autocast():
            z = spc_head(feats)
        with fp32():
            z = F.normalize(z.float(), dim=-1).reshape(-1, DS)
            d = (spc_codebook ** 2).sum(-1)[None] - 2 * z @ spc_codebook.t()
            sem = d.argmin(-1)
            sem_codes = spc_codebook[sem].reshape(args.batch, N, DS)
        if not torch.isfinite(z).all():
            raise RuntimeError("non-finite SPC input")
    with autocast():
        zp = encoder(images)
    if not torch.isfinite(zp).all():
        raise RuntimeError("non-finite SGHC input")
    with fp32():
        zf = F.normalize(zp.float().reshape(-1, DP), dim=-1)
        cand = F.normalize(pix_codebook, dim=-1)[sem]  # [BN, m, D]
        j = ((zf[:, None] - cand) ** 2).sum(-1).argmin(-1)
        zq = cand.gather(1, j[:, None, None].expand(-1, 1, DP)).squeeze(1)
        loss_cb = F.mse_loss(zq, zf.detach())
        loss_commit = 0.25 * F.mse_loss(zq.detach(), zf)
        q = (zf + (zq - zf).detach()).reshape(args.batch, N, DP)
        fused = torch.cat([sem_codes, q], -1)
    with autocast():
        recon = decoder(fused)
        loss = F.mse_loss(recon.float(), images) + loss_cb + loss_commit
        if args.disc == "on":
            loss = loss + 0.1 * (-disc(recon).float().mean())
    opt_pix.zero_grad(set_to_none=False)
    opt_dec.zero_grad(set_to_none=False)
    loss.backward()
    opt_pix.step()
    opt_dec.step()
    if args.disc == "on":
        with autocast():
            real = disc(images).float()
            fake = disc(recon.detach()).float()
            d_loss = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
        opt_disc.zero_grad(set_to_none=False)
        d_loss.backward()
        opt_disc.step()
    return loss.item()


for _ in range(args.warmup):
    step()
if cuda:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
last = 0.0
for _ in range(args.steps):
    last = step()
if cuda:
    torch.cuda.synchronize()
secs = time.perf_counter() - t0
step_ms = secs * 1e3 / max(args.steps, 1)
res = {
    "impl": "torch",
    "size": args.size,
    "device": str(dev),
    "batch": args.batch,
    "image_size": S,
    "teacher": args.teacher,
    "disc": args.disc == "on",
    "autocast_bf16": cuda,
    "steps": args.steps,
    "step_ms": step_ms,
    "peak_mem_gb": None,
    "imgs_per_s": args.batch * 1e3 / step_ms,
    "last_loss": last,
    "torch": torch.__version__,
}
if cuda:
    free, total = torch.cuda.mem_get_info()
    res["peak_mem_gb"] = (total - free) / 2 ** 30
    res["max_allocated_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    res["max_reserved_gb"] = torch.cuda.max_memory_reserved() / 2 ** 30
print(json.dumps(res))
