//! SigLIP vision tower, the paper's semantic teacher (SemHiTok Sec. 4.1 uses SigLIP ViT-L/16 at 256 px),
//! in the Hugging Face `SiglipVisionModel` layout so `model.safetensors` loads strictly.
//!
//! Mirrors transformers 5.24.0 `models/siglip/modeling_siglip.py` (`SiglipVisionEmbeddings`,
//! `SiglipEncoderLayer`, `SiglipMultiheadAttentionPoolingHead`). Inputs whose patch grid differs from
//! the configured one get HF's `interpolate_pos_encoding=True` behaviour (bicubic resize of the
//! position table), so non-square images work. Golden test: `tests/nn/siglip.rs`.

use crate::error::{Error, Result};
use crate::layers::{attention, split_heads, Conv2d, LayerNorm, Linear, LinearInit};
use crate::role::Role;
use crate::teacher::{check_images, sorted_variables, Teacher};
use crate::weights::{load_strict, load_strict_tensors, LoadOptions};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn;
use tch::{Device, Tensor};

/// Activation of the MLPs, spelled as HF's `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// `gelu_pytorch_tanh`: GELU with the tanh approximation (SigLIP's).
    #[serde(rename = "gelu_pytorch_tanh")]
    GeluPytorchTanh,
    /// `gelu`: exact (erf) GELU.
    #[serde(rename = "gelu")]
    Gelu,
}

impl HiddenAct {
    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            HiddenAct::GeluPytorchTanh => xs.f_gelu("tanh")?,
            HiddenAct::Gelu => xs.f_gelu("none")?,
        })
    }
}

/// `SiglipVisionConfig` with HF's field names and HF's defaults (those of google/siglip-base-patch16-224),
/// so both a `SiglipVisionModel` config.json and the `vision_config` of a full SigLIP config.json parse.
// https://github.com/huggingface/transformers/blob/main/src/transformers/models/siglip/configuration_siglip.py
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SiglipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
    /// Whether the checkpoint has the attention-pooling `head.*` tensors.
    pub vision_use_head: bool,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: HiddenAct::GeluPytorchTanh,
            layer_norm_eps: 1e-6,
            vision_use_head: true,
        }
    }
}

impl SiglipVisionConfig {
    /// google/siglip-large-patch16-256 (the paper's teacher): 1024-d, 24 layers, 16 x 16 grid at 256 px.
    pub fn siglip_large_patch16_256() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 256,
            patch_size: 16,
            ..Self::default()
        }
    }

    /// google/siglip-so400m-patch14-384: 1152-d, 27 layers, 27 x 27 grid at 384 px.
    pub fn siglip_so400m_patch14_384() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            image_size: 384,
            patch_size: 14,
            ..Self::default()
        }
    }

    /// Parse an HF config.json: either a `SiglipVisionModel` config or a full `SiglipModel` config
    /// (its `vision_config` is used).
    pub fn from_json_str(json: &str) -> std::result::Result<Self, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_str(json)?;
        match v.get("vision_config") {
            Some(vc) => serde_json::from_value(vc.clone()),
            None => serde_json::from_value(v),
        }
    }

    /// [`Self::from_json_str`] on a file, errors naming the file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::from_json_str(&s).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            msg: format!("not a SigLIP vision config: {e}"),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sizes that the model cannot work with are a [`Error::Config`].
    pub fn validate(&self) -> Result<()> {
        let pos = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_channels", self.num_channels),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
        ];
        if let Some((k, v)) = pos.iter().find(|(_, v)| *v <= 0) {
            return Err(Error::Config(format!("siglip {k} = {v} must be positive")));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(Error::Config(format!(
                "siglip hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.image_size % self.patch_size != 0 {
            return Err(Error::Config(format!(
                "siglip image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        Ok(())
    }

    /// Create the variables under `vs` (HF names) and return the model.
    pub fn init(&self, vs: nn::Path<'_>) -> Result<SiglipVisionModel> {
        SiglipVisionModel::new(self, vs)
    }
}

/// Which hidden state a teacher returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiglipLayer {
    /// `last_hidden_state`: output of the last layer after `post_layernorm`.
    Last,
    /// `hidden_states[-2]`: output of the second-to-last layer, without `post_layernorm` (LLaVA's choice).
    Penultimate,
}

#[derive(Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: HiddenAct,
}

impl Mlp {
    fn new(cfg: &SiglipVisionConfig, vs: nn::Path<'_>) -> Self {
        let c = LinearInit::Default;
        Self {
            fc1: Linear::new(&vs / "fc1", cfg.hidden_size, cfg.intermediate_size, true, c),
            fc2: Linear::new(&vs / "fc2", cfg.intermediate_size, cfg.hidden_size, true, c),
            act: cfg.hidden_act,
        }
    }

    /// xs: [B, N, D] -> [B, N, D]
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(xs)?)?)
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: i64,
    /// `q_proj`, `k_proj`, `v_proj` stacked into one [3 D, D] weight and [3 D] bias, for frozen
    /// use (see [`SiglipVisionModel::fuse_qkv`]): one GEMM instead of three.
    fused: Option<(Tensor, Tensor)>,
}

impl Attention {
    fn new(cfg: &SiglipVisionConfig, vs: nn::Path<'_>) -> Self {
        let (d, c) = (cfg.hidden_size, LinearInit::Default);
        Self {
            q_proj: Linear::new(&vs / "q_proj", d, d, true, c),
            k_proj: Linear::new(&vs / "k_proj", d, d, true, c),
            v_proj: Linear::new(&vs / "v_proj", d, d, true, c),
            out_proj: Linear::new(&vs / "out_proj", d, d, true, c),
            heads: cfg.num_attention_heads,
            fused: None,
        }
    }

    /// Stack the current q/k/v weights into `fused` (copies: later changes to them are not seen).
    fn fuse(&mut self) -> Result<()> {
        let _g = tch::no_grad_guard();
        let bias = |l: &Linear| {
            l.bs.as_ref()
                .map(|b| b.shallow_clone())
                .ok_or_else(|| Error::Config("siglip attention projections have biases".into()))
        };
        let w = Tensor::f_cat(&[&self.q_proj.ws, &self.k_proj.ws, &self.v_proj.ws], 0)?;
        let b = Tensor::f_cat(
            &[
                bias(&self.q_proj)?,
                bias(&self.k_proj)?,
                bias(&self.v_proj)?,
            ],
            0,
        )?;
        self.fused = Some((w, b));
        Ok(())
    }

    /// xs: [B, N, D] -> [B, N, D]
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let [q, k, v] = match &self.fused {
            Some((w, b)) => crate::layers::split_qkv(&xs.f_linear(w, Some(b))?, self.heads)?,
            None => [
                split_heads(&self.q_proj.forward(xs)?, self.heads)?,
                split_heads(&self.k_proj.forward(xs)?, self.heads)?,
                split_heads(&self.v_proj.forward(xs)?, self.heads)?,
            ],
        };
        self.out_proj.forward(&attention(&q, &k, &v)?)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    fn new(cfg: &SiglipVisionConfig, vs: nn::Path<'_>) -> Self {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Self {
            layer_norm1: LayerNorm::new(&vs / "layer_norm1", d, eps),
            self_attn: Attention::new(cfg, &vs / "self_attn"),
            layer_norm2: LayerNorm::new(&vs / "layer_norm2", d, eps),
            mlp: Mlp::new(cfg, &vs / "mlp"),
        }
    }

    /// xs: [B, N, D] -> [B, N, D]
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = xs.f_add(&self.self_attn.forward(&self.layer_norm1.forward(xs)?)?)?;
        Ok(xs.f_add(&self.mlp.forward(&self.layer_norm2.forward(&xs)?)?)?)
    }
}

