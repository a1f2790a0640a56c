//! ViT pixel encoder and pixel decoder of SemHiTok's pixel branch (paper Sec. 3.2, "Implement
//! Details": ViT-Base encoder and decoder, ViT-Large decoder for the decoder fine-tune stage).
//!
//! Blocks mirror timm's `VisionTransformer` (timm 1.0 `timm/models/vision_transformer.py`: pre-norm
//! `Block` with `norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`, exact-erf GELU, no
//! class token, learned `pos_embed [1, N, C]`), so the weight names are timm's. The encoder ends with a
//! final `norm` and a linear projection `proj` to the code space (D_pix); the decoder starts with a
//! linear `embed` from the fused code dimension to its width, runs blocks, `norm`, a linear `head`
//! to `patch * patch * 3` values per token and unpatchifies (LlamaGen/ViT-VQGAN style).
//! Golden test: `tests/nn/vit.rs` against `scripts/fixtures/vit.py`.

use crate::error::{Error, Result};
use crate::layers::{
    attention, patch_embed_gemm, split_qkv, Conv2d, LayerNorm, Linear, LinearInit,
};
use crate::role::Role;
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

/// Transformer trunk of a ViT: width, depth, heads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Token width C.
    pub hidden_size: i64,
    /// Number of blocks.
    pub depth: i64,
    /// Attention heads (must divide `hidden_size`).
    pub num_heads: i64,
    /// MLP hidden width = `mlp_ratio * hidden_size`.
    pub mlp_ratio: f64,
    /// LayerNorm epsilon (timm: 1e-6).
    pub layer_norm_eps: f64,
    /// Bias on the qkv projection (timm default: true).
    pub qkv_bias: bool,
}

impl VitConfig {
    /// ViT-Tiny: 192 wide, 12 blocks, 3 heads.
    pub fn tiny() -> Self {
        Self::custom(192, 12, 3)
    }
    /// ViT-Small: 384 wide, 12 blocks, 6 heads.
    pub fn small() -> Self {
        Self::custom(384, 12, 6)
    }
    /// ViT-Base: 768 wide, 12 blocks, 12 heads (the paper's pixel encoder and decoder).
    pub fn base() -> Self {
        Self::custom(768, 12, 12)
    }
    /// ViT-Large: 1024 wide, 24 blocks, 16 heads (the paper's fine-tuned decoder).
    pub fn large() -> Self {
        Self::custom(1024, 24, 16)
    }
    /// Any size (tests use e.g. `custom(16, 2, 2)`), mlp_ratio 4, eps 1e-6, qkv bias.
    pub fn custom(hidden_size: i64, depth: i64, num_heads: i64) -> Self {
        Self {
            hidden_size,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            layer_norm_eps: 1e-6,
            qkv_bias: true,
        }
    }

    fn mlp_hidden(&self) -> i64 {
        (self.hidden_size as f64 * self.mlp_ratio) as i64
    }

    /// Checks widths and heads.
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.hidden_size <= 0 || self.depth < 0 || self.num_heads <= 0 {
            return Err(Error::Config(format!(
                "{what}: hidden_size {}, depth {}, num_heads {} must be positive",
                self.hidden_size, self.depth, self.num_heads
            )));
        }
        if self.hidden_size % self.num_heads != 0 {
            return Err(Error::Config(format!(
                "{what}: num_heads {} does not divide hidden_size {}",
                self.num_heads, self.hidden_size
            )));
        }
        if self.mlp_hidden() <= 0 {
            return Err(Error::Config(format!(
                "{what}: mlp_ratio {} gives an empty MLP",
                self.mlp_ratio
            )));
        }
        Ok(())
    }
}

fn linear_init(p: nn::Path<'_>, i: i64, o: i64, bias: bool) -> Linear {
    Linear::new(p, i, o, bias, LinearInit::Vit)
}

/// Multi-head self-attention (timm `Attention`): `qkv`, `proj`.
#[derive(Debug)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: i64,
}

