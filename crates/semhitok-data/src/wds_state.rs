//! The serde position of a [`WdsLoader`](crate::WdsLoader): per rank, per stream, the shard
//! and the samples of it already emitted, plus the epoch bases left by a change of layout (world
//! size or streams per rank); and the shard dealing both the loader and the re-derivation use.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::order::epoch_order;
use crate::stream::{all_same, merge_ranks};

/// A stream's position: shard index in its list, and samples of that shard already emitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamPos {
    pub shard_pos: usize,
    pub emitted: u64,
}

/// One rank's position: its epoch and, per stream (decoding thread), the position after the
/// last batch that stream delivered; `next_stream` is the stream the next batch is taken from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WdsRankPos {
    pub epoch: u64,
    pub streams: Vec<StreamPos>,
    pub next_stream: usize,
}

/// How far a shard of an epoch was consumed before the epoch was dealt to the current layout:
/// samples emitted (in its fixed emission order), or all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardDone {
    Emitted(u64),
    All,
}

/// Where a [`WdsLoader`] stands (serde; store it in a checkpoint). See [`crate::stream`] for
/// ranks and layout changes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WdsState {
    pub seed: u64,
    pub n_shards: usize,
    pub shuffle: bool,
    /// World size and streams per rank the positions refer to.
    pub world: usize,
    pub streams_per_rank: usize,
    /// Rank -> position: one entry from [`WdsLoader::state`], all after [`WdsState::merge`].
    #[serde(with = "crate::stream::int_map")]
    pub ranks: BTreeMap<usize, WdsRankPos>,
    /// Epoch -> shard -> consumed before the epoch was dealt to this layout (after a resume with
    /// another world size or worker count); epochs not listed were dealt from their start.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "crate::stream::int_map"
    )]
    pub bases: BTreeMap<u64, ShardBase>,
}

/// Shard -> how far it was consumed (see [`WdsState::bases`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ShardBase(#[serde(with = "crate::stream::int_map")] pub BTreeMap<usize, ShardDone>);

impl WdsState {
    /// One state holding the positions of all `parts` (ranks of one run).
    pub fn merge(parts: &[&WdsState]) -> Result<WdsState> {
        if parts.is_empty() {
            return Err(Error::State("nothing to merge".into()));
        }
        let id = all_same(parts, "data (seed, shards, shuffle, world, streams)", |s| {
            (s.seed, s.n_shards, s.shuffle, s.world, s.streams_per_rank)
        })?;
        let bases = all_same(parts, "epoch bases", |s| s.bases.clone())?;
        let ranks = merge_ranks(parts.iter().map(|s| s.ranks.clone()))?;
        let mut out = WdsState {
            seed: id.0,
            n_shards: id.1,
            shuffle: id.2,
            world: id.3,
            streams_per_rank: id.4,
            ranks,
            bases,
        };
        if out.is_complete() {
            if let Some(lo) = out.ranks.values().map(|p| p.epoch).min() {
                out.bases.retain(|&e, _| e >= lo);
            }
        }
        Ok(out)
    }

    /// Whether every rank `0..world` has a position.
    pub fn is_complete(&self) -> bool {
        (0..self.world).all(|r| self.ranks.contains_key(&r))
    }
}

/// Shards of stream `slot` of `slots` in `epoch`: the epoch's shard permutation without the
/// shards `base` marks done, dealt round-robin over the slots.
pub(crate) fn slot_shards(
    n_shards: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    base: Option<&ShardBase>,
    slot: usize,
    slots: usize,
) -> Vec<usize> {
    epoch_order(n_shards, seed, epoch, shuffle)
        .into_iter()
        .filter(|s| base.and_then(|b| b.0.get(s)) != Some(&ShardDone::All))
        .skip(slot)
        .step_by(slots)
        .collect()
}

/// The epoch and bases a new layout continues from, given a complete state of another one: for
/// every epoch some rank had started and not every rank had finished, finished shards stay
/// finished and a shard read in part continues after its emitted samples.
pub(crate) fn rederive(st: &WdsState) -> (u64, BTreeMap<u64, ShardBase>) {
    let lo = st.ranks.values().map(|p| p.epoch).min().unwrap_or(0);
    let hi = st.ranks.values().map(|p| p.epoch).max().unwrap_or(0);
    let n = st.n_shards;
    let old_slots = st.world * st.streams_per_rank;
    let mut bases = BTreeMap::new();
    let mut first = None;
    for e in lo..=hi {
        let base = st.bases.get(&e);
        let mut done: BTreeMap<usize, ShardDone> = base.map(|b| b.0.clone()).unwrap_or_default();
        for (&r, pos) in &st.ranks {
            if pos.epoch < e {
                continue;
            }
            for s in 0..st.streams_per_rank {
                let list = slot_shards(
                    n,
                    st.seed,
                    e,
                    st.shuffle,
                    base,
                    r * st.streams_per_rank + s,
                    old_slots,
                );
                let p = pos.streams.get(s).copied().unwrap_or_default();
                let (full, partial) = if pos.epoch > e {
                    (list.len(), None)
                } else {
                    let k = p.shard_pos.min(list.len());
                    (
                        k,
                        list.get(k)
                            .filter(|_| p.emitted > 0)
                            .map(|&sh| (sh, p.emitted)),
                    )
                };
                for &sh in &list[..full] {
                    done.insert(sh, ShardDone::All);
                }
                if let Some((sh, k)) = partial {
                    done.insert(sh, ShardDone::Emitted(k));
                }
            }
        }
        let left = n - done.values().filter(|d| **d == ShardDone::All).count();
        if first.is_none() && left > 0 {
            first = Some(e);
        }
        bases.insert(e, ShardBase(done));
    }
    let epoch = first.unwrap_or(hi + 1);
    bases.retain(|&e, _| e >= epoch);
    (epoch, bases)
}
