//! SigLIP vision tower, the paper's semantic teacher (SemHiTok Sec. 4.1 uses SigLIP ViT-L/16 at 256 px),
//! in the Hugging Face `SiglipVisionModel` layout so `model.safetensors` loads strictly.
//!
//! Mirrors transformers 5.24.0 `models/siglip/modeling_siglip.py` (`SiglipVisionEmbeddings`,
//! `SiglipEncoderLayer`, `SiglipMultiheadAttentionPoolingHead`). Inputs whose patch grid differs from
//! the configured one get HF's `interpolate_pos_encoding=True` behaviour (bicubic resize of the
//! position table), so non-square images work. Golden test: `tests/nn/siglip.rs`.

mod config;
mod layers;
mod teacher;

pub use config::{HiddenAct, SiglipLayer, SiglipVisionConfig};
pub use teacher::SiglipTeacher;

use crate::error::{Error, Result};
use crate::layers::{Conv2d, LayerNorm};
use crate::role::Role;
use crate::weights::{load_strict, LoadOptions};
use layers::{EncoderLayer, PoolingHead};
use std::path::Path;
use tch::nn;
use tch::Tensor;

/// HF `SiglipVisionTransformer`: variables are named as the keys under `vision_model.` of a checkpoint
/// (`embeddings.patch_embedding.weight`, `encoder.layers.0.self_attn.q_proj.weight`, ...);
/// [`load_siglip_weights`] strips that prefix when the file has it.
#[derive(Debug)]
pub struct SiglipVisionModel {
    cfg: SiglipVisionConfig,
    patch_embedding: Conv2d,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    head: Option<PoolingHead>,
}

/// Hidden states of one forward.
#[derive(Debug)]
pub struct SiglipVisionOutput {
    /// [B, N, D] after `post_layernorm`.
    pub last_hidden_state: Tensor,
    /// [B, N, D] output of layer `num_hidden_layers - 2` (HF `hidden_states[-2]`); for a one-layer
    /// model, the embeddings.
    pub penultimate: Tensor,
    /// [B, D] attention-pooled output when the config has the head.
    pub pooler_output: Option<Tensor>,
}

impl SiglipVisionModel {
    /// For frozen use: run each layer's q/k/v projections as one GEMM over stacked copies of their
    /// weights (same result up to rounding; tested). Call again after changing the weights (e.g.
    /// after converting them to bf16): the stacked copies do not follow them.
    pub fn fuse_qkv(&mut self) -> Result<()> {
        self.layers.iter_mut().try_for_each(|l| l.self_attn.fuse())
    }