impl Attention {
    fn new(p: nn::Path<'_>, cfg: &VitConfig) -> Self {
        let c = cfg.hidden_size;
        Self {
            qkv: linear_init(&p / "qkv", c, 3 * c, cfg.qkv_bias),
            proj: linear_init(&p / "proj", c, c, true),
            num_heads: cfg.num_heads,
        }
    }

    /// xs: [B, N, C] -> [B, N, C]
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let [q, k, v] = split_qkv(&self.qkv.forward(xs)?, self.num_heads)?;
        self.proj.forward(&attention(&q, &k, &v)?)
    }
}

/// timm `Mlp`: `fc1`, GELU (erf), `fc2`.
#[derive(Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

/// Pre-norm transformer block (timm `Block`), weight names `norm1`, `attn.*`, `norm2`, `mlp.*`.
#[derive(Debug)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    /// Block under `p` (e.g. `vs / "blocks" / 3`).
    pub fn new(p: nn::Path<'_>, cfg: &VitConfig) -> Self {
        let c = cfg.hidden_size;
        let h = cfg.mlp_hidden();
        Self {
            norm1: LayerNorm::new(&p / "norm1", c, cfg.layer_norm_eps),
            attn: Attention::new(&p / "attn", cfg),
            norm2: LayerNorm::new(&p / "norm2", c, cfg.layer_norm_eps),
            mlp: Mlp {
                fc1: linear_init(&p / "mlp" / "fc1", c, h, true),
                fc2: linear_init(&p / "mlp" / "fc2", h, c, true),
            },
        }
    }

    /// xs: [B, N, C] -> [B, N, C]
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (s, m) = self.forward_pending(xs, None)?;
        Ok(s.f_add(&m)?)
    }

    /// The block on the residual stream `x + pending` (`pending`: the previous block's MLP
    /// output, not added yet) with its own last residual add left pending: `(s, m)`, the block's
    /// output being `s + m`. A chain of blocks so puts each residual add in front of the norm
    /// that follows it, where the fused norm ([`LayerNorm::add_forward_for_gemm`]) does both; the
    /// values are those of [`Self::forward`] chained (the same adds, in the same order).
    /// x, pending, s, m: [B, N, C]
    pub fn forward_pending(
        &self,
        x: &Tensor,
        pending: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (x, n1) = match pending {
            Some(d) => self.norm1.add_forward_for_gemm(x, d)?,
            None => (x.shallow_clone(), self.norm1.forward_for_gemm(x)?),
        };
        let a = self.attn.forward(&n1)?;
        let (s, n2) = self.norm2.add_forward_for_gemm(&x, &a)?;
        let h = self.mlp.fc1.forward_gelu(&n2)?;
        Ok((s, self.mlp.fc2.forward(&h)?))
    }
}

/// A stack of blocks plus learned position embedding `pos_embed [1, N, C]` and final `norm`.
#[derive(Debug)]
pub struct Trunk {
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    num_tokens: i64,
    hidden: i64,
}

impl Trunk {
    /// `pos_embed`, `blocks.{i}.*`, `norm.*` under `p`.
    pub fn new(p: &nn::Path<'_>, cfg: &VitConfig, num_tokens: i64) -> Self {
        let pos_embed = Role::Plain.on(p).var(
            "pos_embed",
            &[1, num_tokens, cfg.hidden_size],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(p / "blocks" / i, cfg))
            .collect();
        Self {
            pos_embed,
            blocks,
            norm: LayerNorm::new(p / "norm", cfg.hidden_size, cfg.layer_norm_eps),
            num_tokens,
            hidden: cfg.hidden_size,
        }
    }

    /// xs: [B, N, C] (N = the configured token count) -> [B, N, C], normed.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match xs.size().as_slice() {
            &[_, n, c] if n == self.num_tokens && c == self.hidden => {}
            _ => {
                return Err(Error::shape(
                    "transformer tokens",
                    format!("[B, {}, {}]", self.num_tokens, self.hidden),
                    xs,
                ))
            }
        }
        let mut h = xs.f_add(&self.pos_embed)?;
        let mut pending: Option<Tensor> = None;
        for b in &self.blocks {
            let (s, m) = b.forward_pending(&h, pending.as_ref())?;
            (h, pending) = (s, Some(m));
        }
        match pending {
            Some(m) => self.norm.forward(&h.f_add(&m)?),
            None => self.norm.forward(&h),
        }
    }
}

