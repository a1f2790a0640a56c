//! The hierarchical search over the raw pixel codebook (`sghc_nearest`): each token is matched
//! only against the sub-codebook of its semantic id.

use super::UnifiedIndex;
use crate::check::{finite, ids_below, len_eq, norm, slice, standard2};
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::search::Metric;
use ndarray::{ArrayView2, ArrayView3};
use rayon::prelude::*;

/// Result of the SGHC search over N tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SghcNearest {
    /// Sub-codebook index `j` in `0..m`; ties go to the lowest `j`.
    pub sub_ids: Vec<u32>,
    /// Unified id `k * m + j`.
    pub unified: Vec<u32>,
    /// Cosine similarity or squared distance (see [`Metric`]).
    pub scores: Vec<f32>,
}

/// Checks `[K_sem, m, D]` and returns the index plus a contiguous view.
fn pixel_codebook<'b>(
    pixel: &'b ndarray::CowArray<'_, f32, ndarray::Ix3>,
) -> Result<(UnifiedIndex, usize, &'b [f32])> {
    let (k_sem, m, d) = pixel.dim();
    if d == 0 {
        return Err(Error::Shape {
            what: "pixel codebook".into(),
            expected: "[K_sem, m, D_pix] with D_pix >= 1".into(),
            got: pixel.shape().to_vec(),
        });
    }
    let index = UnifiedIndex::new(k_sem, m)?;
    let s = pixel.as_slice().expect("standard layout is contiguous");
    Ok((index, d, s))
}

/// Hierarchical search: token `n` is matched only against `pixel[sem_ids[n]]`.
///
/// queries: `[N, D_pix]`, sem_ids: `[N]`, pixel: `[K_sem, m, D_pix]` -> `[N]` sub-ids, unified ids, scores.
/// For [`Metric::Cosine`] the codes are normalized on the fly (`c / max(|c|, 1e-12)`), so the pixel
/// codebook needs no preprocessing. Non-finite queries are rejected up front; a non-finite code
/// in a searched sub-codebook is reported by its `[k, j, d]` position (untouched sub-codebooks are not read).
pub fn sghc_nearest(
    queries: ArrayView2<'_, f32>,
    sem_ids: &[u32],
    pixel: ArrayView3<'_, f32>,
    metric: Metric,
) -> Result<SghcNearest> {
    sghc_nearest_with(Kernel::detect(), queries, sem_ids, pixel, metric)
}

/// [`sghc_nearest`] with an explicit kernel (to test the portable path on AVX2 machines);
/// [`Kernel::Avx2Fma`] on a CPU without AVX2/FMA falls back to the portable code.
pub fn sghc_nearest_with(
    kernel: Kernel,
    queries: ArrayView2<'_, f32>,
    sem_ids: &[u32],
    pixel: ArrayView3<'_, f32>,
    metric: Metric,
) -> Result<SghcNearest> {
    let kernel = if Kernel::detect() == Kernel::Avx2Fma {
        kernel
    } else {
        Kernel::Portable
    };
    let pixel = if pixel.is_standard_layout() {
        ndarray::CowArray::from(pixel)
    } else {
        ndarray::CowArray::from(pixel.as_standard_layout().into_owned())
    };
    let (index, d, ps) = pixel_codebook(&pixel)?;
    let m = index.m();
    let q = sghc_queries(queries, sem_ids, index.k_sem(), d)?;
    let qs = slice(&q);

    let (sub_ids, scores, bad) = par_query_blocks(qs, sem_ids, d, |qb, sem, ids_t, sc_t| {
        sghc_block(kernel, qb, sem, ps, m, d, metric, ids_t, sc_t)
    });
    if let Some(row) = bad {
        return Err(locate_non_finite(
            ps,
            m,
            d,
            sem_ids[row],
            row,
            &qs[row * d..(row + 1) * d],
        ));
    }
    let unified = sem_ids
        .iter()
        .zip(&sub_ids)
        .map(|(&k, &j)| index.compose(k, j))
        .collect();
    Ok(SghcNearest {
        sub_ids,
        unified,
        scores,
    })
}

/// Names the value that made a score non-finite for query `row` (a code entry, or an overflow).
fn locate_non_finite(ps: &[f32], m: usize, d: usize, k: u32, row: usize, q: &[f32]) -> Error {
    let base = k as usize * m * d;
    let sub = &ps[base..base + m * d];
    if let Some(p) = sub.iter().position(|v| !v.is_finite()) {
        return Error::NonFinite {
            what: "pixel codebook".into(),
            value: sub[p],
            location: format!("[{k}, {}, {}] (searched by query {row})", p / d, p % d),
        };
    }
    Error::NonFinite {
        what: "SGHC score (overflow)".into(),
        value: f32::INFINITY,
        location: format!("query {row} (norm {}) against sub-codebook {k}", norm(q)),
    }
}

/// The queries `qs` (`[N, d]` row-major) and their semantic ids in blocks of 512 rows on the
/// rayon pool: `block(queries, sem_ids, ids, scores)` fills one block's sub-ids and scores and
/// returns the first block-relative row whose score is not finite. Returns the sub-ids, the
/// scores and the first such row of all.
pub(super) fn par_query_blocks(
    qs: &[f32],
    sem_ids: &[u32],
    d: usize,
    block: impl Fn(&[f32], &[u32], &mut [u32], &mut [f32]) -> Option<usize> + Sync,
) -> (Vec<u32>, Vec<f32>, Option<usize>) {
    const BLOCK: usize = 512;
    let n = sem_ids.len();
    let mut sub_ids = vec![0u32; n];
    let mut scores = vec![0f32; n];
    let bad = sub_ids
        .par_chunks_mut(BLOCK)
        .zip(scores.par_chunks_mut(BLOCK))
        .enumerate()
        .map(|(t, (ids_t, sc_t))| {
            let n0 = t * BLOCK;
            let rows = ids_t.len();
            let qb = &qs[n0 * d..(n0 + rows) * d];
            block(qb, &sem_ids[n0..n0 + rows], ids_t, sc_t).map(|r| n0 + r)
        })
        .reduce(|| None, |a: Option<usize>, b| a.or(b));
    (sub_ids, scores, bad)
}

