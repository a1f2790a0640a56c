//! The unified-id rule `u = k * m + j` on tensors. semhitok-quant's `UnifiedIndex` owns the rule
//! (its scalar form, with the range checks); these two functions are its tensor form, the one
//! place the tch side writes it: SGHC's search results and lookups, the semantic-only encoding
//! (`j = 0`) and the decoder's lookup of semantic codes.

use crate::error::Result;
use tch::Tensor;

/// `k * m + j` element-wise: semantic ids `sem` and sub-code ids `sub` (same shape, int64;
/// `None`: every `j = 0`) -> unified ids of that shape. The ids must already be in range.
pub fn compose(sem: &Tensor, sub: Option<&Tensor>, m: i64) -> Result<Tensor> {
    let km = sem.f_mul_scalar(m)?;
    Ok(match sub {
        Some(j) => km.f_add(j)?,
        None => km,
    })
}

/// The semantic id `floor(u / m)` of unified ids `u` (int64, any shape) -> the same shape.
pub fn semantic_of(unified: &Tensor, m: i64) -> Result<Tensor> {
    Ok(unified.f_div_scalar_mode(m, "floor")?)
}
