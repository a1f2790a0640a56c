//! Rotary position embeddings (HF `LlamaRotaryEmbedding` + `rotate_half` layout: the two halves
//! of each head are the two rotated coordinates).

use super::config::{LlamaConfig, RopeScaling};
use crate::error::Result;
use tch::{Device, Kind, Tensor};

/// Inverse frequencies `[head_dim / 2]` (f32), with Llama-3 rescaling when configured.
/// Computed as transformers does (`1 / theta^(arange(0, d, 2) / d)` in f32), so the angles match
/// it bit for bit.
pub fn inv_freq(cfg: &LlamaConfig, device: Device) -> Result<Tensor> {
    let d = cfg.head_dim;
    let exps = Tensor::f_arange_start_step(0, d, 2, (Kind::Int64, device))?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(d as f64)?;
    let base = Tensor::f_full([], cfg.rope_theta, (Kind::Float, device))?;
    let inv = base.f_pow(&exps)?.f_reciprocal()?;
    Ok(match cfg.rope_scaling {
        RopeScaling::Default => inv,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            // transformers `_compute_llama3_parameters`.
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let wavelen = inv
                .f_reciprocal()?
                .f_mul_scalar(2.0 * std::f64::consts::PI)?;
            let scaled = inv.f_div_scalar(factor)?;
            let inv_l = scaled.f_where_self(&wavelen.f_gt(low_wavelen)?, &inv)?;
            let smooth = wavelen
                .f_reciprocal()?
                .f_mul_scalar(old)?
                .f_sub_scalar(low_freq_factor)?
                .f_div_scalar(high_freq_factor - low_freq_factor)?;
            let one_minus = smooth.f_neg()?.f_add_scalar(1.0)?;
            let smoothed = one_minus
                .f_mul(&inv_l.f_div_scalar(factor)?)?
                .f_add(&smooth.f_mul(&inv_l)?)?;
            let medium = wavelen
                .f_lt(high_wavelen)?
                .f_logical_not()?
                .f_logical_and(&wavelen.f_gt(low_wavelen)?.f_logical_not()?)?;
            smoothed.f_where_self(&medium, &inv_l)?
        }
    })
}

/// `(cos, sin)` for positions `[B, L]` (int64): each `[B, 1, L, head_dim]` in `kind`.
pub fn cos_sin(inv_freq: &Tensor, positions: &Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
    // [B, L, 1] * [D/2] -> [B, L, D/2]
    let freqs = positions
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(-1)?
        .f_mul(inv_freq)?;
    let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(1)?; // [B, 1, L, D]
    Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
}

/// x: [B, H, L, D] -> x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.size()[3];
    let x1 = x.f_narrow(3, 0, d / 2)?;
    let x2 = x.f_narrow(3, d / 2, d / 2)?;
    let rot = Tensor::f_cat(&[&x2.f_neg()?, &x1], 3)?;
    Ok(x.f_mul(cos)?.f_add(&rot.f_mul(sin)?)?)
}