/// Searches one block of queries; returns the first row (block-relative) whose score is not finite.
fn sghc_block(
    kernel: Kernel,
    q: &[f32],
    sem: &[u32],
    ps: &[f32],
    m: usize,
    d: usize,
    metric: Metric,
    ids: &mut [u32],
    scores: &mut [f32],
) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if kernel == Kernel::Avx2Fma {
            use crate::kernel::sghc_block_avx2_d8 as k8;
            let l2 = metric == Metric::SquaredL2;
            // SAFETY: `Kernel::Avx2Fma` means AVX2 and FMA were detected at runtime; the caller
            // checked every semantic id, so each sub-codebook lies inside `ps`.
            unsafe {
                return match d {
                    8 => k8::<8>(q, d, sem, ps, m, l2, ids, scores),
                    32 => k8::<32>(q, d, sem, ps, m, l2, ids, scores),
                    _ if d % 8 == 0 => k8::<0>(q, d, sem, ps, m, l2, ids, scores),
                    _ => sghc_block_avx2(q, sem, ps, m, d, metric, ids, scores),
                };
            }
        }
    }
    sghc_block_body(q, sem, ps, m, d, metric, ids, scores)
}

/// [`sghc_block_body`] compiled with AVX2/FMA enabled (the 8-lane loops become one register).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sghc_block_avx2(
    q: &[f32],
    sem: &[u32],
    ps: &[f32],
    m: usize,
    d: usize,
    metric: Metric,
    ids: &mut [u32],
    scores: &mut [f32],
) -> Option<usize> {
    sghc_block_body(q, sem, ps, m, d, metric, ids, scores)
}

#[inline(always)]
fn sghc_block_body(
    q: &[f32],
    sem: &[u32],
    ps: &[f32],
    m: usize,
    d: usize,
    metric: Metric,
    ids: &mut [u32],
    scores: &mut [f32],
) -> Option<usize> {
    let mut bad = None;
    for (r, &k) in sem.iter().enumerate() {
        let qr = &q[r * d..(r + 1) * d];
        let sub = &ps[k as usize * m * d..(k as usize + 1) * m * d];
        let (j, s, ok) = match metric {
            Metric::SquaredL2 => scan_l2(qr, sub, m, d),
            Metric::Cosine => scan_cos(qr, sub, m, d),
        };
        ids[r] = j;
        scores[r] = s;
        if !ok && bad.is_none() {
            bad = Some(r);
        }
    }
    bad
}

/// 8-lane partial sums of `f(a[i], b[i])` (lane-wise, so it vectorizes without reassociation).
#[inline(always)]
fn lanes8(a: &[f32], b: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] = f(acc[l], x[l], y[l]);
        }
    }
    let mut tail = 0f32;
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = f(tail, x, y);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// argmin_j |q - c_j|^2 over one sub-codebook `[m, d]`: (j, distance, finite).
#[inline(always)]
fn scan_l2(q: &[f32], sub: &[f32], m: usize, d: usize) -> (u32, f32, bool) {
    let mut best = f32::INFINITY;
    let mut bj = 0u32;
    let mut ok = true;
    for j in 0..m {
        let c = &sub[j * d..(j + 1) * d];
        let dist = lanes8(q, c, |acc, x, y| {
            let t = x - y;
            acc + t * t
        });
        ok &= dist.is_finite();
        if dist < best {
            best = dist;
            bj = j as u32;
        }
    }
    (bj, best, ok)
}

/// argmax_j cos(q, c_j) over one sub-codebook `[m, d]`: (j, cosine, finite).
#[inline(always)]
fn scan_cos(q: &[f32], sub: &[f32], m: usize, d: usize) -> (u32, f32, bool) {
    let qn = lanes8(q, q, |acc, x, y| acc + x * y).sqrt().max(1e-12);
    let mut best = f32::NEG_INFINITY;
    let mut bj = 0u32;
    let mut ok = true;
    for j in 0..m {
        let c = &sub[j * d..(j + 1) * d];
        let dot = lanes8(q, c, |acc, x, y| acc + x * y);
        let cc = lanes8(c, c, |acc, x, _| acc + x * x);
        let s = dot / cc.sqrt().max(1e-12);
        ok &= s.is_finite() && cc.is_finite();
        if s > best {
            best = s;
            bj = j as u32;
        }
    }
    (bj, best / qn, ok)
}

/// Validate the inputs of an SGHC search (both entry points): queries `[N, d]` with finite values,
/// one semantic id per query, each below `k_sem`. Returns the queries in C order.
pub(super) fn sghc_queries<'a>(
    queries: ArrayView2<'a, f32>,
    sem_ids: &[u32],
    k_sem: usize,
    d: usize,
) -> Result<ndarray::CowArray<'a, f32, ndarray::Ix2>> {
    if queries.ncols() != d {
        return Err(Error::Shape {
            what: "SGHC queries".into(),
            expected: format!("[N, {d}] (D_pix of the pixel codebook)"),
            got: queries.shape().to_vec(),
        });
    }
    len_eq(
        "semantic ids",
        sem_ids.len(),
        queries.nrows(),
        "one per query",
    )?;
    ids_below(sem_ids, k_sem, "semantic ids")?;
    let q = standard2(queries);
    finite(slice(&q), d, "SGHC queries")?;
    Ok(q)
}
