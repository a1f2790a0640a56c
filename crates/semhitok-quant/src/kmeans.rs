//! Spherical k-means with k-means++ seeding, for initializing cosine codebooks.
//!
//! VQKD (`--quantize_kmeans_init`) runs 10 iterations of cosine k-means on the first batch;
//! empty clusters keep their previous centroid. Seeding here is k-means++ on the unit sphere:
//! each new centre is drawn with probability proportional to `1 - max cos` to the chosen centres
//! (the squared chord distance `|x - c|^2 = 2 - 2 cos`, up to a factor). Assignment uses the fused
//! search, so no `[N, K]` matrix is formed.

use crate::check::{finite, l2_normalize, slice, standard2};
use crate::ema::CodeStats;
use crate::error::{invalid, Error, Result};
use crate::search::{Metric, PackedCodebook};
use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Spherical k-means settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KMeansConfig {
    /// Number of centres K.
    pub k: usize,
    /// Lloyd iterations after seeding.
    pub iters: usize,
    /// RNG seed (ChaCha8).
    pub seed: u64,
}

impl KMeansConfig {
    /// VQKD's setting: 10 iterations.
    pub fn vqkd(k: usize, seed: u64) -> KMeansConfig {
        KMeansConfig { k, iters: 10, seed }
    }
}

/// Row-normalized copy of `data [N, D]` after shape/finiteness checks (N >= k).
fn normalized(data: ArrayView2<'_, f32>, k: usize) -> Result<Array2<f32>> {
    let (n, d) = data.dim();
    if k == 0 {
        return Err(invalid("k-means k", k, "must be >= 1"));
    }
    if n < k || d == 0 {
        return Err(Error::Shape {
            what: "k-means data".into(),
            expected: format!("[N, D] with N >= k = {k} and D >= 1"),
            got: vec![n, d],
        });
    }
    let x = standard2(data);
    finite(slice(&x), d, "k-means data")?;
    let mut x = x.into_owned();
    for mut row in x.rows_mut() {
        l2_normalize(row.as_slice_mut().expect("C-order row"));
    }
    Ok(x)
}

/// k-means++ seeding on the unit sphere: data `[N, D]` -> `k` unit centres `[k, D]`.
pub fn kmeans_plus_plus(data: ArrayView2<'_, f32>, k: usize, seed: u64) -> Result<Array2<f32>> {
    let x = normalized(data, k)?;
    Ok(seed_centres(&x, k, &mut ChaCha8Rng::seed_from_u64(seed)))
}

fn seed_centres(x: &Array2<f32>, k: usize, rng: &mut ChaCha8Rng) -> Array2<f32> {
    let (n, d) = x.dim();
    let xs = x.as_slice().expect("owned C-order array");
    let mut centres = Array2::<f32>::zeros((k, d));
    let mut dist = vec![f32::INFINITY; n];
    let mut pick = rng.gen_range(0..n);
    for c in 0..k {
        let cv = x.row(pick).to_owned();
        centres.row_mut(c).assign(&cv);
        let cv = cv.as_slice().expect("owned row");
        dist.par_chunks_mut(1024).enumerate().for_each(|(t, ch)| {
            for (i, v) in ch.iter_mut().enumerate() {
                let r = t * 1024 + i;
                let dot: f32 = xs[r * d..(r + 1) * d]
                    .iter()
                    .zip(cv)
                    .map(|(a, b)| a * b)
                    .sum();
                *v = v.min((1.0 - dot).max(0.0));
            }
        });
        if c + 1 == k {
            break;
        }
        let total: f64 = dist.iter().map(|&v| f64::from(v)).sum();
        pick = if total > 0.0 {
            let mut target = rng.gen::<f64>() * total;
            let mut chosen = n - 1;
            for (i, &v) in dist.iter().enumerate() {
                target -= f64::from(v);
                if target < 0.0 && v > 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        } else {
            // Every point coincides with a centre (duplicated data): any point will do.
            rng.gen_range(0..n)
        };
    }
    centres
}

/// Spherical k-means: k-means++ seeding, then `cfg.iters` Lloyd steps (assign by cosine,
/// centre = normalized sum; empty clusters keep their centre). data `[N, D]` -> `[k, D]` unit rows.
pub fn spherical_kmeans(data: ArrayView2<'_, f32>, cfg: &KMeansConfig) -> Result<Array2<f32>> {
    let x = normalized(data, cfg.k)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut centres = seed_centres(&x, cfg.k, &mut rng);
    for _ in 0..cfg.iters {
        let packed = PackedCodebook::new(centres.view(), Metric::Cosine)?;
        let assign = packed.nearest(x.view())?;
        let stats = CodeStats::from_batch(cfg.k, x.view(), &assign.ids)?;
        for c in 0..cfg.k {
            if stats.counts[c] == 0 {
                continue;
            }
            let mut row: Vec<f32> = stats.sums.row(c).iter().map(|&v| v as f32).collect();
            l2_normalize(&mut row);
            centres
                .row_mut(c)
                .iter_mut()
                .zip(&row)
                .for_each(|(o, &v)| *o = v);
        }
    }
    Ok(centres)
}
