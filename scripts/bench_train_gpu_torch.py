#!/usr/bin/env python3
"""PyTorch eager (or torch.compile) reference of `semhitok bench`, one tokenizer training stage at
paper size: the same model, batch, precision, losses, optimizer and FLOP formula as
`semhitok bench --config <cfg>` (crates/semhitok-train/src/bench.rs), for the side-by-side
images/s + MFU tables in docs/benchmarks/train-gpu.md.

`--stage` picks the stage (default `pre`); the model, batch, loss weights and AdamW settings are
read from the same TOML config the Rust bench reads (`--config`, default per stage; tomllib,
Python >= 3.11):

  spc         configs/paper-spc-256.toml
  pre         configs/paper-pre-vitb-256.toml
  decoder-ft  configs/paper-decoder-ft-vitl-256.toml
  joint       configs/paper-joint-256.toml

As `semhitok bench`, everything has random weights (no checkpoint is read) and one fixed synthetic
batch in [-1, 1] stays on the device. Common parts (mirroring semhitok-nn):
- teacher: frozen random-init SigLIP-L/16-256 vision tower (patch embedding as one GEMM over
  flattened 16x16 patches, learned positions, 24 pre-norm blocks 1024 wide, 16 heads, MLP 4096,
  tanh-GELU, post-LN: `last_hidden_state`), run without gradient;
- SPC head (VQKD `encode_task_layer`): Linear 1024->1024, Tanh, Linear 1024->32, l2-norm; nearest of
  the 16384 l2-normalized codes (`argmax z.c`, which for unit codes is the l2-nearest), straight-through;
- SPC semantic decoder: Linear 32->768, 3 pre-norm ViT blocks (768, 12 heads, erf-GELU) with learned
  positions and a final LN, Linear 768->768, Tanh, Linear 768->1024;
- pixel ViTs (timm blocks, qkv bias, LN eps 1e-6, erf-GELU, no class token): the encoder patchifies
  by one GEMM, runs the trunk and projects to D_pix = 8; the decoder embeds the fused codes
  linearly, runs its trunk and projects each token to 16*16*3 patch pixels (unpatchify);
- SGHC: each token's 8-d l2-normalized code is matched to the 12 l2-normalized sub-codes of its
  semantic id (fp32, autocast off), codebook loss mse(zq, sg[z]) + beta 0.25 commitment, straight-through.

Stages:
- `spc`: trains the SPC head and semantic decoder; loss = w_sem (1 - cos(recon, teacher)).mean()
  + beta mse(sg[zq], z) (beta = model.spc.commit_beta); after each optimizer step the codebook
  moves by VQKD's EMA (decay 0.99, Laplace eps 1e-5, re-normalized). Batch 512.
- `pre`: teacher, SPC head and codebook frozen; trains pixel encoder, SGHC codebook and a ViT-B/16
  decoder on [sem 32 | pix 8]; loss = w_rec L2 + codebook + commitment. Batch 32.
- `decoder-ft`: as `pre`, with the pixel encoder and SGHC codebook frozen too and a fresh ViT-L/16
  decoder (24 blocks, 1024, 16 heads) the only trained part. Batch 32.
- `joint` ("texture incorporation" baseline, fusion semantic_only): trains SPC head, semantic
  decoder and a ViT-B/16 pixel decoder reading the straight-through semantic codes (32-d); loss =
  spc's terms + w_rec L2; EMA codebook as `spc`. The pixel encoder and SGHC are not built (frozen
  and never run in this stage). Batch 32.
The SPC codebook of `spc`/`joint` is seeded from the head's outputs on the batch before the
warm-up (the stand-in for the k-means init the Rust bench runs in its warm-up steps; untimed).

Optimizer: AdamW over the trained parameters with the config's lr, betas, eps and weight decay
(decay on weight matrices only, as semhitok's `Role::Matrix`; one parameter group when the decay
is 0), grad clip `optim.grad_clip`, bf16 autocast, one `.item()` per step (the Rust loop reads its
losses once per step). The lr is constant (the Rust warmup+cosine schedule changes no cost). A
config whose discriminator or perceptual loss would run within the timed steps, or with weight
EMA or gradient accumulation, is refused (not mirrored here; none of the paper configs has one
active in a bench run: `pre`'s PatchGAN starts at step 20000).

FLOPs (matmul FLOPs only, as bench.rs: 2 * N * matmul-params per forward token plus 4 * N^2 * D per
attention layer; trained parts 3x (fwd + bwd), frozen parts 1x; the nearest-code searches are not
counted). With n = 256 tokens, pin = 16*16*3, vit(d, L, mlp) = L * (2n(4d^2 + 2 d mlp) + 4 n^2 d):
  teacher = vit(1024, 24, 4096) + 2n * pin * 1024
  head    = 2n * (1024*1024 + 1024*32)
  semdec  = 2n * 32*768 + vit(768, 3, 3072) + 2n * (768*768 + 768*1024)
  enc     = vit(768, 12, 3072) + 2n * pin * 768 + 2n * 768*8
  dec(din, d, L) = vit(d, L, 4d) + 2n * din * d + 2n * d * pin
  spc        = teacher + 3 * (head + semdec)
  pre        = teacher + head + 3 * (enc + dec(40, 768, 12))      (bench.rs `pre_flops_per_image`)
  decoder-ft = teacher + head + enc + 3 * dec(40, 1024, 24)
  joint      = teacher + 3 * (head + semdec + dec(32, 768, 12))
(the sizes are read from the config; `gflops_per_image` and `mfu` are printed for every stage).

Usage (on the GPU host; `--batch` defaults to the config's data.batch_size):
  python3 scripts/bench_train_gpu_torch.py --stage pre --batch 32 --steps 20 --warmup 5
  python3 scripts/bench_train_gpu_torch.py --stage pre --batch 32 --steps 20 --warmup 5 --compile
  python3 scripts/bench_train_gpu_torch.py --stage spc --steps 20 --warmup 5
  python3 scripts/bench_train_gpu_torch.py --stage decoder-ft --steps 20 --warmup 5
  python3 scripts/bench_train_gpu_torch.py --stage joint --steps 20 --warmup 5
Prints one JSON line. `--compile` is what a user adds for speed (issue 21's comparison):
`torch.compile(model)` (inductor, default mode) and `AdamW(fused=True)`; the warm-up steps include
the compilation. CPU smoke test: `--tiny --device cpu` (widths / 16, depths / 6, K / 64, 32 px
images of 8 px patches, batch 4; same structure).

Data-parallel (the reference of the multi-GPU runs), under torchrun, NCCL, `--batch` per GPU:
  torchrun --nproc-per-node N scripts/bench_train_gpu_torch.py --ddp overlap   # DistributedDataParallel
  torchrun --nproc-per-node N scripts/bench_train_gpu_torch.py --ddp flat      # one all-reduce
`overlap` is torch's DDP (25 MB gradient buckets all-reduced while backward runs); `flat` is what
the Rust trainer does: after backward, one all-reduce (average) of all gradients flattened into one
buffer, then clip + AdamW. The EMA statistics of `spc`/`joint` are summed over the ranks before the
update (as the Rust trainer's). Rank 0 prints the JSON line; images/s counts all ranks, MFU is per
GPU. With `--profile` the phases include `all_reduce` (flat mode) and `after_step` (the EMA).
"""
import argparse
import json
import math
import time
import tomllib
from dataclasses import dataclass, replace

