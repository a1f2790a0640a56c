//! Codebook learning without autograd: EMA update, dead-code detection and restart.
//!
//! Mirrors VQKD's `NormEMAVectorQuantizer` (microsoft/unilm `beit2/norm_ema_quantizer.py`) with
//! the classic EMA-of-sums form (VQ-VAE-2 / taming `EmbeddingEMA`):
//!
//! ```text
//! cluster_size = decay * cluster_size + (1 - decay) * counts
//! embed_avg    = decay * embed_avg    + (1 - decay) * sums
//! n = sum(cluster_size);  smoothed_k = (cluster_size_k + eps) / (n + K * eps) * n   (Laplace)
//! code_k       = embed_avg_k / smoothed_k, then l2-normalized (cosine codebooks)
//! ```
//!
//! Codes whose `cluster_size` is 0 keep their vector (VQKD: zero-hit codes are not moved).
//! Counts and sums come from a scatter over the assigned ids ([`CodeStats::accumulate`]), never
//! from a dense `[N, K]` one-hot. They are plain sums: workers' [`CodeStats`] are merged (or
//! all-reduced) before one update.

use crate::check::{finite, ids_below, l2_normalize, len_eq, slice, standard2};
use crate::error::{invalid, Error, Result};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Per-code assignment counts `[K]` and input sums `[K, D]` for one batch (or several merged).
#[derive(Debug, Clone, PartialEq)]
pub struct CodeStats {
    /// Inputs assigned to each code.
    pub counts: Vec<u64>,
    /// Sum of the inputs assigned to each code, `[K, D]` (f64 so merges are exact enough).
    pub sums: Array2<f64>,
}

impl CodeStats {
    /// Zero statistics for `k` codes of dimension `d`.
    pub fn new(k: usize, d: usize) -> CodeStats {
        CodeStats {
            counts: vec![0; k],
            sums: Array2::zeros((k, d)),
        }
    }

    /// Statistics of one batch: inputs `[N, D]` assigned to ids `[N]`.
    pub fn from_batch(k: usize, inputs: ArrayView2<'_, f32>, ids: &[u32]) -> Result<CodeStats> {
        let mut s = CodeStats::new(k, inputs.ncols());
        s.accumulate(inputs, ids)?;
        Ok(s)
    }

    /// Scatter-adds inputs `[N, D]` into the rows `ids` `[N]`. Errors name a bad id, a shape
    /// mismatch or a non-finite input, and leave the statistics unchanged.
    pub fn accumulate(&mut self, inputs: ArrayView2<'_, f32>, ids: &[u32]) -> Result<()> {
        let (k, d) = self.sums.dim();
        if inputs.ncols() != d {
            return Err(Error::Shape {
                what: "EMA inputs".into(),
                expected: format!("[N, {d}]"),
                got: inputs.shape().to_vec(),
            });
        }
        len_eq("EMA ids", ids.len(), inputs.nrows(), "one per input row")?;
        ids_below(ids, k, "EMA ids")?;
        let x = standard2(inputs);
        let xs = slice(&x);
        finite(xs, d, "EMA inputs")?;
        let sums = self.sums.as_slice_mut().expect("owned C-order array");
        for (r, &i) in ids.iter().enumerate() {
            let i = i as usize;
            self.counts[i] += 1;
            let dst = &mut sums[i * d..(i + 1) * d];
            for (a, &b) in dst.iter_mut().zip(&xs[r * d..(r + 1) * d]) {
                *a += f64::from(b);
            }
        }
        Ok(())
    }

    /// Adds another worker's statistics (same K and D).
    pub fn merge(&mut self, other: &CodeStats) -> Result<()> {
        if other.sums.dim() != self.sums.dim() || other.counts.len() != self.counts.len() {
            return Err(Error::SizeMismatch {
                what: "CodeStats merge".into(),
                left: format!("{:?}", self.sums.dim()),
                right: format!("{:?}", other.sums.dim()),
            });
        }
        self.counts
            .iter_mut()
            .zip(&other.counts)
            .for_each(|(a, b)| *a += b);
        self.sums += &other.sums;
        Ok(())
    }
}

/// EMA hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmaConfig {
    /// Weight of the old state, in `[0, 1)`.
    pub decay: f32,
    /// Laplace smoothing epsilon.
    pub epsilon: f32,
    /// l2-normalize the updated codes (cosine codebooks).
    pub normalize: bool,
}

impl EmaConfig {
    /// VQKD / SemHiTok SPC defaults: decay 0.99, epsilon 1e-5, normalized codes.
    pub fn vqkd() -> EmaConfig {
        EmaConfig {
            decay: 0.99,
            epsilon: 1e-5,
            normalize: true,
        }
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.decay) {
            return Err(invalid("EMA decay", self.decay, "must be in [0, 1)"));
        }
        if !(self.epsilon > 0.0 && self.epsilon.is_finite()) {
            return Err(invalid(
                "EMA epsilon",
                self.epsilon,
                "must be finite and > 0",
            ));
        }
        Ok(())
    }
}

/// EMA buffers: `cluster_size [K]` and `embed_avg [K, D]`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmaState {
    /// EMA of per-code counts.
    pub cluster_size: Vec<f32>,
    /// EMA of per-code input sums `[K, D]`.
    pub embed_avg: Array2<f32>,
}

