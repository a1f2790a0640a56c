//! Seeded synthetic images for tests and benchmarks (no files): each image is a sum of a few
//! random 2-D sinusoids per channel plus a colored disc, in [-1, 1]. Image `i` depends only on
//! `(seed, i)`, so the iterator state is one counter.

use crate::error::{Error, Result};
use crate::trainer::{Batch, Batches};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// Infinite stream of synthetic batches.
#[derive(Debug, Clone)]
pub struct SyntheticBatches {
    pub seed: u64,
    pub batch_size: i64,
    pub size: i64,
    /// Global images consumed so far (all ranks together).
    pub index: u64,
    /// This process's shard: (rank, world size).
    pub shard: (usize, usize),
}

impl SyntheticBatches {
    pub fn new(seed: u64, batch_size: i64, size: i64) -> Self {
        Self {
            seed,
            batch_size,
            size,
            index: 0,
            shard: (0, 1),
        }
    }

    /// Rank `rank` of `world`: each batch is this rank's slice of a global batch of
    /// `world * batch_size` images ([`crate::dist::shard_range`]).
    pub fn sharded(mut self, rank: usize, world: usize) -> Self {
        self.shard = (rank, world.max(1));
        self
    }
}

/// Synthetic image number `i`: `[3, size, size]` f32 in [-1, 1].
pub fn image(seed: u64, i: u64, size: i64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let s = size as usize;
    let mut out = vec![0f32; 3 * s * s];
    let waves: Vec<[f32; 5]> = (0..3)
        .map(|_| {
            [
                rng.gen_range(0.5..3.0),
                rng.gen_range(0.5..3.0),
                rng.gen_range(0.0..std::f32::consts::TAU),
                rng.gen_range(0.2..0.5),
                rng.gen_range(-0.3..0.3),
            ]
        })
        .collect();
    let (cx, cy, r) = (
        rng.gen_range(0.2..0.8f32),
        rng.gen_range(0.2..0.8f32),
        rng.gen_range(0.1..0.3f32),
    );
    let disc: [f32; 3] = [
        rng.gen_range(-1.0..1.0),
        rng.gen_range(-1.0..1.0),
        rng.gen_range(-1.0..1.0),
    ];
    for c in 0..3 {
        let [fx, fy, ph, amp, off] = waves[c];
        for y in 0..s {
            for x in 0..s {
                let u = x as f32 / s as f32;
                let v = y as f32 / s as f32;
                let mut val = off + amp * (std::f32::consts::TAU * (fx * u + fy * v) + ph).sin();
                if (u - cx).powi(2) + (v - cy).powi(2) < r * r {
                    val = 0.5 * val + 0.5 * disc[c];
                }
                out[c * s * s + y * s + x] = val.clamp(-1.0, 1.0);
            }
        }
    }
    out
}

impl SyntheticBatches {
    /// The next batch of images `[B, 3, H, W]` in [-1, 1] on `device` (what
    /// [`Batches::next_batch`] wraps as [`Batch::Images`]).
    pub fn next_images(&mut self, device: Device) -> Result<Tensor> {
        let mut data = Vec::with_capacity((self.batch_size * 3 * self.size * self.size) as usize);
        let (rank, world) = self.shard;
        let per_rank = self.batch_size as u64;
        for i in crate::dist::shard_range(self.index, rank, world, per_rank) {
            data.extend(image(self.seed, i, self.size));
        }
        self.index += per_rank * world as u64;
        Ok(Tensor::from_slice(&data)
            .reshape([self.batch_size, 3, self.size, self.size])
            .to_kind(Kind::Float)
            .to_device(device))
    }
}

impl Batches for SyntheticBatches {
    fn next_batch(&mut self, device: Device) -> Result<Batch> {
        self.next_images(device).map(Batch::Images)
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "synthetic", "seed": self.seed, "index": self.index })
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let index = state.get("index").and_then(|v| v.as_u64()).ok_or_else(|| {
            Error::Input(format!("synthetic data state without `index`: {state}"))
        })?;
        let seed = state.get("seed").and_then(|v| v.as_u64());
        if seed != Some(self.seed) {
            return Err(Error::Input(format!(
                "synthetic data state has seed {seed:?}, the config says {}",
                self.seed
            )));
        }
        self.index = index;
        Ok(())
    }
}
