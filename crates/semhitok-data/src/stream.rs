//! The one batch-stream interface the trainer (and `semhitok tokenize`) sees: [`BatchStream`],
//! implemented by the indexed [`Loader`](crate::Loader) (ImageNet folders, Fashion-MNIST, photo
//! crops through [`PhotoCrops::train`](crate::PhotoCrops::train)) and by
//! [`WdsLoader`](crate::WdsLoader) (webdataset tar shards), with one serde state,
//! [`StreamState`], that goes into a checkpoint.
//!
//! # Ranks, epochs and resume
//! * Rank and world size come from the caller ([`RankWorld::from_env`] reads `RANK` and
//!   `WORLD_SIZE` as torchrun sets them). For a given epoch the ranks' parts are disjoint and
//!   together are the whole dataset: sample positions of the epoch's seeded permutation for
//!   indexed sources, shards for tar streams; every epoch is reshuffled from `(seed, epoch)`.
//! * [`BatchStream::state`] is this rank's position only. Before a checkpoint of a multi-rank
//!   run, gather every rank's state and combine them with [`StreamState::merge`]; the merged
//!   state restores each rank exactly when the world size is unchanged, and re-derives the
//!   positions for a different world size (or worker count, for tar streams): what any rank
//!   had consumed of the unfinished epochs is recorded as that epoch's *base*, and the rest of the
//!   epoch is dealt to the new ranks, so no sample is repeated and none is lost in that epoch.
//! * Ranks are never in lockstep in samples (skipped samples are refilled from the following
//!   ones), so after a while ranks can be in different epochs; an epoch boundary neither waits
//!   for the other ranks nor repeats samples.
//!
//! ```no_run
//! use semhitok_data::{BatchStream, StreamState};
//! # fn f(stream: &mut dyn BatchStream, others: Vec<StreamState>) -> semhitok_data::Result<()> {
//! let batch = stream.next_batch().expect("endless"); // u8 or f32 NCHW + keys, labels, captions
//! let mut all = vec![stream.state()];
//! all.extend(others);                                 // the other ranks' states (all-gather)
//! let saved = StreamState::merge(&all)?;              // serde: into the checkpoint
//! stream.restore(&saved)?;                            // same or different world size
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::loader::{Batch, LoaderState, SkipStats};
use crate::wds::WdsState;

/// A resumable stream of [`Batch`]es.
pub trait BatchStream: Send {
    /// The next batch, or `None` when a bounded stream (`epochs`) has ended. Training streams
    /// are endless.
    fn next_batch(&mut self) -> Option<Batch>;
    /// This rank's position after the last batch returned.
    fn state(&self) -> StreamState;
    /// Continues from `state` (this rank's own, or a [`StreamState::merge`] of all ranks).
    fn restore(&mut self, state: &StreamState) -> Result<()>;
    /// Samples skipped so far, by reason.
    fn skip_stats(&self) -> &SkipStats;
    /// Output `[3, H, W]` of every batch element.
    fn sample_shape(&self) -> [usize; 3];
}

/// The serde state of any [`BatchStream`] (`{"kind": "indexed" | "webdataset", ...}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StreamState {
    Indexed(LoaderState),
    Webdataset(WdsState),
}

impl StreamState {
    /// Combines the states of several ranks of one run (same data, seed and world size) into
    /// one state holding every rank's position.
    pub fn merge(parts: &[StreamState]) -> Result<StreamState> {
        let first = parts
            .first()
            .ok_or_else(|| Error::State("nothing to merge".into()))?;
        match first {
            StreamState::Indexed(_) => {
                let v: Result<Vec<&LoaderState>> = parts
                    .iter()
                    .map(|p| match p {
                        StreamState::Indexed(s) => Ok(s),
                        StreamState::Webdataset(_) => Err(Error::State(
                            "cannot merge indexed and tar-stream states".into(),
                        )),
                    })
                    .collect();
                Ok(StreamState::Indexed(LoaderState::merge(&v?)?))
            }
            StreamState::Webdataset(_) => {
                let v: Result<Vec<&WdsState>> = parts
                    .iter()
                    .map(|p| match p {
                        StreamState::Webdataset(s) => Ok(s),
                        StreamState::Indexed(_) => Err(Error::State(
                            "cannot merge indexed and tar-stream states".into(),
                        )),
                    })
                    .collect();
                Ok(StreamState::Webdataset(WdsState::merge(&v?)?))
            }
        }
    }
}

/// Rank and world size of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RankWorld {
    pub rank: usize,
    pub world: usize,
}

impl RankWorld {
    /// A single process.
    pub const SINGLE: RankWorld = RankWorld { rank: 0, world: 1 };