impl EmaState {
    /// Fresh state for `codebook [K, D]`: zero cluster sizes, `embed_avg` = the codebook.
    pub fn new(codebook: ArrayView2<'_, f32>) -> EmaState {
        EmaState {
            cluster_size: vec![0.0; codebook.nrows()],
            embed_avg: codebook.to_owned(),
        }
    }

    /// One EMA step from (merged) statistics, writing the new codes into `codebook [K, D]`.
    /// Returns the number of codes that moved (those with `cluster_size > 0`).
    pub fn update(
        &mut self,
        cfg: &EmaConfig,
        stats: &CodeStats,
        mut codebook: ArrayViewMut2<'_, f32>,
    ) -> Result<usize> {
        cfg.validate()?;
        let (k, d) = self.embed_avg.dim();
        for (what, dim) in [
            ("codebook", codebook.dim()),
            ("CodeStats sums", stats.sums.dim()),
        ] {
            if dim != (k, d) {
                return Err(Error::Shape {
                    what: what.into(),
                    expected: format!("[{k}, {d}] (the EMA state)"),
                    got: vec![dim.0, dim.1],
                });
            }
        }
        len_eq("CodeStats counts", stats.counts.len(), k, "K")?;
        let (a, b) = (f64::from(cfg.decay), 1.0 - f64::from(cfg.decay));
        for c in 0..k {
            let cs = a * f64::from(self.cluster_size[c]) + b * stats.counts[c] as f64;
            self.cluster_size[c] = cs as f32;
            for dd in 0..d {
                let e = a * f64::from(self.embed_avg[[c, dd]]) + b * stats.sums[[c, dd]];
                self.embed_avg[[c, dd]] = e as f32;
            }
        }
        let n: f64 = self.cluster_size.iter().map(|&v| f64::from(v)).sum();
        let eps = f64::from(cfg.epsilon);
        let mut moved = 0;
        let mut row = vec![0f32; d];
        for c in 0..k {
            let cs = f64::from(self.cluster_size[c]);
            if cs <= 0.0 {
                continue;
            }
            let smoothed = (cs + eps) / (n + k as f64 * eps) * n;
            for dd in 0..d {
                row[dd] = (f64::from(self.embed_avg[[c, dd]]) / smoothed) as f32;
            }
            if cfg.normalize {
                l2_normalize(&mut row);
            }
            codebook
                .row_mut(c)
                .iter_mut()
                .zip(&row)
                .for_each(|(o, &v)| *o = v);
            moved += 1;
        }
        Ok(moved)
    }

    /// Resets the EMA buffers of `codes` to match their (restarted) codebook rows, with
    /// `cluster_size = initial_count`.
    pub fn reset_codes(
        &mut self,
        codes: &[u32],
        codebook: ArrayView2<'_, f32>,
        initial_count: f32,
    ) -> Result<()> {
        ids_below(codes, self.cluster_size.len(), "reset codes")?;
        if codebook.dim() != self.embed_avg.dim() {
            return Err(Error::Shape {
                what: "codebook".into(),
                expected: format!("{:?} (the EMA state)", self.embed_avg.dim()),
                got: codebook.shape().to_vec(),
            });
        }
        for &c in codes {
            let c = c as usize;
            self.cluster_size[c] = initial_count;
            self.embed_avg
                .row_mut(c)
                .assign(&(&codebook.row(c) * initial_count.max(f32::MIN_POSITIVE)));
        }
        Ok(())
    }
}

/// Codes whose EMA cluster size is below `threshold` (ascending ids).
pub fn dead_codes(cluster_size: &[f32], threshold: f32) -> Vec<u32> {
    (0..cluster_size.len() as u32)
        .filter(|&c| cluster_size[c as usize] < threshold)
        .collect()
}

/// Restarts `dead` codes from random rows of `recent [R, D]` (distinct rows while `R >= dead`),
/// l2-normalized when `normalize`. Deterministic for a given `seed`.
pub fn restart_codes(
    mut codebook: ArrayViewMut2<'_, f32>,
    dead: &[u32],
    recent: ArrayView2<'_, f32>,
    normalize: bool,
    seed: u64,
) -> Result<()> {
    let (k, d) = codebook.dim();
    ids_below(dead, k, "dead codes")?;
    if recent.ncols() != d {
        return Err(Error::Shape {
            what: "recent inputs".into(),
            expected: format!("[R, {d}]"),
            got: recent.shape().to_vec(),
        });
    }
    if dead.is_empty() {
        return Ok(());
    }
    let r = recent.nrows();
    if r == 0 {
        return Err(invalid(
            "recent inputs rows",
            0,
            "need at least one row to restart codes",
        ));
    }
    let x = standard2(recent);
    finite(slice(&x), d, "recent inputs")?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let picks: Vec<usize> = if r >= dead.len() {
        sample(&mut rng, r, dead.len()).into_vec()
    } else {
        use rand::Rng;
        (0..dead.len()).map(|_| rng.gen_range(0..r)).collect()
    };
    let mut row = vec![0f32; d];
    for (&c, &p) in dead.iter().zip(&picks) {
        row.iter_mut().zip(x.row(p)).for_each(|(o, &v)| *o = v);
        if normalize {
            l2_normalize(&mut row);
        }
        codebook
            .row_mut(c as usize)
            .iter_mut()
            .zip(&row)
            .for_each(|(o, &v)| *o = v);
    }
    Ok(())
}
