//! Fused, cache-blocked nearest-code search over a flat codebook `[K, D]`.
//!
//! Peers compute the full `[N, K]` distance or similarity matrix and then take an argmin/argmax
//! (VQKD, LlamaGen, TokenFlow, UniTok). At the SemHiTok shape (N = 4096 tokens, K = 16384, D = 32)
//! that matrix is 256 MiB and dominates the time. Here the codebook is packed once into
//! [`PackedCodebook`], queries are processed in blocks of 96 by rayon tasks, codes in chunks that
//! stay in L2, and the per-tile scores live only in registers (see `kernel.rs`).

use crate::check::{finite, l2_normalize, norm, slice, standard2};
use crate::error::{invalid, Error, Result};
use crate::kernel::{argmax_tile, score_tile, Best, Kernel, LANES, MR};
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How "nearest" is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Queries and codes are l2-normalized (`x / max(|x|, 1e-12)`); the best code maximizes the
    /// dot product. Scores are cosine similarities (higher is better).
    Cosine,
    /// The best code minimizes `|q - c|^2`. Scores are squared distances (lower is better),
    /// computed as `|q|^2 - 2 q.c + |c|^2` like the peers' fused form, clamped at 0.
    #[serde(alias = "l2", alias = "euclidean")]
    SquaredL2,
}

/// Result of a nearest-code search over N queries: `ids[n]` in `0..K`, `scores[n]` per [`Metric`].
#[derive(Debug, Clone, PartialEq)]
pub struct Nearest {
    /// Best code index per query; ties go to the lowest index.
    pub ids: Vec<u32>,
    /// Cosine similarity or squared distance of that code.
    pub scores: Vec<f32>,
}

/// Result of a top-k search: `[N, k]`, best first; equal scores are ordered by ascending index.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    /// `[N, k]` code indices.
    pub ids: Array2<u32>,
    /// `[N, k]` scores per [`Metric`].
    pub scores: Array2<f32>,
}

/// Queries per rayon task (16 micro-tiles).
const QUERY_BLOCK: usize = MR * 16;
/// Floats of packed codes per L2-resident chunk (256 KiB).
const CHUNK_FLOATS: usize = 64 * 1024;

/// A codebook `[K, D]` packed for the fused search (normalized first for [`Metric::Cosine`]).
///
/// Pack once and reuse it for every batch: packing costs one pass over the codebook.
#[derive(Debug, Clone)]
pub struct PackedCodebook {
    metric: Metric,
    k: usize,
    d: usize,
    /// `[n_panels][d][LANES]`.
    panels: Vec<f32>,
    /// `[n_panels * LANES]`: 0 (cosine) or `-|c|^2/2` (L2); `-inf` on padding lanes.
    bias: Vec<f32>,
    kernel: Kernel,
}

impl PackedCodebook {
    /// Packs `codes: [K, D]` (any memory layout). Errors on K = 0, D = 0, K > u32::MAX, or a
    /// non-finite value (naming its `[k, d]`).
    pub fn new(codes: ArrayView2<'_, f32>, metric: Metric) -> Result<PackedCodebook> {
        let (k, d) = codes.dim();
        if k == 0 || d == 0 || k > u32::MAX as usize {
            return Err(Error::Shape {
                what: "codebook".into(),
                expected: "[K, D] with 1 <= K <= 2^32 - 1 and D >= 1".into(),
                got: vec![k, d],
            });
        }
        let codes = standard2(codes);
        let cs = slice(&codes);
        finite(cs, d, "codebook")?;
        let n_panels = k.div_ceil(LANES);
        let mut panels = vec![0f32; n_panels * d * LANES];
        let mut bias = vec![f32::NEG_INFINITY; n_panels * LANES];
        let mut row = vec![0f32; d];
        for c in 0..k {
            row.copy_from_slice(&cs[c * d..(c + 1) * d]);
            bias[c] = match metric {
                Metric::Cosine => {
                    l2_normalize(&mut row);
                    0.0
                }
                Metric::SquaredL2 => {
                    let n2 = f64::from(norm(&row)).powi(2);
                    if n2 > f64::from(f32::MAX) / 4.0 {
                        return Err(Error::NonFinite {
                            what: "codebook squared norm (overflows f32)".into(),
                            value: n2 as f32,
                            location: format!("row {c}"),
                        });
                    }
                    (-0.5 * n2) as f32
                }
            };
            let (p, l) = (c / LANES, c % LANES);
            for (dd, &v) in row.iter().enumerate() {
                panels[(p * d + dd) * LANES + l] = v;
            }
        }
        Ok(PackedCodebook {
            metric,
            k,
            d,
            panels,
            bias,
            kernel: Kernel::detect(),
        })
    }