/// Pixel encoder configuration: images [B, 3, S, S] -> codes [B, (S/P)^2, out_dim].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitEncoderConfig {
    /// Square input side S in pixels (must be a multiple of `patch_size`).
    pub image_size: i64,
    /// Patch side P.
    pub patch_size: i64,
    /// Input channels (3).
    pub in_channels: i64,
    /// Transformer trunk.
    pub vit: VitConfig,
    /// Output code dimension (D_pix).
    pub out_dim: i64,
}

impl VitEncoderConfig {
    /// ViT-B/16 at 256 px (16 x 16 grid) projecting to `out_dim`: the paper's pixel encoder.
    pub fn base_256(out_dim: i64) -> Self {
        Self {
            image_size: 256,
            patch_size: 16,
            in_channels: 3,
            vit: VitConfig::base(),
            out_dim,
        }
    }

    /// Token grid side S / P.
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Checks sizes.
    pub fn validate(&self) -> Result<()> {
        self.vit.validate("pixel encoder")?;
        check_patch("pixel encoder", self.image_size, self.patch_size)?;
        if self.in_channels <= 0 || self.out_dim <= 0 {
            return Err(Error::Config(format!(
                "pixel encoder: in_channels {} and out_dim {} must be positive",
                self.in_channels, self.out_dim
            )));
        }
        Ok(())
    }

    /// Builds the encoder under `p` (weights `patch_embed.proj.*`, `pos_embed`, `blocks.*`, `norm.*`, `proj.*`).
    pub fn init(&self, p: &nn::Path<'_>) -> Result<VitEncoder> {
        self.validate()?;
        let patch_embed = Conv2d::new(
            p / "patch_embed" / "proj",
            self.in_channels,
            self.vit.hidden_size,
            self.patch_size,
            nn::ConvConfig {
                stride: self.patch_size,
                ..Default::default()
            },
        );
        let g = self.grid();
        Ok(VitEncoder {
            patch_embed,
            trunk: Trunk::new(p, &self.vit, g * g),
            proj: linear_init(p / "proj", self.vit.hidden_size, self.out_dim, true),
            cfg: self.clone(),
        })
    }
}

fn check_patch(what: &str, image_size: i64, patch: i64) -> Result<()> {
    if patch <= 0 || image_size <= 0 || image_size % patch != 0 {
        return Err(Error::Config(format!(
            "{what}: image_size {image_size} must be a positive multiple of patch_size {patch}"
        )));
    }
    Ok(())
}

/// ViT pixel encoder (patchify conv, learned position embedding, pre-norm blocks, norm, projection).
#[derive(Debug)]
pub struct VitEncoder {
    patch_embed: Conv2d,
    trunk: Trunk,
    proj: Linear,
    cfg: VitEncoderConfig,
}

impl VitEncoder {
    /// The configuration it was built from.
    pub fn config(&self) -> &VitEncoderConfig {
        &self.cfg
    }

    /// images: [B, C_in, S, S] (float, [-1, 1]) -> features [B, (S/P)^2, out_dim] (row-major grid).
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        match images.size().as_slice() {
            &[_, ch, h, w]
                if ch == c.in_channels
                    && h == c.image_size
                    && w == c.image_size
                    && images.is_floating_point() => {}
            _ => {
                return Err(Error::shape(
                    "pixel encoder images (float)",
                    format!("[B, {}, {}, {}]", c.in_channels, c.image_size, c.image_size),
                    images,
                ))
            }
        }
        let x = patch_embed_gemm(
            images,
            &self.patch_embed.ws,
            self.patch_embed.bs.as_ref(),
            c.patch_size,
        )?; // [B, N, C]
        let x = self.trunk.forward(&x)?;
        self.proj.forward(&x)
    }
}

