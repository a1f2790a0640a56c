//! Sample order: seeded per-epoch permutations, round-robin dealing to ranks, per-sample RNGs.
//! Everything here depends only on `(seed, epoch, index)`, never on thread timing.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::stream::PositionSet;

/// Positions of an epoch's order `0..n` dealt to `rank` of `world`: those not in `base`,
/// round-robin (`rest[rank], rest[rank + world], ...`), the rest first truncated to a multiple
/// of `world` when `even`.
pub fn rank_positions(
    n: usize,
    rank: usize,
    world: usize,
    even: bool,
    base: Option<&PositionSet>,
) -> Vec<usize> {
    match base {
        None => {
            let all: Vec<usize> = (0..n).collect();
            shard(&all, rank, world, even)
        }
        Some(b) => {
            let rest: Vec<usize> = (0..n).filter(|&p| !b.contains(p as u64)).collect();
            shard(&rest, rank, world, even)
        }
    }
}

/// Mixes integers into a 64-bit seed (splitmix64 finalizer chain).
pub fn mix_seed(parts: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        h ^= p;
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

/// The RNG of sample `index` in `epoch`: independent of threads and of the batch it lands in.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix_seed(&[seed, epoch, index, 0x5A3B]))
}

/// The global sample order of `epoch`: a seeded permutation of `0..n` (identity if `!shuffle`).
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if shuffle {
        v.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(&[
            seed, epoch, 0xE90C,
        ])));
    }
    v
}

/// Positions `rank, rank + world, ...` of `order` (optionally truncated to a multiple of `world`).
pub fn shard(order: &[usize], rank: usize, world: usize, even: bool) -> Vec<usize> {
    let n = if even {
        order.len() / world * world
    } else {
        order.len()
    };
    order[..n]
        .iter()
        .skip(rank)
        .step_by(world)
        .copied()
        .collect()
}