    /// Packs a row-major `[k, d]` slice.
    pub fn from_slice(codes: &[f32], k: usize, d: usize, metric: Metric) -> Result<PackedCodebook> {
        let view = ArrayView2::from_shape((k, d), codes).map_err(|_| Error::Shape {
            what: "codebook slice".into(),
            expected: format!("{k} x {d} = {} values", k * d),
            got: vec![codes.len()],
        })?;
        PackedCodebook::new(view, metric)
    }

    /// Selects the micro-kernel (for testing the portable path on AVX2 machines).
    /// Requesting [`Kernel::Avx2Fma`] on a CPU without it falls back to the portable kernel.
    pub fn with_kernel(mut self, kernel: Kernel) -> PackedCodebook {
        self.kernel = match kernel {
            Kernel::Avx2Fma if Kernel::detect() != Kernel::Avx2Fma => Kernel::Portable,
            k => k,
        };
        self
    }

    /// Number of codes K.
    pub fn len(&self) -> usize {
        self.k
    }

    /// Always false (a packed codebook has K >= 1).
    pub fn is_empty(&self) -> bool {
        self.k == 0
    }

    /// Code dimension D.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// The metric the codebook was packed for.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The micro-kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Nearest code per query. queries: `[N, D]` -> ids `[N]`, scores `[N]`.
    pub fn nearest(&self, queries: ArrayView2<'_, f32>) -> Result<Nearest> {
        let n = queries.nrows();
        let mut out = Nearest {
            ids: vec![0; n],
            scores: vec![0.0; n],
        };
        self.nearest_into(queries, &mut out.ids, &mut out.scores)?;
        Ok(out)
    }

    /// [`Self::nearest`] into caller buffers of length N (no allocation beyond per-task scratch).
    pub fn nearest_into(
        &self,
        queries: ArrayView2<'_, f32>,
        ids: &mut [u32],
        scores: &mut [f32],
    ) -> Result<()> {
        let q = self.check_queries(queries)?;
        let (n, d) = q.dim();
        if ids.len() != n || scores.len() != n {
            return Err(Error::SizeMismatch {
                what: "nearest_into output buffers".into(),
                left: format!("N = {n} queries"),
                right: format!("ids {}, scores {}", ids.len(), scores.len()),
            });
        }
        let qs = slice(&q);
        let n_panels = self.bias.len() / LANES;
        let chunk = (CHUNK_FLOATS / (d * LANES)).max(1);
        let overflow = ids
            .par_chunks_mut(QUERY_BLOCK)
            .zip(scores.par_chunks_mut(QUERY_BLOCK))
            .enumerate()
            .map(|(t, (ids_t, sc_t))| {
                let n0 = t * QUERY_BLOCK;
                let (qbuf, qn2) = self.pack_queries(&qs[n0 * d..(n0 + ids_t.len()) * d]);
                let tiles = ids_t.len().div_ceil(MR);
                let mut best = vec![Best::new(); tiles];
                for p0 in (0..n_panels).step_by(chunk) {
                    let p1 = (p0 + chunk).min(n_panels);
                    for (ti, b) in best.iter_mut().enumerate() {
                        let qt = &qbuf[ti * MR * d..(ti + 1) * MR * d];
                        argmax_tile(self.kernel, qt, d, &self.panels, &self.bias, p0, p1, b);
                    }
                }
                let mut bad = None;
                for r in 0..ids_t.len() {
                    let b = &best[r / MR];
                    ids_t[r] = b.idx[r % MR];
                    sc_t[r] = self.finish(b.score[r % MR], qn2[r]);
                    if !sc_t[r].is_finite() && bad.is_none() {
                        bad = Some((n0 + r, sc_t[r]));
                    }
                }
                bad
            })
            .reduce(|| None, |a, b| a.or(b));
        if let Some((row, value)) = overflow {
            return Err(Error::NonFinite {
                what: "search score (overflow)".into(),
                value,
                location: format!("query {row}"),
            });
        }
        Ok(())
    }