import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

STAGE_CONFIGS = {
    "spc": "configs/paper-spc-256.toml",
    "pre": "configs/paper-pre-vitb-256.toml",
    "decoder-ft": "configs/paper-decoder-ft-vitl-256.toml",
    "joint": "configs/paper-joint-256.toml",
}


# --- sizes and settings, from the stage's TOML config -------------------------------------------

@dataclass(frozen=True)
class VitSize:
    d: int
    depth: int
    heads: int
    mlp: int


# teacher.kind -> (vision tower, patch side); the SigLIP configs of semhitok-nn siglip/config.rs.
TEACHERS = {"siglip-large-p16-256": (VitSize(1024, 24, 16, 4096), 16)}


@dataclass(frozen=True)
class Spec:
    stage: str
    image: int
    patch: int
    batch: int
    teacher: VitSize
    spc_hidden: int
    code_dim: int
    k: int
    spc_decoder: VitSize
    spc_beta: float
    ema_decay: float
    ema_eps: float
    encoder: VitSize
    decoder: VitSize
    m: int
    dpix: int
    sghc_beta: float
    rec: str
    rec_weight: float
    semantic_weight: float
    lr: float
    betas: tuple
    eps: float
    weight_decay: float
    grad_clip: float

    @property
    def tokens(self):
        return (self.image // self.patch) ** 2

    @property
    def patch_pixels(self):
        return self.patch * self.patch * 3


def vit_size(t):
    d = t["hidden_size"]
    return VitSize(d, t["depth"], t["num_heads"], int(d * t["mlp_ratio"]))


def read_config(path, stage):
    """The stage's TOML config (the Rust loader's defaults filled in where it has them)."""
    with open(path, "rb") as f:
        c = tomllib.load(f)
    if c["run"]["stage"] != stage:
        raise SystemExit(f"{path}: run.stage = {c['run']['stage']!r}, not --stage {stage}")
    return c


def check_mirrored(c, path, stage, timed_steps):
    """Refuse what this script does not mirror (each would change the Rust bench's step)."""
    m, loss, disc, optim, teacher = c["model"], c.get("loss", {}), c.get("disc", {}), c["optim"], c["teacher"]
    problems = []
    if teacher["kind"] not in TEACHERS:
        problems.append(f"teacher.kind = {teacher['kind']!r} (mirrored: {', '.join(TEACHERS)})")
    if teacher.get("siglip_layer", "last") != "last":
        problems.append("teacher.siglip_layer != \"last\"")
    want_fusion = "semantic_only" if stage == "joint" else "channel_concat"
    if stage != "spc" and m["fusion"] != want_fusion:
        problems.append(f"model.fusion = {m['fusion']!r} (mirrored for {stage}: {want_fusion!r})")
    if m["sghc"].get("update", "loss") != "loss" or not m["sghc"].get("l2_norm", True):
        problems.append("model.sghc: only update = \"loss\" with l2_norm = true is mirrored")
    if loss.get("perceptual", "none") != "none" and loss.get("perceptual_weight", 0.0) != 0.0:
        problems.append("a perceptual loss (loss.perceptual_weight > 0)")
    if disc.get("enabled", False) and disc.get("start_step", 0) < timed_steps:
        problems.append(f"the PatchGAN (disc.start_step = {disc.get('start_step', 0)} < {timed_steps} steps)")
    if optim.get("ema_decay") is not None:
        problems.append("optim.ema_decay (weight EMA)")
    if optim.get("accum_steps", 1) != 1:
        problems.append("optim.accum_steps != 1")
    enc, dec = m["encoder"], m["decoder"]
    tv, tp = TEACHERS.get(teacher["kind"], (None, None))
    if not (enc["image_size"] == dec["image_size"] == c["data"]["image_size"]
            and enc["patch_size"] == dec["patch_size"] == tp):
        problems.append("encoder, decoder and teacher must share image and patch size")
    if problems:
        raise SystemExit(f"{path}: not mirrored by this script: " + "; ".join(problems))


def spec_of(c, stage):
    m, loss, optim = c["model"], c.get("loss", {}), c["optim"]
    spc, sghc = m["spc"], m["sghc"]
    teacher, patch = TEACHERS[c["teacher"]["kind"]]
    return Spec(
        stage=stage,
        image=c["data"]["image_size"],
        patch=patch,
        batch=c["data"]["batch_size"],
        teacher=teacher,
        spc_hidden=spc["head_hidden"],
        code_dim=spc["code_dim"],
        k=spc["codebook_size"],
        spc_decoder=vit_size(spc["decoder"]),
        spc_beta=spc["commit_beta"],
        ema_decay=spc["ema"]["decay"],
        ema_eps=spc["ema"]["eps"],
        encoder=vit_size(m["encoder"]["vit"]),
        decoder=vit_size(m["decoder"]["vit"]),
        m=sghc["m"],
        dpix=sghc["dim"],
        sghc_beta=sghc["beta"],
        rec=loss.get("rec", "l2"),
        rec_weight=loss.get("rec_weight", 1.0),
        semantic_weight=loss.get("semantic_weight", 1.0),
        lr=optim["lr"],
        betas=tuple(optim["betas"]),
        eps=optim.get("eps", 1e-8),
        weight_decay=optim["weight_decay"],
        grad_clip=optim.get("grad_clip", 0.0),
    )


def shrink(v):
    """A ViT trunk with width / 16, depth / 6 and heads / 4 (MLP ratio kept): same structure."""
    heads = max(v.heads // 4, 1)
    d = max(v.d // 16 // heads, 1) * heads
    return VitSize(d, max(v.depth // 6, 1), heads, d * v.mlp // v.d)


def tiny(s):
    """`--tiny`: a CPU-sized model of the same structure (32 px images, 8 px patches: 16 tokens)."""
    return replace(
        s, image=32, patch=8, batch=4, teacher=shrink(s.teacher), spc_hidden=max(s.spc_hidden // 16, 8),
        k=max(s.k // 64, 16), spc_decoder=shrink(s.spc_decoder), encoder=shrink(s.encoder),
        decoder=shrink(s.decoder))


# --- layers ------------------------------------------------------------------------------------

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


def vit_of(v, n, act="gelu"):
    return Vit(v.d, v.depth, v.heads, v.mlp, n, act)


def patchify(img, p):
    b, c, h, w = img.shape
    x = img.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x, p, h, w):
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, p, p, 3).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, 3, h, w)


def weighted(w, t):
    """w * t, without the multiply when w is 1."""
    return t if w == 1.0 else w * t


def straight_through(z, zq):
    return z + (zq - z).detach()


# --- model parts (semhitok-nn) -----------------------------------------------------------------

class SiglipTeacher(nn.Module):
    """Frozen random-init SigLIP vision tower (siglip/mod.rs): patches [B, N, P*P*3] -> last_hidden_state."""

    def __init__(self, v, n, patch_pixels):
        super().__init__()
        self.embed = nn.Linear(patch_pixels, v.d)
        self.vit = vit_of(v, n, act="tanh")
        self.requires_grad_(False)

    def forward(self, x):
        with torch.no_grad():
            return self.vit(self.embed(x))


class SpcHead(nn.Module):
    """SPC `encode_task_layer` (spc.rs `encode_z`): teacher features -> l2-normalized codes, fp32."""

    def __init__(self, c_t, hidden, d):
        super().__init__()
        self.h0, self.h2 = nn.Linear(c_t, hidden), nn.Linear(hidden, d)

    def forward(self, f):
        return F.normalize(self.h2(torch.tanh(self.h0(f))).float(), dim=-1)


class SemCodebook(nn.Module):
    """The SPC codebook [K, D], l2-normalized; with `ema`, VQKD's EMA buffers and update (quantizer.rs)."""

    def __init__(self, k, d, ema=None):
        super().__init__()
        self.register_buffer("codes", F.normalize(torch.randn(k, d), dim=-1))
        self.ema = ema  # (decay, eps) or None: frozen
        if ema is not None:
            self.register_buffer("cluster_size", torch.zeros(k))
            self.register_buffer("embed_avg", self.codes.clone())

    def quantize(self, z):
        """z [B, N, D] (unit rows) -> ids [B*N], the nearest codes [B, N, D] (no gradient)."""
        ids = torch.argmax(z.reshape(-1, z.shape[-1]) @ self.codes.t(), dim=-1)
        return ids, self.codes[ids].reshape(z.shape)

    @torch.no_grad()
    def seed(self, z):
        """Codes from encoder outputs z [.., D] (stand-in for the k-means init of the Rust warm-up)."""
        flat = z.reshape(-1, z.shape[-1]).float()
        k, rows = self.codes.shape[0], flat.shape[0]
        idx = (torch.randperm(rows, device=flat.device)[:k] if rows >= k
               else torch.randint(rows, (k,), device=flat.device))
        self.codes.copy_(F.normalize(flat[idx], dim=-1))
        if dist.is_initialized():
            dist.broadcast(self.codes, 0)
        self.embed_avg.copy_(self.codes)
        self.cluster_size.zero_()

    @torch.no_grad()
    def ema_update(self, z, ids):
        """One EMA step from this batch's assignments (CodeStats + EmaCodebook::update)."""
        decay, eps = self.ema
        k, d = self.codes.shape
        z = z.reshape(-1, d).float()
        counts = torch.zeros(k, device=z.device).index_add_(0, ids, torch.ones_like(z[:, 0]))
        sums = torch.zeros(k, d, device=z.device).index_add_(0, ids, z)
        if dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + eps) / (n + k * eps) * n
        new = F.normalize(self.embed_avg / smoothed.unsqueeze(1), dim=-1)
        self.codes.copy_(torch.where((self.cluster_size > 0).unsqueeze(1), new, self.codes))


class SemanticDecoder(nn.Module):
    """SPC decoder (spc.rs `decode`): codes [B, N, D] -> teacher-space features [B, N, C_t]."""

    def __init__(self, d_code, v, n, c_t):
        super().__init__()
        self.embed = nn.Linear(d_code, v.d)
        self.trunk = vit_of(v, n)
        self.d0, self.d2 = nn.Linear(v.d, v.d), nn.Linear(v.d, c_t)

    def forward(self, q):
        return self.d2(torch.tanh(self.d0(self.trunk(self.embed(q)))))


class PixelEncoder(nn.Module):
    """ViT pixel encoder (vit.rs `VitEncoder`): patches -> [B, N, D_pix]."""

    def __init__(self, v, n, patch_pixels, d_out):
        super().__init__()
        self.embed = nn.Linear(patch_pixels, v.d)
        self.vit = vit_of(v, n)
        self.out = nn.Linear(v.d, d_out)

    def forward(self, x):
        return self.out(self.vit(self.embed(x)))


class PixelDecoder(nn.Module):
    """ViT pixel decoder (vit.rs `VitDecoder`): tokens [B, N, in_dim] -> images [B, 3, S, S]."""

    def __init__(self, d_in, v, s):
        super().__init__()
        self.embed = nn.Linear(d_in, v.d)
        self.vit = vit_of(v, s.tokens)
        self.out = nn.Linear(v.d, s.patch_pixels)
        self.size, self.patch = s.image, s.patch

    def forward(self, tokens):
        return unpatchify(self.out(self.vit(self.embed(tokens))), self.patch, self.size, self.size)


class Sghc(nn.Module):
    """SGHC (sghc.rs, `search_gather`): codebook [K, m, D_pix], trained by the codebook loss."""

    def __init__(self, k, m, d, beta):
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(k, m, d).uniform_(-1 / (k * m), 1 / (k * m)))
        self.beta = beta

    def forward(self, zp, ids):
        """zp [M, D] (unit rows, fp32), ids [M] semantic ids -> (q [M, D], codebook loss, commitment)."""
        with torch.autocast(zp.device.type, enabled=False):
            cand = F.normalize(self.codebook.float(), dim=-1)[ids]  # [M, m, D]
            dist = ((zp.unsqueeze(1) - cand) ** 2).sum(-1)
            j = dist.argmin(-1)
            zq = cand.gather(1, j.view(-1, 1, 1).expand(-1, 1, zp.shape[-1])).squeeze(1)
            l_cb = F.mse_loss(zq, zp.detach())
            l_commit = self.beta * F.mse_loss(zq.detach(), zp)
            return straight_through(zp, zq), l_cb, l_commit


def rec_loss(kind, rec, img):
    return (F.mse_loss if kind == "l2" else F.l1_loss)(rec.float(), img)


def semantic_losses(recon, f, z, zq, beta):
    """spc.rs `forward_t`: (1 - cos(recon, teacher)).mean() and beta * mse(sg[zq], z), fp32."""
    with torch.autocast(z.device.type, enabled=False):
        r, t = F.normalize(recon.float(), dim=-1), F.normalize(f.float(), dim=-1)
        cos = (1 - (r * t).sum(-1)).mean()
        return cos, weighted(beta, F.mse_loss(zq.detach(), z))


# --- the stages' models (crates/semhitok-train/src/stages/tasks.rs) ------------------------------

class Pre(nn.Module):
    """Stages `pre` and (`train_encoder=False`) `decoder-ft`: `PixelTask` over `SemHiTok::forward_t`."""

    def __init__(self, s, train_encoder=True):
        super().__init__()
        n = s.tokens
        self.patch, self.rec, self.rec_weight = s.patch, s.rec, s.rec_weight
        # frozen teacher + SPC
        self.teacher = SiglipTeacher(s.teacher, n, s.patch_pixels)
        self.head = SpcHead(s.teacher.d, s.spc_hidden, s.code_dim)
        self.sem = SemCodebook(s.k, s.code_dim)
        self.head.requires_grad_(False)
        # trained: encoder, SGHC codebook (pre only), decoder. The codebook is drawn after the
        # encoder but registered before it: the trained parameters' order (foreach chunks, DDP
        # buckets) is [codebook, encoder, decoder], as when the codebook was a root parameter.
        encoder = PixelEncoder(s.encoder, n, s.patch_pixels, s.dpix)
        self.sghc = Sghc(s.k, s.m, s.dpix, s.sghc_beta)
        self.encoder = encoder
        self.decoder = PixelDecoder(s.code_dim + s.dpix, s.decoder, s)
        if not train_encoder:
            self.encoder.requires_grad_(False)
            self.sghc.requires_grad_(False)

    def forward(self, img):
        b = img.shape[0]
        x = patchify(img, self.patch)
        with torch.no_grad():
            ids, sem = self.sem.quantize(self.head(self.teacher(x)))
        zp = F.normalize(self.encoder(x).float(), dim=-1).reshape(-1, self.sghc.codebook.shape[-1])
        q, l_cb, l_commit = self.sghc(zp, ids)
        fused = torch.cat([sem, q.reshape(b, -1, q.shape[-1])], -1)
        rec = self.decoder(fused)
        return weighted(self.rec_weight, rec_loss(self.rec, rec, img)) + l_cb + l_commit, None

    def after_step(self, stats):
        pass


class Spc(nn.Module):
    """Stage `spc`: `SpcTask` (teacher frozen; head + semantic decoder trained; EMA codebook)."""

    def __init__(self, s):
        super().__init__()
        self.patch, self.beta, self.semantic_weight = s.patch, s.spc_beta, s.semantic_weight
        self.teacher = SiglipTeacher(s.teacher, s.tokens, s.patch_pixels)
        self.head = SpcHead(s.teacher.d, s.spc_hidden, s.code_dim)
        self.sem = SemCodebook(s.k, s.code_dim, ema=(s.ema_decay, s.ema_eps))
        self.sem_decoder = SemanticDecoder(s.code_dim, s.spc_decoder, s.tokens, s.teacher.d)

    def encode_z(self, img):
        return self.head(self.teacher(patchify(img, self.patch)))

    def semantic(self, img):
        """-> (w_sem cos + commit, straight-through codes [B, N, D], EMA inputs (z, ids))."""
        f = self.teacher(patchify(img, self.patch))
        z = self.head(f)
        ids, zq = self.sem.quantize(z)
        q = straight_through(z, zq)
        cos, commit = semantic_losses(self.sem_decoder(q), f, z, q, self.beta)
        return weighted(self.semantic_weight, cos) + commit, q, (z.detach(), ids)

    def forward(self, img):
        loss, _, stats = self.semantic(img)
        return loss, stats

    def seed_codebook(self, img):
        with torch.no_grad():
            self.sem.seed(self.encode_z(img))

    def after_step(self, stats):
        self.sem.ema_update(*stats)


class Joint(Spc):
    """Stage `joint`: `spc` plus a pixel decoder on the straight-through semantic codes."""

    def __init__(self, s):
        super().__init__(s)
        self.rec, self.rec_weight = s.rec, s.rec_weight
        self.decoder = PixelDecoder(s.code_dim, s.decoder, s)

    def forward(self, img):
        loss, q, stats = self.semantic(img)
        rec = self.decoder(q)
        return loss + weighted(self.rec_weight, rec_loss(self.rec, rec, img)), stats


def build_model(s):
    if s.stage == "spc":
        return Spc(s)
    if s.stage == "joint":
        return Joint(s)
    return Pre(s, train_encoder=s.stage == "pre")


# --- FLOPs (bench.rs conventions) ----------------------------------------------------------------

def vit_flops(d, depth, n, mlp):
    return depth * (2 * n * (4 * d * d + 2 * d * mlp) + 4 * n * n * d)


def trunk_flops(v, n):
    return vit_flops(v.d, v.depth, n, v.mlp)


def part_flops(s):
    """Forward matmul FLOPs per image of each part."""
    n, pin, t = s.tokens, s.patch_pixels, s.teacher
    sd = s.spc_decoder
    fused = s.code_dim if s.stage == "joint" else s.code_dim + s.dpix
    return {
        "teacher": trunk_flops(t, n) + 2 * n * pin * t.d,
        "head": 2 * n * (t.d * s.spc_hidden + s.spc_hidden * s.code_dim),
        "semdec": 2 * n * s.code_dim * sd.d + trunk_flops(sd, n) + 2 * n * (sd.d * sd.d + sd.d * t.d),
        "enc": trunk_flops(s.encoder, n) + 2 * n * pin * s.encoder.d + 2 * n * s.encoder.d * s.dpix,
        "dec": trunk_flops(s.decoder, n) + 2 * n * fused * s.decoder.d + 2 * n * s.decoder.d * pin,
    }


def flops_per_image(s):
    p = part_flops(s)
    if s.stage == "spc":
        return p["teacher"] + 3 * (p["head"] + p["semdec"])
    if s.stage == "pre":
        return p["teacher"] + p["head"] + 3 * (p["enc"] + p["dec"])
    if s.stage == "decoder-ft":
        return p["teacher"] + p["head"] + p["enc"] + 3 * p["dec"]
    return p["teacher"] + 3 * (p["head"] + p["semdec"] + p["dec"])


# --- optimizer, timing -----------------------------------------------------------------------------

def make_optimizer(params, s, fused):
    """AdamW as the config says; weight decay on matrices only (semhitok's Role::Matrix)."""
    groups = params
    if s.weight_decay != 0.0:
        groups = [{"params": [p for p in params if p.ndim == 2], "weight_decay": s.weight_decay},
                  {"params": [p for p in params if p.ndim != 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay,
                             fused=fused)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=list(STAGE_CONFIGS), default="pre")
    ap.add_argument("--config", default=None, help="the stage's TOML config (default: the paper config of --stage)")
    ap.add_argument("--batch", type=int, default=None, help="default: the config's data.batch_size")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--precision", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--device", default="cuda", help="cuda | cpu (the CPU for --tiny smoke tests)")
    ap.add_argument("--tiny", action="store_true",
                    help="a CPU-sized model of the same structure (smoke test; batch 4 unless --batch)")
    ap.add_argument("--cuda-profiler-step", action="store_true",
                    help="then one step between cudaProfilerStart/Stop (for ncu --profile-from-start off)")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed run, time each phase with a sync at its end (phases_ms)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile(model) and AdamW(fused=True) (the warm-up steps compile)")
    ap.add_argument("--ddp", choices=["none", "overlap", "flat"], default="none",
                    help="data-parallel under torchrun (NCCL): DDP with bucketed overlap, or one flat all-reduce")
    a = ap.parse_args()
    path = a.config or STAGE_CONFIGS[a.stage]
    cfg = read_config(path, a.stage)
    check_mirrored(cfg, path, a.stage, max(a.steps, a.warmup))
    spec = spec_of(cfg, a.stage)
    if a.tiny:
        spec = tiny(spec)
    batch = a.batch or spec.batch
    world, rank = 1, 0
    if a.ddp != "none":
        dist.init_process_group("nccl")
        world, rank = dist.get_world_size(), dist.get_rank()
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.manual_seed(0)
    dev = torch.device("cuda", torch.cuda.current_device()) if a.device == "cuda" else torch.device(a.device)
    model = build_model(spec).to(dev)
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
    opt = make_optimizer(params, spec, True if a.compile else None)
    torch.manual_seed(rank)
    x = torch.rand(batch, 3, spec.image, spec.image, device=dev) * 2 - 1

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")

    if hasattr(model, "seed_codebook"):
        with autocast():
            model.seed_codebook(x)

    phases = {}

    def lap(name, t0, on):
        if not on:
            return t0
        sync(dev)
        t1 = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + (t1 - t0)
        return t1

    def step(prof=False):
        t0 = time.perf_counter()
        with autocast():
            loss, stats = fwd(x)
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
        torch.nn.utils.clip_grad_norm_(params, spec.grad_clip if spec.grad_clip > 0 else math.inf)
        t0 = lap("clip", t0, prof)
        opt.step()
        t0 = lap("optimizer", t0, prof)
        if stats is not None:
            model.after_step(stats)  # the SPC codebook's EMA step (the Rust task's after_step)
            lap("after_step", t0, prof)
        return loss.item()  # one sync per step, at the end (as the Rust trainer reads its losses)

    for _ in range(a.warmup):
        step()
    sync(dev)
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync(dev)
    dt = time.perf_counter() - t
    ips = a.steps * batch * world / dt
    if a.cuda_profiler_step and dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        step()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    if a.profile:
        for _ in range(a.steps):
            step(True)
    fpi = flops_per_image(spec)
    if rank != 0:
        dist.destroy_process_group()
        return
    print(json.dumps({
        "impl": f"pytorch {torch.__version__} " + ("compile" if a.compile else "eager")
        + ("" if a.ddp == "none" else f" ddp-{a.ddp}"),
        "world_size": world,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else dev.type,
        "precision": a.precision,
        "batch": batch,
        "steps": a.steps,
        "seconds": dt,
        "images_per_s": ips,
        "stage": a.stage,
        "gflops_per_image": fpi / 1e9,
        "peak_tflops": a.peak_tflops,
        "mfu": ips * fpi / (a.peak_tflops * 1e12 * world),
        "phases_ms": {k: 1e3 * v / a.steps for k, v in phases.items()} if a.profile else None,
    }))
    if a.ddp != "none":
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