    /// `RANK` and `WORLD_SIZE` from the environment (as torchrun sets them); both absent: a
    /// single process. A malformed value, only one of the two, or `RANK >= WORLD_SIZE` is an
    /// error naming the variable.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(
            std::env::var("RANK").ok().as_deref(),
            std::env::var("WORLD_SIZE").ok().as_deref(),
        )
    }

    /// As [`RankWorld::from_env`] from given values.
    pub fn from_vars(rank: Option<&str>, world: Option<&str>) -> Result<Self> {
        let parse = |name: &str, v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|e| Error::Config(format!("{name}={v:?}: {e}")))
        };
        let rw = match (rank, world) {
            (None, None) => return Ok(Self::SINGLE),
            (Some(r), Some(w)) => RankWorld {
                rank: parse("RANK", r)?,
                world: parse("WORLD_SIZE", w)?,
            },
            (Some(_), None) => {
                return Err(Error::Config("RANK is set but WORLD_SIZE is not".into()))
            }
            (None, Some(_)) => {
                return Err(Error::Config("WORLD_SIZE is set but RANK is not".into()))
            }
        };
        rw.validate()?;
        Ok(rw)
    }

    /// `world >= 1` and `rank < world`.
    pub fn validate(&self) -> Result<()> {
        if self.world == 0 || self.rank >= self.world {
            return Err(Error::Config(format!(
                "rank {} must be < world size {} (world size >= 1)",
                self.rank, self.world
            )));
        }
        Ok(())
    }
}

/// Default decoding threads: the cores available to this process, divided among the local
/// ranks (`LOCAL_WORLD_SIZE`, default 1), minus one for the training thread; at least 1.
pub fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let local = std::env::var("LOCAL_WORLD_SIZE")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&v| v >= 1)
        .unwrap_or(1);
    (cores / local).saturating_sub(1).max(1)
}

/// A set of non-negative integers as sorted, disjoint, non-adjacent half-open ranges
/// `[start, end)` (positions of an epoch's order already consumed).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PositionSet(pub Vec<[u64; 2]>);

impl PositionSet {
    /// The set of `positions` (any order, duplicates allowed).
    pub fn from_positions(positions: impl IntoIterator<Item = u64>) -> Self {
        let mut v: Vec<u64> = positions.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        let mut out: Vec<[u64; 2]> = Vec::new();
        for p in v {
            match out.last_mut() {
                Some(r) if r[1] == p => r[1] = p + 1,
                _ => out.push([p, p + 1]),
            }
        }
        PositionSet(out)
    }
    /// Whether `p` is in the set.
    pub fn contains(&self, p: u64) -> bool {
        let i = self.0.partition_point(|r| r[1] <= p);
        self.0.get(i).is_some_and(|r| r[0] <= p)
    }
    /// Number of elements.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|r| r[1] - r[0]).sum()
    }
    /// Every element, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().flat_map(|r| r[0]..r[1])
    }
    /// Ranges sorted, disjoint, non-empty and non-adjacent (a state read from disk is checked).
    pub fn is_canonical(&self) -> bool {
        self.0.iter().all(|r| r[0] < r[1]) && self.0.windows(2).all(|w| w[0][1] < w[1][0])
    }
}

/// Checks that every part agrees on `what` and returns the first's value.
pub(crate) fn all_same<T: PartialEq + std::fmt::Debug, S>(
    parts: &[&S],
    what: &str,
    f: impl Fn(&S) -> T,
) -> Result<T> {
    let a = f(parts[0]);
    for p in &parts[1..] {
        let b = f(p);
        if b != a {
            return Err(Error::State(format!(
                "cannot merge states with different {what}: {a:?} vs {b:?}"
            )));
        }
    }
    Ok(a)
}

/// Union of per-rank maps; a rank present twice with different positions is an error.
pub(crate) fn merge_ranks<P: Clone + PartialEq + std::fmt::Debug>(
    maps: impl Iterator<Item = BTreeMap<usize, P>>,
) -> Result<BTreeMap<usize, P>> {
    let mut out: BTreeMap<usize, P> = BTreeMap::new();
    for m in maps {
        for (r, p) in m {
            if let Some(q) = out.get(&r) {
                if *q != p {
                    return Err(Error::State(format!(
                        "rank {r} appears twice with different positions ({q:?} vs {p:?})"
                    )));
                }
            }
            out.insert(r, p);
        }
    }
    Ok(out)
}

/// Serde of an integer-keyed map as a list of `[key, value]` pairs (JSON object keys are
/// strings, which serde cannot turn back into integers inside a tagged enum).
pub(crate) mod int_map {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<K, V, S>(m: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error>
    where
        K: Serialize,
        V: Serialize,
        S: Serializer,
    {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let v: Vec<(K, V)> = Vec::deserialize(d)?;
        Ok(v.into_iter().collect())
    }
}