    /// The `k` best codes per query, best first. queries: `[N, D]` -> `[N, k]`.
    pub fn top_k(&self, queries: ArrayView2<'_, f32>, k: usize) -> Result<TopK> {
        if k == 0 || k > self.k {
            return Err(invalid("top_k k", k, format!("must be in 1..={}", self.k)));
        }
        let q = self.check_queries(queries)?;
        let (n, d) = q.dim();
        let qs = slice(&q);
        let n_panels = self.bias.len() / LANES;
        let mut ids = Array2::<u32>::zeros((n, k));
        let mut scores = Array2::<f32>::zeros((n, k));
        let (ids_s, sc_s) = (
            ids.as_slice_mut().expect("fresh array"),
            scores.as_slice_mut().expect("fresh array"),
        );
        ids_s
            .par_chunks_mut(QUERY_BLOCK * k)
            .zip(sc_s.par_chunks_mut(QUERY_BLOCK * k))
            .enumerate()
            .for_each(|(t, (ids_t, sc_t))| {
                let rows = ids_t.len() / k;
                let n0 = t * QUERY_BLOCK;
                let (qbuf, qn2) = self.pack_queries(&qs[n0 * d..(n0 + rows) * d]);
                // Per row: (score, index) sorted by score descending, then index ascending.
                let mut heaps: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(k + 1); rows];
                let mut tile = [[0f32; LANES]; MR];
                for ti in 0..rows.div_ceil(MR) {
                    let qt = &qbuf[ti * MR * d..(ti + 1) * MR * d];
                    for p in 0..n_panels {
                        score_tile(qt, d, &self.panels, &self.bias, p, &mut tile);
                        for i in 0..MR.min(rows - ti * MR) {
                            let h = &mut heaps[ti * MR + i];
                            for (l, &v) in tile[i].iter().enumerate() {
                                if v == f32::NEG_INFINITY {
                                    continue; // padding lane
                                }
                                if h.len() == k && v <= h[k - 1].0 {
                                    continue;
                                }
                                let pos = h.partition_point(|e| e.0 >= v);
                                h.insert(pos, (v, (p * LANES + l) as u32));
                                h.truncate(k);
                            }
                        }
                    }
                }
                for (r, h) in heaps.iter().enumerate() {
                    for (j, &(s, id)) in h.iter().enumerate() {
                        ids_t[r * k + j] = id;
                        sc_t[r * k + j] = self.finish(s, qn2[r]);
                    }
                }
            });
        Ok(TopK { ids, scores })
    }

    fn check_queries<'a>(
        &self,
        queries: ArrayView2<'a, f32>,
    ) -> Result<ndarray::CowArray<'a, f32, ndarray::Ix2>> {
        if queries.ncols() != self.d {
            return Err(Error::Shape {
                what: "queries".into(),
                expected: format!("[N, {}]", self.d),
                got: queries.shape().to_vec(),
            });
        }
        let q = standard2(queries);
        finite(slice(&q), self.d, "queries")?;
        Ok(q)
    }

    /// Copies `rows x d` queries into micro-tiles (zero-padded to a multiple of MR rows),
    /// normalized for cosine; returns them with each row's `|q|^2` (for the L2 score).
    fn pack_queries(&self, q: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let d = self.d;
        let rows = q.len() / d;
        let mut buf = vec![0f32; rows.div_ceil(MR) * MR * d];
        buf[..rows * d].copy_from_slice(q);
        let mut qn2 = vec![0f32; rows];
        for r in 0..rows {
            let row = &mut buf[r * d..(r + 1) * d];
            match self.metric {
                Metric::Cosine => {
                    l2_normalize(row);
                }
                Metric::SquaredL2 => qn2[r] = f64::from(norm(row)).powi(2) as f32,
            }
        }
        (buf, qn2)
    }

    /// Kernel score -> user-facing score.
    #[inline]
    fn finish(&self, s: f32, qn2: f32) -> f32 {
        match self.metric {
            Metric::Cosine => s,
            Metric::SquaredL2 => (qn2 - 2.0 * s).max(0.0),
        }
    }
}

/// One-shot search: packs `codes: [K, D]` and searches `queries: [N, D]`.
/// For repeated searches against the same codebook, keep a [`PackedCodebook`].
pub fn nearest(
    queries: ArrayView2<'_, f32>,
    codes: ArrayView2<'_, f32>,
    metric: Metric,
) -> Result<Nearest> {
    PackedCodebook::new(codes, metric)?.nearest(queries)
}
