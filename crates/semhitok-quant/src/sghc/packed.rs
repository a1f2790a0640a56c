//! The pixel codebook packed once for repeated searches (the tokenizer's inference path).

use super::search::{par_query_blocks, sghc_queries, SghcNearest};
use super::UnifiedIndex;
use crate::check::{finite, norm, slice, sq_norm};
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::search::Metric;
use ndarray::{ArrayView2, ArrayView3};

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
        let qs = slice(&q);
        let (sub_ids, scores, bad) = par_query_blocks(qs, sem_ids, d, |qb, sem, ids_t, sc_t| {
            self.block(qb, sem, ids_t, sc_t);
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
            finite(sc_t, 1, "")
                .err()
                .map(|_| sc_t.iter().position(|v| !v.is_finite()).unwrap_or(0))
        });
        if let Some(row) = bad {
            return Err(Error::NonFinite {
                what: "SGHC score (overflow)".into(),
                value: scores[row],
                location: format!("query {row} against sub-codebook {}", sem_ids[row]),
            });
        }
        let unified = sem_ids
            .iter()
            .zip(&sub_ids)
            .map(|(&k, &j)| self.index.compose(k, j))
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
