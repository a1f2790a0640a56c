//! Next-token cross-entropy of a causal LM, as transformers' `ForCausalLMLoss` /
//! `F.cross_entropy(logits[:, :-1], labels[:, 1:], ignore_index=-100)` (mean reduction).

use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// Labels with this value get no loss (HF's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// `logits` [B, L, V] (any float kind), `labels` [B, L] int64, unshifted (`labels[b, t]` is the
/// token at position t; position t's logits predict `labels[b, t + 1]`), -100 = no loss.
/// Returns `(mean, count)`: the mean over counted positions of `logsumexp(z) - z[y]`, computed
/// in f32 (a [] f32 tensor with autograd; 0 when nothing is counted, where torch gives NaN), and
/// the number of counted positions ([] int64). Only counted rows are upcast to f32.
/// A label outside `0..V` (other than -100) is an error.
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let s = logits.size();
    if s.len() != 3 || s[1] < 1 {
        return Err(Error::Shape {
            what: "logits",
            expected: "[B, L >= 1, V]".into(),
            got: s,
        });
    }
    let (b, l, v) = (s[0], s[1], s[2]);
    if labels.size() != [b, l] || labels.kind() != Kind::Int64 {
        return Err(Error::Shape {
            what: "labels (int64)",
            expected: format!("[{b}, {l}] (the logits' [B, L])"),
            got: labels.size(),
        });
    }
    let labels = labels.f_to_device(logits.device())?;
    let z = logits.f_narrow(1, 0, l - 1)?.f_reshape([-1, v])?; // [B (L-1), V]
    let y = labels.f_narrow(1, 1, l - 1)?.f_reshape([-1])?; // [B (L-1)]
    let rows = y.f_ne(IGNORE_INDEX)?.f_nonzero()?.f_squeeze_dim(1)?; // [N]
    let n = rows.size()[0];
    let count = Tensor::from(n).f_to_device(logits.device())?;
    if n == 0 {
        let zero = z.f_sum(Kind::Float)?.f_mul_scalar(0.0)?;
        return Ok((zero, count));
    }
    let y = y.f_index_select(0, &rows)?; // [N]
    let range = Vec::<i64>::try_from(Tensor::f_stack(&[y.f_min()?, y.f_max()?], 0)?)?;
    if range[0] < 0 || range[1] >= v {
        let bad = if range[0] < 0 { range[0] } else { range[1] };
        return Err(Error::OutOfRange {
            what: "label (not -100)",
            value: bad,
            lo: 0,
            hi: v,
        });
    }
    let z = z.f_index_select(0, &rows)?.f_to_kind(Kind::Float)?; // [N, V] f32
    let lse = z.f_logsumexp(&[1i64][..], false)?; // [N]
    let picked = z.f_gather(1, &y.f_unsqueeze(1)?, false)?.f_squeeze_dim(1)?; // [N]
    let mean = lse.f_sub(&picked)?.f_mean(Kind::Float)?;
    Ok((mean, count))
}