    fn new(cfg: &SiglipVisionConfig, vs: nn::Path<'_>) -> Result<Self> {
        cfg.validate()?;
        let emb = &vs / "embeddings";
        let conv = nn::ConvConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let grid = cfg.image_size / cfg.patch_size;
        let enc = &vs / "encoder" / "layers";
        Ok(Self {
            patch_embedding: Conv2d::new(
                &emb / "patch_embedding",
                cfg.num_channels,
                cfg.hidden_size,
                cfg.patch_size,
                conv,
            ),
            position_embedding: Role::Plain.on(&(&emb / "position_embedding")).var(
                "weight",
                &[grid * grid, cfg.hidden_size],
                nn::Init::Randn {
                    mean: 0.,
                    stdev: 1.,
                },
            ),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::new(cfg, &enc / i))
                .collect(),
            post_layernorm: LayerNorm::new(
                &vs / "post_layernorm",
                cfg.hidden_size,
                cfg.layer_norm_eps,
            ),
            head: cfg
                .vision_use_head
                .then(|| PoolingHead::new(cfg, &vs / "head")),
            cfg: cfg.clone(),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &SiglipVisionConfig {
        &self.cfg
    }

    /// Patch grid (gh, gw) for an `h x w` input.
    pub fn grid(&self, h: i64, w: i64) -> (i64, i64) {
        (h / self.cfg.patch_size, w / self.cfg.patch_size)
    }

    /// Position table [1, gh * gw, D]; bicubic-interpolated (align_corners = false) from the
    /// configured square grid when (gh, gw) differs, like HF's `interpolate_pos_encoding`.
    fn positions(&self, gh: i64, gw: i64) -> Result<Tensor> {
        let s = self.cfg.image_size / self.cfg.patch_size;
        let d = self.cfg.hidden_size;
        if (gh, gw) == (s, s) {
            return Ok(self.position_embedding.f_unsqueeze(0)?);
        }
        let p = self
            .position_embedding
            .f_reshape([1, s, s, d])?
            .f_permute([0, 3, 1, 2])?
            .f_upsample_bicubic2d([gh, gw], false, None, None)?;
        Ok(p.f_permute([0, 2, 3, 1])?.f_reshape([1, gh * gw, d])?)
    }

    /// pixel_values: [B, C, H, W] SigLIP-normalized (mean = std = 0.5, i.e. [-1, 1]) with H and W
    /// multiples of `patch_size` -> [B, N, D] tokens after `layers` encoder layers, then the
    /// post-layernorm if `post`.
    fn embed_and_encode(&self, pixel_values: &Tensor, layers: usize, post: bool) -> Result<Tensor> {
        let p = self.cfg.patch_size;
        let ok = match pixel_values.size().as_slice() {
            &[_, c, h, w] => {
                c == self.cfg.num_channels && h % p == 0 && w % p == 0 && h > 0 && w > 0
            }
            _ => false,
        };
        if !ok {
            return Err(Error::Shape {
                what: "siglip pixel_values".into(),
                expected: format!(
                    "[B, {}, H, W] with H and W multiples of {p}",
                    self.cfg.num_channels
                ),
                got: pixel_values.size(),
            });
        }
        let (_, _, h, w) = pixel_values.size4()?;
        // The patch conv as a GEMM: [B, N, D], contiguous, so the residual stream is too.
        let xs = crate::layers::patch_embed_gemm(
            &pixel_values.f_to_kind(self.position_embedding.kind())?,
            &self.patch_embedding.ws,
            self.patch_embedding.bs.as_ref(),
            p,
        )?;
        let xs = xs.f_add(&self.positions(h / p, w / p)?)?;
        encode(
            &xs,
            &self.layers[..layers],
            post.then_some(&self.post_layernorm),
        )
    }

    /// pixel_values: [B, C, H, W] (mean = std = 0.5 normalized) -> all outputs.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<SiglipVisionOutput> {
        let n = self.layers.len();
        let penultimate = self.embed_and_encode(pixel_values, n.saturating_sub(1), false)?;
        let last = match self.layers.last() {
            Some(l) => l.forward(&penultimate)?,
            None => penultimate.shallow_clone(),
        };
        let last_hidden_state = self.post_layernorm.forward(&last)?;
        let pooler_output = match &self.head {
            Some(h) => Some(h.forward(&last_hidden_state)?),
            None => None,
        };
        Ok(SiglipVisionOutput {
            last_hidden_state,
            penultimate,
            pooler_output,
        })
    }

    /// pixel_values: [B, C, H, W] -> [B, N, D], computing only the layers `layer` needs.
    pub fn hidden_state(&self, pixel_values: &Tensor, layer: SiglipLayer) -> Result<Tensor> {
        let n = self.layers.len();
        match layer {
            SiglipLayer::Penultimate => {
                self.embed_and_encode(pixel_values, n.saturating_sub(1), false)
            }
            SiglipLayer::Last => self.embed_and_encode(pixel_values, n, true),
        }
    }
}

/// xs [B, N, D] through `layers` and then `post` (if any), each residual add inside the stack
/// fused with the norm that follows it ([`LayerNorm::add_forward`]; LibTorch's ops where that
/// kernel does not apply, the same ops as the layers' own `forward`). `post` itself runs as
/// [`LayerNorm::forward`], so the output keeps the precision the unfused tower gives (fp32 under
/// autocast: the SPC stage's cosine target). -> [B, N, D]
fn encode(xs: &Tensor, layers: &[EncoderLayer], post: Option<&LayerNorm>) -> Result<Tensor> {
    let mut xs = xs.shallow_clone();
    if let Some(first) = layers.first() {
        let (_, mut normed) = first.norm1().add_forward(&xs, None, false)?;
        for (i, layer) in layers.iter().enumerate() {
            let next = layers.get(i + 1).map(EncoderLayer::norm1);
            let (stream, out) = layer.forward_prenormed(&xs, &normed, next)?;
            match (stream, next) {
                (Some(s), Some(_)) => {
                    xs = s;
                    normed = out;
                }
                (None, None) => xs = out,
                _ => {
                    return Err(Error::Config(
                        "siglip encoder: a layer lost the residual stream".into(),
                    ))
                }
            }
        }
    }
    match post {
        Some(n) => n.forward(&xs),
        None => Ok(xs),
    }
}

/// Load `path` into `vs` strictly; a full SigLIP checkpoint (keys `vision_model.*`, plus a text tower
/// and `logit_*` that are ignored) is recognised by the prefix.
pub fn load_siglip_weights(vs: &mut nn::VarStore, path: &Path) -> Result<()> {
    match load_strict(vs, path, &LoadOptions::default()) {
        Err(Error::Checkpoint { missing, .. }) if missing.len() == vs.variables().len() => {
            let opts = LoadOptions {
                strip_prefix: Some("vision_model."),
                allow_unexpected: true,
            };
            load_strict(vs, path, &opts)
        }
        r => r,
    }
}