/// `SiglipMultiheadAttentionPoolingHead`: a learned probe attends over the tokens (torch
/// `nn.MultiheadAttention`, packed `in_proj_weight`).
#[derive(Debug)]
struct PoolingHead {
    probe: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: Linear,
    layernorm: LayerNorm,
    mlp: Mlp,
    heads: i64,
}

impl PoolingHead {
    fn new(cfg: &SiglipVisionConfig, vs: nn::Path<'_>) -> Self {
        let d = cfg.hidden_size;
        let att = &vs / "attention";
        Self {
            probe: Role::Plain.on(&vs).var(
                "probe",
                &[1, 1, d],
                nn::Init::Randn {
                    mean: 0.,
                    stdev: 1.,
                },
            ),
            in_proj_weight: Role::Matrix.on(&att).var(
                "in_proj_weight",
                &[3 * d, d],
                nn::init::DEFAULT_KAIMING_UNIFORM,
            ),
            in_proj_bias: Role::MatrixBias.on(&att).zeros("in_proj_bias", &[3 * d]),
            out_proj: Linear::new(&att / "out_proj", d, d, true, LinearInit::Default),
            layernorm: LayerNorm::new(&vs / "layernorm", d, cfg.layer_norm_eps),
            mlp: Mlp::new(cfg, &vs / "mlp"),
            heads: cfg.num_attention_heads,
        }
    }

    /// xs: [B, N, D] -> [B, D]
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, _, d) = xs.size3()?;
        let w = self.in_proj_weight.f_split(d, 0)?;
        let bias = self.in_proj_bias.f_split(d, 0)?;
        let probe = self.probe.f_expand([b, 1, d], false)?;
        let q = split_heads(&probe.f_linear(&w[0], Some(&bias[0]))?, self.heads)?;
        let k = split_heads(&xs.f_linear(&w[1], Some(&bias[1]))?, self.heads)?;
        let v = split_heads(&xs.f_linear(&w[2], Some(&bias[2]))?, self.heads)?;
        let h = self.out_proj.forward(&attention(&q, &k, &v)?)?;
        let h = h.f_add(&self.mlp.forward(&self.layernorm.forward(&h)?)?)?;
        Ok(h.f_select(1, 0)?)
    }
}

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
    /// multiples of `patch_size` -> [B, N, D] tokens after `layers` encoder layers (no post-layernorm).
    fn embed_and_encode(&self, pixel_values: &Tensor, layers: usize) -> Result<Tensor> {
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
        let mut xs = xs.f_add(&self.positions(h / p, w / p)?)?;
        for layer in &self.layers[..layers] {
            xs = layer.forward(&xs)?;
        }
        Ok(xs)
    }

    /// pixel_values: [B, C, H, W] (mean = std = 0.5 normalized) -> all outputs.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<SiglipVisionOutput> {
        let n = self.layers.len();
        let penultimate = self.embed_and_encode(pixel_values, n.saturating_sub(1))?;
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
            SiglipLayer::Penultimate => self.embed_and_encode(pixel_values, n.saturating_sub(1)),
            SiglipLayer::Last => self
                .post_layernorm
                .forward(&self.embed_and_encode(pixel_values, n)?),
        }
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

