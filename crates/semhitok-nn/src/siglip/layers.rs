//! The blocks of the SigLIP vision tower: MLP, attention (q/k/v or fused), encoder layer and the
//! multihead-attention pooling head.

use super::config::{HiddenAct, SiglipVisionConfig};
use crate::error::{Error, Result};
use crate::layers::{attention, split_heads, LayerNorm, Linear, LinearInit};
use crate::role::Role;
use tch::nn;
use tch::Tensor;

#[derive(Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: HiddenAct,
}

impl Mlp {
    pub(super) fn new(cfg: &SiglipVisionConfig, vs: nn::Path<'_>) -> Self {
        let c = LinearInit::Default;
        Self {
            fc1: Linear::new(&vs / "fc1", cfg.hidden_size, cfg.intermediate_size, true, c),
            fc2: Linear::new(&vs / "fc2", cfg.intermediate_size, cfg.hidden_size, true, c),
            act: cfg.hidden_act,
        }
    }

    /// xs: [B, N, D] -> [B, N, D]
    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(xs)?)?)
    }
}

#[derive(Debug)]
pub(super) struct Attention {
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
    pub(super) fn new(cfg: &SiglipVisionConfig, vs: nn::Path<'_>) -> Self {
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
    pub(super) fn fuse(&mut self) -> Result<()> {
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
    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
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
pub(super) struct EncoderLayer {
    layer_norm1: LayerNorm,
    pub(super) self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    pub(super) fn new(cfg: &SiglipVisionConfig, vs: nn::Path<'_>) -> Self {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Self {
            layer_norm1: LayerNorm::new(&vs / "layer_norm1", d, eps),
            self_attn: Attention::new(cfg, &vs / "self_attn"),
            layer_norm2: LayerNorm::new(&vs / "layer_norm2", d, eps),
            mlp: Mlp::new(cfg, &vs / "mlp"),
        }
    }

    /// xs: [B, N, D] -> [B, N, D]
    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = xs.f_add(&self.self_attn.forward(&self.layer_norm1.forward(xs)?)?)?;
        Ok(xs.f_add(&self.mlp.forward(&self.layer_norm2.forward(&xs)?)?)?)
    }

    /// The same layer for frozen use with each residual add fused into the norm after it
    /// ([`LayerNorm::add_forward`]): `xs` the residual stream, `normed` = `layer_norm1(xs)`, `next`
    /// the next layer's `layer_norm1`. Returns (the residual stream after the layer, `next` of
    /// it) with `next`, else (None, the residual stream). xs, normed: [B, N, D] -> [B, N, D]
    pub(super) fn forward_prenormed(
        &self,
        xs: &Tensor,
        normed: &Tensor,
        next: Option<&LayerNorm>,
    ) -> Result<(Option<Tensor>, Tensor)> {
        let a = self.self_attn.forward(normed)?;
        let (xs, h) = self.layer_norm2.add_forward(xs, Some(&a), true)?;
        let xs = xs.ok_or_else(|| Error::Config("add_forward dropped the kept sum".into()))?;
        let m = self.mlp.forward(&h)?;
        match next {
            Some(n) => n.add_forward(&xs, Some(&m), true),
            None => Ok((None, xs.f_add(&m)?)),
        }
    }

    /// This layer's first norm (the fused path applies it to the stream before the layer).
    pub(super) fn norm1(&self) -> &LayerNorm {
        &self.layer_norm1
    }
}

/// `SiglipMultiheadAttentionPoolingHead`: a learned probe attends over the tokens (torch
/// `nn.MultiheadAttention`, packed `in_proj_weight`).
#[derive(Debug)]
pub(super) struct PoolingHead {
    probe: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: Linear,
    layernorm: LayerNorm,
    mlp: Mlp,
    heads: i64,
}

impl PoolingHead {
    pub(super) fn new(cfg: &SiglipVisionConfig, vs: nn::Path<'_>) -> Self {
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
    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
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
