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

/// `(cos, sin)` for positions `[B, L]` (int64): each `[B, L, 1, head_dim]` in `kind`, for
/// [`apply`] on heads laid out `[B, L, H, D]` (queries and keys side by side). `sin`'s first
/// half is negated: that is `rotate_half`'s sign, moved from the activations (per layer, twice)
/// to this table (once per forward), so [`apply`] needs one roll where it needed a negation and
/// a concatenation.
pub fn cos_sin(inv_freq: &Tensor, positions: &Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
    // [B, L, 1] * [D/2] -> [B, L, D/2]
    let freqs = positions
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(-1)?
        .f_mul(inv_freq)?;
    let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(2)?; // [B, L, 1, D]
    let half = freqs.size()[2];
    let s = emb.f_sin()?;
    let sin = Tensor::f_cat(
        &[s.f_narrow(3, 0, half)?.f_neg()?, s.f_narrow(3, half, half)?],
        3,
    )?;
    Ok((emb.f_cos()?.f_to_kind(kind)?, sin.f_to_kind(kind)?))
}

/// x: [B, L, H, D] -> x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1), computed
/// as `x * cos + roll(x, D/2) * sin'` with the sign in `sin'` ([`cos_sin`]): the same products
/// and sum in the same order, so bit-equal to the `rotate_half` form (a negation is exact).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.size()[3];
    let rot = x.f_roll([d / 2], [3])?;
    Ok(x.f_mul(cos)?.f_add(&rot.f_mul(sin)?)?)
}