/// Where [`SiglipTeacher`]'s weights come from.
enum SiglipWeights<'a> {
    File(&'a Path),
    Tensors(Vec<(String, Tensor)>, &'a Path),
}

/// SigLIP as a frozen [`Teacher`]: [-1, 1] images are already SigLIP-normalized
/// ((x01 - 0.5) / 0.5); an optional fixed `resize` (bilinear, no antialias) brings inputs to a size the
/// patch grid divides (e.g. 384 for so400m-patch14).
#[derive(Debug)]
pub struct SiglipTeacher {
    // Keeps the variables alive (the model holds shallow copies).
    _vs: nn::VarStore,
    model: SiglipVisionModel,
    layer: SiglipLayer,
    resize: Option<(i64, i64)>,
    /// Built by [`SiglipTeacher::random_init`] (no checkpoint).
    random: bool,
}

impl SiglipTeacher {
    /// Build from `cfg` on `device` and load `weights` (model.safetensors of a SiglipVisionModel or a full
    /// SigLIP checkpoint) strictly; variables are frozen.
    pub fn load(
        cfg: &SiglipVisionConfig,
        weights: &Path,
        device: Device,
        layer: SiglipLayer,
        resize: Option<(i64, i64)>,
    ) -> Result<Self> {
        Self::build(
            cfg,
            Some(SiglipWeights::File(weights)),
            device,
            layer,
            resize,
        )
    }

    /// From tensors already read, named as the vision tower's VarStore (no `vision_model.`
    /// prefix), strictly; `origin` names them in errors.
    pub fn from_tensors(
        cfg: &SiglipVisionConfig,
        tensors: Vec<(String, Tensor)>,
        origin: &Path,
        device: Device,
        layer: SiglipLayer,
        resize: Option<(i64, i64)>,
    ) -> Result<Self> {
        let w = SiglipWeights::Tensors(tensors, origin);
        Self::build(cfg, Some(w), device, layer, resize)
    }

    /// The same tower with random weights (frozen): for benchmarks, where only shapes and FLOPs
    /// matter and no real checkpoint is reachable offline.
    pub fn random_init(
        cfg: &SiglipVisionConfig,
        device: Device,
        layer: SiglipLayer,
        resize: Option<(i64, i64)>,
    ) -> Result<Self> {
        Self::build(cfg, None, device, layer, resize)
    }

    fn build(
        cfg: &SiglipVisionConfig,
        weights: Option<SiglipWeights<'_>>,
        device: Device,
        layer: SiglipLayer,
        resize: Option<(i64, i64)>,
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let mut model = cfg.init(vs.root())?;
        let random = weights.is_none();
        match weights {
            Some(SiglipWeights::File(w)) => load_siglip_weights(&mut vs, w)?,
            Some(SiglipWeights::Tensors(t, origin)) => {
                load_strict_tensors(&mut vs, t, origin, &LoadOptions::default())?;
            }
            None => {}
        }
        vs.freeze();
        model.fuse_qkv()?;
        Ok(Self {
            _vs: vs,
            model,
            layer,
            resize,
            random,
        })
    }

    /// The wrapped model.
    pub fn model(&self) -> &SiglipVisionModel {
        &self.model
    }
}

impl Teacher for SiglipTeacher {
    /// images: [B, 3, H, W] in [-1, 1] -> [B, gh * gw, hidden_size]
    fn features(&self, images: &Tensor) -> Result<Tensor> {
        check_images("siglip teacher", images)?;
        tch::no_grad(|| {
            let x = match self.resize {
                Some((h, w)) => images.f_upsample_bilinear2d([h, w], false, None, None)?,
                None => images.shallow_clone(),
            };
            self.model.hidden_state(&x, self.layer)
        })
    }

    fn dim(&self) -> i64 {
        self.model.cfg.hidden_size
    }

    fn grid(&self, h: i64, w: i64) -> (i64, i64) {
        let (h, w) = self.resize.unwrap_or((h, w));
        self.model.grid(h, w)
    }

    fn variables(&self) -> Vec<(String, Tensor)> {
        sorted_variables(&self._vs)
    }

    fn name(&self) -> &str {
        if self.random {
            "siglip-random-init"
        } else {
            "siglip"
        }
    }

    fn bf16_weights(&mut self) -> Result<()> {
        crate::teacher::vars_to_bf16(&self._vs)?;
        self.model.fuse_qkv()
    }
}