/// Pixel decoder configuration: tokens [B, T*N, in_dim] -> images [B, 3, S, S], N = (S/P)^2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitDecoderConfig {
    /// Output side S in pixels.
    pub image_size: i64,
    /// Patch side P.
    pub patch_size: i64,
    /// Output channels (3).
    pub out_channels: i64,
    /// Transformer trunk.
    pub vit: VitConfig,
    /// Input token dimension (the fused code dimension).
    pub in_dim: i64,
    /// Token groups T along the length (1; 2 for length-concatenation fusion). The decoder
    /// attends over all T*N tokens and reads pixels from the last group of N.
    pub groups: i64,
}

impl VitDecoderConfig {
    /// ViT-B/16 decoder at 256 px from `in_dim`-wide tokens (the paper's stage-2 decoder).
    pub fn base_256(in_dim: i64) -> Self {
        Self {
            image_size: 256,
            patch_size: 16,
            out_channels: 3,
            vit: VitConfig::base(),
            in_dim,
            groups: 1,
        }
    }

    /// ViT-L/16 decoder at 256 px (the paper's decoder fine-tune stage).
    pub fn large_256(in_dim: i64) -> Self {
        Self {
            vit: VitConfig::large(),
            ..Self::base_256(in_dim)
        }
    }

    /// Token grid side S / P.
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Checks sizes.
    pub fn validate(&self) -> Result<()> {
        self.vit.validate("pixel decoder")?;
        check_patch("pixel decoder", self.image_size, self.patch_size)?;
        if self.out_channels <= 0 || self.in_dim <= 0 || self.groups <= 0 {
            return Err(Error::Config(format!(
                "pixel decoder: out_channels {}, in_dim {}, groups {} must be positive",
                self.out_channels, self.in_dim, self.groups
            )));
        }
        Ok(())
    }

    /// Builds the decoder under `p` (weights `embed.*`, `pos_embed`, `blocks.*`, `norm.*`, `head.*`).
    pub fn init(&self, p: &nn::Path<'_>) -> Result<VitDecoder> {
        self.validate()?;
        let g = self.grid();
        let c = self.vit.hidden_size;
        Ok(VitDecoder {
            embed: linear_init(p / "embed", self.in_dim, c, true),
            trunk: Trunk::new(p, &self.vit, self.groups * g * g),
            head: linear_init(
                p / "head",
                c,
                self.patch_size * self.patch_size * self.out_channels,
                true,
            ),
            cfg: self.clone(),
        })
    }
}

/// ViT pixel decoder (linear embed, learned position embedding, blocks, norm, linear to patch
/// pixels, unpatchify).
#[derive(Debug)]
pub struct VitDecoder {
    embed: Linear,
    trunk: Trunk,
    head: Linear,
    cfg: VitDecoderConfig,
}

impl VitDecoder {
    /// The configuration it was built from.
    pub fn config(&self) -> &VitDecoderConfig {
        &self.cfg
    }

    /// Weight of the last layer (`head.weight` `[P*P*3, C]`), for the GAN adaptive weight.
    pub fn last_layer_weight(&self) -> &Tensor {
        &self.head.ws
    }

    /// tokens: [B, T*N, in_dim] -> images [B, 3, S, S] (unbounded; trained towards [-1, 1]).
    /// Patch pixels are laid out `(p1, p2, c)` per token, as `einops 'b (h w) (p1 p2 c) -> b c (h p1) (w p2)'`.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let g = c.grid();
        let n = g * g;
        match tokens.size().as_slice() {
            &[_, t, d] if t == c.groups * n && d == c.in_dim => {}
            _ => {
                return Err(Error::shape(
                    "pixel decoder tokens",
                    format!("[B, {}, {}]", c.groups * n, c.in_dim),
                    tokens,
                ))
            }
        }
        let b = tokens.size()[0];
        let x = self.trunk.forward(&self.embed.forward(tokens)?)?;
        let x = if c.groups > 1 {
            x.f_narrow(1, (c.groups - 1) * n, n)?
        } else {
            x
        };
        let x = self.head.forward(&x)?; // [B, N, P*P*C]
        let p = c.patch_size;
        let img = x
            .f_reshape([b, g, g, p, p, c.out_channels])?
            .f_permute([0, 5, 1, 3, 2, 4])? // [B, C, g, P, g, P]
            .f_reshape([b, c.out_channels, g * p, g * p])?;
        Ok(img)
    }
}
