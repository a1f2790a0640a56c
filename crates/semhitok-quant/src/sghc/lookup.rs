//! Code vectors by id: semantic, pixel and unified lookups.

use super::UnifiedIndex;
use crate::check::ids_below;
use crate::error::{invalid, Error, Result};
use ndarray::{Array2, ArrayView2, ArrayView3, Axis};

/// Semantic code vectors: codes `[K, D]`, ids `[N]` -> `[N, D]`. Errors name the first bad id.
pub fn lookup_semantic(codes: ArrayView2<'_, f32>, ids: &[u32]) -> Result<Array2<f32>> {
    ids_below(ids, codes.nrows(), "semantic ids")?;
    Ok(codes.select(
        Axis(0),
        &ids.iter().map(|&i| i as usize).collect::<Vec<_>>(),
    ))
}

/// Pixel code vectors: pixel `[K_sem, m, D]`, sem_ids `[N]`, sub_ids `[N]` -> `[N, D]`.
pub fn lookup_pixel(
    pixel: ArrayView3<'_, f32>,
    sem_ids: &[u32],
    sub_ids: &[u32],
) -> Result<Array2<f32>> {
    let (k_sem, m, _) = pixel.dim();
    let index = UnifiedIndex::new(k_sem, m)?;
    let unified = index.encode_all(sem_ids, sub_ids)?;
    lookup_unified_pixel(pixel, &unified)
}

/// Pixel code vectors of unified ids: pixel `[K_sem, m, D]`, unified `[N]` -> `[N, D]`.
pub fn lookup_unified_pixel(pixel: ArrayView3<'_, f32>, unified: &[u32]) -> Result<Array2<f32>> {
    let (k_sem, m, d) = pixel.dim();
    let index = UnifiedIndex::new(k_sem, m)?;
    ids_below(unified, index.vocab_size(), "unified ids")?;
    // `to_shape` copies only when the view is not C-contiguous.
    let flat = pixel
        .to_shape((k_sem * m, d))
        .map_err(|e| invalid("pixel codebook layout", e, "cannot flatten [K_sem, m, D]"))?;
    Ok(flat.select(
        Axis(0),
        &unified.iter().map(|&u| u as usize).collect::<Vec<_>>(),
    ))
}

/// The decoder input of unified ids: `[semantic code | pixel code]` per token.
///
/// semantic `[K_sem, D_sem]`, pixel `[K_sem, m, D_pix]`, unified `[N]` -> `[N, D_sem + D_pix]`.
pub fn lookup_unified(
    semantic: ArrayView2<'_, f32>,
    pixel: ArrayView3<'_, f32>,
    unified: &[u32],
) -> Result<Array2<f32>> {
    let (k_sem, m, d_pix) = pixel.dim();
    if semantic.nrows() != k_sem {
        return Err(Error::SizeMismatch {
            what: "semantic vs pixel codebook".into(),
            left: format!("semantic K = {}", semantic.nrows()),
            right: format!("pixel K_sem = {k_sem}"),
        });
    }
    let index = UnifiedIndex::new(k_sem, m)?;
    let (sem, _) = index.decode_all(unified)?;
    let s = lookup_semantic(semantic, &sem)?;
    let p = lookup_unified_pixel(pixel, unified)?;
    let d_sem = semantic.ncols();
    let mut out = Array2::zeros((unified.len(), d_sem + d_pix));
    out.slice_mut(ndarray::s![.., ..d_sem]).assign(&s);
    out.slice_mut(ndarray::s![.., d_sem..]).assign(&p);
    Ok(out)
}
