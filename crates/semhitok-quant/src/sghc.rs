//! Semantic-Guided Hierarchical Codebook (SGHC): pixel sub-codebooks indexed by semantic code.
//!
//! The pixel codebook is `[K_sem, m, D_pix]`. A token whose semantic code is `k` is quantized
//! only against the `m` codes of sub-codebook `k` (paper, Sec. 3.3); its unified id is
//! `u = k * m + j` in `0..K_sem * m` (196,608 for the paper's 16384 x 12).
//!
//! The search reads each token's `m x D_pix` sub-codebook directly, so it never gathers an
//! `[N, m, D_pix]` copy (as the peers' `codebook[idx]` + argmin does) nor touches the other codes.

use crate::check::{finite, ids_below, len_eq, norm, slice, sq_norm, standard2};
use crate::error::{invalid, Error, Result};
use crate::kernel::Kernel;
use crate::search::Metric;
use ndarray::{Array2, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The unified id space `u = k * m + j` for `k < K_sem`, `j < m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnifiedIndex {
    k_sem: u32,
    m: u32,
}

impl UnifiedIndex {
    /// `K_sem` semantic codes with `m` pixel codes each. Errors unless both are >= 1 and
    /// `K_sem * m` fits in a u32.
    pub fn new(k_sem: usize, m: usize) -> Result<UnifiedIndex> {
        if k_sem == 0 || k_sem > u32::MAX as usize {
            return Err(invalid("K_sem", k_sem, "must be in 1..2^32"));
        }
        if m == 0 || m > u32::MAX as usize {
            return Err(invalid("m (sub-codebook size)", m, "must be in 1..2^32"));
        }
        if (k_sem as u64) * (m as u64) > u64::from(u32::MAX) {
            return Err(invalid(
                "K_sem * m",
                (k_sem as u64) * (m as u64),
                "the unified vocabulary must fit in u32",
            ));
        }
        Ok(UnifiedIndex {
            k_sem: k_sem as u32,
            m: m as u32,
        })
    }

    /// The paper's 256px configuration: 16384 semantic codes x 12 pixel codes = 196,608 ids.
    pub fn paper() -> UnifiedIndex {
        UnifiedIndex {
            k_sem: 16384,
            m: 12,
        }
    }

    /// Number of semantic codes `K_sem`.
    pub fn k_sem(&self) -> usize {
        self.k_sem as usize
    }

    /// Sub-codebook size `m`.
    pub fn m(&self) -> usize {
        self.m as usize
    }

    /// Unified vocabulary size `K_sem * m`.
    pub fn vocab_size(&self) -> usize {
        self.k_sem as usize * self.m as usize
    }

    /// `u = k * m + j`; errors name `k` or `j` when out of range.
    pub fn encode(&self, k: u32, j: u32) -> Result<u32> {
        if k >= self.k_sem {
            return Err(Error::IdOutOfRange {
                what: "semantic id".into(),
                id: k.into(),
                bound: self.k_sem.into(),
            });
        }
        if j >= self.m {
            return Err(Error::IdOutOfRange {
                what: "pixel sub-code id".into(),
                id: j.into(),
                bound: self.m.into(),
            });
        }
        Ok(k * self.m + j)
    }

    /// `(k, j) = (u / m, u % m)`; errors name `u` when `u >= K_sem * m`.
    pub fn decode(&self, u: u32) -> Result<(u32, u32)> {
        if u as usize >= self.vocab_size() {
            return Err(Error::IdOutOfRange {
                what: "unified id".into(),
                id: u.into(),
                bound: self.vocab_size() as u64,
            });
        }
        Ok((u / self.m, u % self.m))
    }

    /// Element-wise [`Self::encode`]; errors name the position of the first bad id.
    pub fn encode_all(&self, sem: &[u32], sub: &[u32]) -> Result<Vec<u32>> {
        len_eq(
            "pixel sub-code ids",
            sub.len(),
            sem.len(),
            "one per semantic id",
        )?;
        ids_below(sem, self.k_sem(), "semantic ids")?;
        ids_below(sub, self.m(), "pixel sub-code ids")?;
        Ok(sem.iter().zip(sub).map(|(&k, &j)| k * self.m + j).collect())
    }

    /// Element-wise [`Self::decode`] -> (semantic ids, sub-code ids).
    pub fn decode_all(&self, unified: &[u32]) -> Result<(Vec<u32>, Vec<u32>)> {
        ids_below(unified, self.vocab_size(), "unified ids")?;
        Ok(unified.iter().map(|&u| (u / self.m, u % self.m)).unzip())
    }
}

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
    let (n, qs) = (q.nrows(), slice(&q));

    let mut sub_ids = vec![0u32; n];
    let mut scores = vec![0f32; n];
    const BLOCK: usize = 512;
    let bad = sub_ids
        .par_chunks_mut(BLOCK)
        .zip(scores.par_chunks_mut(BLOCK))
        .enumerate()
        .map(|(t, (ids_t, sc_t))| {
            let n0 = t * BLOCK;
            let rows = ids_t.len();
            let qb = &qs[n0 * d..(n0 + rows) * d];
            let sem = &sem_ids[n0..n0 + rows];
            sghc_block(kernel, qb, sem, ps, m, d, metric, ids_t, sc_t).map(|r| n0 + r)
        })
        .reduce(|| None, |a: Option<usize>, b| a.or(b));
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
        .map(|(&k, &j)| k * index.m + j)
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

/// A pixel codebook `[K_sem, m, D_pix]` packed for repeated SGHC searches (the tokenizer's
/// inference path): each sub-codebook becomes one contiguous, transposed block
/// `[bias | D_pix rows of m4 lanes]` (`m4` = m rounded up to 4), codes normalized for
/// [`Metric::Cosine`], bias `-|c|^2 / 2` for [`Metric::SquaredL2`]. One broadcast of a query value
/// then updates all m candidate scores at once. The whole codebook is validated once here.
#[derive(Debug, Clone)]
pub struct PackedPixelCodebook {
    index: UnifiedIndex,
    d: usize,
    m4: usize,
    metric: Metric,
    /// `[K_sem][(D + 1) * m4]`.
    blocks: Vec<f32>,
    kernel: Kernel,
}

impl PackedPixelCodebook {
    /// Packs `pixel: [K_sem, m, D_pix]`; errors name a non-finite value by `[k, j, d]`.
    pub fn new(pixel: ArrayView3<'_, f32>, metric: Metric) -> Result<PackedPixelCodebook> {
        let (k_sem, m, d) = pixel.dim();
        if d == 0 {
            return Err(Error::Shape {
                what: "pixel codebook".into(),
                expected: "[K_sem, m, D_pix] with D_pix >= 1".into(),
                got: pixel.shape().to_vec(),
            });
        }
        let index = UnifiedIndex::new(k_sem, m)?;
        let m4 = m.div_ceil(4) * 4;
        let block = (d + 1) * m4;
        let mut blocks = vec![0f32; k_sem * block];
        let mut row = vec![0f32; d];
        for k in 0..k_sem {
            let b = &mut blocks[k * block..(k + 1) * block];
            b[m..m4].fill(f32::NEG_INFINITY);
            for j in 0..m {
                for (dd, v) in row.iter_mut().enumerate() {
                    *v = pixel[[k, j, dd]];
                    if !v.is_finite() {
                        return Err(Error::NonFinite {
                            what: "pixel codebook".into(),
                            value: *v,
                            location: format!("[{k}, {j}, {dd}]"),
                        });
                    }
                }
                b[j] = match metric {
                    Metric::Cosine => {
                        crate::check::l2_normalize(&mut row);
                        0.0
                    }
                    Metric::SquaredL2 => {
                        let n2 = f64::from(norm(&row)).powi(2);
                        if n2 > f64::from(f32::MAX) / 4.0 {
                            return Err(Error::NonFinite {
                                what: "pixel code squared norm (overflows f32)".into(),
                                value: n2 as f32,
                                location: format!("[{k}, {j}]"),
                            });
                        }
                        (-0.5 * n2) as f32
                    }
                };
                for (dd, &v) in row.iter().enumerate() {
                    b[(dd + 1) * m4 + j] = v;
                }
            }
        }
        Ok(PackedPixelCodebook {
            index,
            d,
            m4,
            metric,
            blocks,
            kernel: Kernel::detect(),
        })
    }

    /// Selects the kernel (the portable one for testing); AVX2 falls back to portable on CPUs without it.
    pub fn with_kernel(mut self, kernel: Kernel) -> PackedPixelCodebook {
        self.kernel = if Kernel::detect() == Kernel::Avx2Fma {
            kernel
        } else {
            Kernel::Portable
        };
        self
    }

    /// The id space (`K_sem`, `m`).
    pub fn index(&self) -> UnifiedIndex {
        self.index
    }

    /// Code dimension `D_pix`.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// The metric the codebook was packed for.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Hierarchical search, same contract as [`sghc_nearest`].
    /// queries: `[N, D_pix]`, sem_ids: `[N]` -> sub-ids, unified ids, scores `[N]`.
    pub fn nearest(&self, queries: ArrayView2<'_, f32>, sem_ids: &[u32]) -> Result<SghcNearest> {
        let d = self.d;
        let q = sghc_queries(queries, sem_ids, self.index.k_sem(), d)?;
        let (n, qs) = (q.nrows(), slice(&q));
        let mut sub_ids = vec![0u32; n];
        let mut scores = vec![0f32; n];
        const BLOCK: usize = 512;
        let bad = sub_ids
            .par_chunks_mut(BLOCK)
            .zip(scores.par_chunks_mut(BLOCK))
            .enumerate()
            .map(|(t, (ids_t, sc_t))| {
                let n0 = t * BLOCK;
                let rows = ids_t.len();
                let qb = &qs[n0 * d..(n0 + rows) * d];
                self.block(qb, &sem_ids[n0..n0 + rows], ids_t, sc_t);
                match self.metric {
                    Metric::Cosine => {
                        for (r, sc) in sc_t.iter_mut().enumerate() {
                            *sc /= sq_norm(&qb[r * d..(r + 1) * d]).sqrt().max(1e-12);
                        }
                    }
                    Metric::SquaredL2 => {
                        for (r, sc) in sc_t.iter_mut().enumerate() {
                            *sc = (sq_norm(&qb[r * d..(r + 1) * d]) - 2.0 * *sc).max(0.0);
                        }
                    }
                }
                let bad = finite(sc_t, 1, "")
                    .err()
                    .map(|_| n0 + sc_t.iter().position(|v| !v.is_finite()).unwrap_or(0));
                bad
            })
            .reduce(|| None, |a: Option<usize>, b| a.or(b));
        if let Some(row) = bad {
            return Err(Error::NonFinite {
                what: "SGHC score (overflow)".into(),
                value: scores[row],
                location: format!("query {row} against sub-codebook {}", sem_ids[row]),
            });
        }
        let m = self.index.m;
        let unified = sem_ids
            .iter()
            .zip(&sub_ids)
            .map(|(&k, &j)| k * m + j)
            .collect();
        Ok(SghcNearest {
            sub_ids,
            unified,
            scores,
        })
    }

    /// Raw best (`q.c + bias`) and lane per row of one block of queries.
    fn block(&self, q: &[f32], sem: &[u32], ids: &mut [u32], raw: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if self.kernel == Kernel::Avx2Fma {
                use crate::kernel::sghc_packed_avx2 as k;
                let (d, b) = (self.d, &self.blocks);
                // SAFETY: AVX2/FMA detected (`Kernel::Avx2Fma`); semantic ids were range-checked,
                // so every block lies inside `blocks`; m4 matches the const parameters per arm.
                unsafe {
                    match (self.m4, d) {
                        (12, 8) => return k::<8, 1, true>(q, d, sem, b, ids, raw),
                        (12, 32) => return k::<32, 1, true>(q, d, sem, b, ids, raw),
                        (12, _) => return k::<0, 1, true>(q, d, sem, b, ids, raw),
                        (4, _) => return k::<0, 0, true>(q, d, sem, b, ids, raw),
                        (8, _) => return k::<0, 1, false>(q, d, sem, b, ids, raw),
                        (16, 8) => return k::<8, 2, false>(q, d, sem, b, ids, raw),
                        (16, _) => return k::<0, 2, false>(q, d, sem, b, ids, raw),
                        (20, _) => return k::<0, 2, true>(q, d, sem, b, ids, raw),
                        (24, _) => return k::<0, 3, false>(q, d, sem, b, ids, raw),
                        (32, _) => return k::<0, 4, false>(q, d, sem, b, ids, raw),
                        _ => {}
                    }
                }
            }
        }
        let (d, m4) = (self.d, self.m4);
        let block = (d + 1) * m4;
        let mut acc = vec![0f32; m4];
        for (r, &k) in sem.iter().enumerate() {
            let b = &self.blocks[k as usize * block..(k as usize + 1) * block];
            acc.copy_from_slice(&b[..m4]);
            for dd in 0..d {
                let qv = q[r * d + dd];
                let c = &b[(dd + 1) * m4..(dd + 2) * m4];
                for (a, &cv) in acc.iter_mut().zip(c) {
                    *a += qv * cv;
                }
            }
            let (mut bj, mut best) = (0u32, f32::NEG_INFINITY);
            for (j, &v) in acc.iter().enumerate() {
                if v > best {
                    best = v;
                    bj = j as u32;
                }
            }
            ids[r] = bj;
            raw[r] = best;
        }
    }
}

/// Validate the inputs of an SGHC search (both entry points): queries `[N, d]` with finite values,
/// one semantic id per query, each below `k_sem`. Returns the queries in C order.
fn sghc_queries<'a>(
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
