//! Batching over an indexed source: seeded epoch-aware shuffling, sharding by (rank, world,
//! worker), worker threads with a bounded prefetch queue, skip accounting and an exactly
//! resumable [`LoaderState`].
//!
//! Order of an epoch: `epoch_order(n, seed, epoch)` (a ChaCha8 permutation, or the identity when
//! `shuffle` is off) is dealt round-robin to ranks (`order[rank], order[rank + world], ...`). The
//! rank's list is cut into chunks of [`CHUNK`] positions decoded by any idle worker of an
//! ordered pool and consumed strictly in order, so the output never depends on thread timing. Every sample draws its randomness (crops, flips) from `sample_rng(seed, epoch, index)`.
//!
//! Bad samples are skipped and counted ([`SkipStats`]); a batch is filled from the following
//! samples, so batches keep `batch_size` except the last one of an epoch (dropped when
//! `drop_last`). [`LoaderState`] records the epoch and the position in the rank's list after the
//! last sample of the last batch returned; [`Loader::restore`] continues from exactly there.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;

use crate::batch::{next_batch, BatchRules, EpochSequence, Step};
pub use crate::batch::{Batch, Item, PixelFormat, Pixels, SkipStats};
use crate::error::{Error, Result, SkipReason};
pub use crate::order::{epoch_order, mix_seed, rank_positions, sample_rng, shard};
use crate::pool::OrderedPool;
use crate::stream::{all_same, merge_ranks, BatchStream, PositionSet, StreamState};

/// A dataset whose samples are addressed by index `0..len()`.
pub trait IndexedSource: Send + Sync {
    /// Number of samples in one epoch.
    fn len(&self) -> usize;
    /// True when `len() == 0`.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The key of sample `index` (for skip reports).
    fn key(&self, index: usize) -> String;
    /// Output `(height, width)` of every item.
    fn output_size(&self) -> (u32, u32);
    /// Loads, decodes and transforms sample `index`; randomness comes only from `rng`.
    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> std::result::Result<Item, SkipReason>;
}

/// Loader settings shared by all sources.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    /// Shuffle the sample order each epoch (seeded by `seed` and the epoch).
    pub shuffle: bool,
    /// Drop the last, smaller batch of each epoch.
    pub drop_last: bool,
    /// Truncate the epoch to a multiple of `world` so every rank gets the same count.
    pub even_shards: bool,
    /// Decoding threads; 0 decodes on the calling thread.
    pub workers: usize,
    /// Decoded chunks (of `batch_size` samples) each worker may hold ahead.
    pub prefetch: usize,
    pub rank: usize,
    pub world: usize,
    pub format: PixelFormat,
    /// Stop after this many epochs (`None`: endless).
    pub epochs: Option<u64>,
}

impl LoaderConfig {
    /// Training defaults: shuffled, endless, 2 workers, prefetch 2, single rank, f32.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        Self {
            batch_size,
            seed,
            shuffle: true,
            drop_last: true,
            even_shards: true,
            workers: 2,
            prefetch: 2,
            rank: 0,
            world: 1,
            format: PixelFormat::F32,
            epochs: None,
        }
    }
    /// Evaluation defaults: in order, one epoch, keep the last batch.
    pub fn eval(batch_size: usize) -> Self {
        Self {
            shuffle: false,
            drop_last: false,
            even_shards: false,
            epochs: Some(1),
            ..Self::train(batch_size, 0)
        }
    }
    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Config("batch_size must be >= 1".into()));
        }
        if self.world == 0 || self.rank >= self.world {
            return Err(Error::Config(format!(
                "rank {} must be < world {} (world >= 1)",
                self.rank, self.world
            )));
        }
        Ok(())
    }
}

/// One rank's position: its epoch and the samples of its list of that epoch already consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RankPos {
    pub epoch: u64,
    pub cursor: usize,
}

/// Where an indexed loader stands; serialize it into a checkpoint and give it to
/// [`Loader::restore`] (see [`crate::stream`] for ranks and world-size changes). The identifying
/// fields (`seed`, `len`, `shuffle`, `even_shards`) must match the restoring loader.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoaderState {
    pub seed: u64,
    pub len: usize,
    pub shuffle: bool,
    pub even_shards: bool,
    /// World size the positions refer to.
    pub world: usize,
    /// Rank -> position: one entry from [`Loader::state`], every rank after
    /// [`LoaderState::merge`].
    #[serde(with = "crate::stream::int_map")]
    pub ranks: BTreeMap<usize, RankPos>,
    /// Epoch -> positions of its order consumed before it was dealt to this world size (after
    /// a resume with another world size); an epoch not listed was dealt from its start.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "crate::stream::int_map"
    )]
    pub bases: BTreeMap<u64, PositionSet>,
}

impl LoaderState {
    /// One state holding the positions of all `parts` (ranks of one run).
    pub fn merge(parts: &[&LoaderState]) -> Result<LoaderState> {
        if parts.is_empty() {
            return Err(Error::State("nothing to merge".into()));
        }
        let id = all_same(
            parts,
            "data (seed, len, shuffle, even_shards, world)",
            |s| (s.seed, s.len, s.shuffle, s.even_shards, s.world),
        )?;
        let bases = all_same(parts, "epoch bases", |s| s.bases.clone())?;
        let ranks = merge_ranks(parts.iter().map(|s| s.ranks.clone()))?;
        let mut out = LoaderState {
            seed: id.0,
            len: id.1,
            shuffle: id.2,
            even_shards: id.3,
            world: id.4,
            ranks,
            bases,
        };
        out.prune_bases();
        Ok(out)
    }

    /// Whether every rank `0..world` has a position.
    pub fn is_complete(&self) -> bool {
        (0..self.world).all(|r| self.ranks.contains_key(&r))
    }

    /// Drops the bases of epochs every rank has finished (only known for a complete state).
    fn prune_bases(&mut self) {
        if self.is_complete() {
            if let Some(lo) = self.ranks.values().map(|p| p.epoch).min() {
                self.bases.retain(|&e, _| e >= lo);
            }
        }
    }
}

/// Samples per unit of work of the decoding pool.
pub(crate) const CHUNK: usize = 8;

/// Chunks the pool may hold ahead: `prefetch` batches, and at least two per worker.
pub(crate) fn in_flight(batch: usize, prefetch: usize, workers: usize) -> usize {
    (prefetch.max(1) * batch.div_ceil(CHUNK)).max(2 * workers)
}

type Decoded = (usize, std::result::Result<Item, SkipReason>);

fn load_one(
    source: &dyn IndexedSource,
    index: usize,
    seed: u64,
    epoch: u64,
) -> std::result::Result<Item, SkipReason> {
    let mut rng = sample_rng(seed, epoch, index as u64);
    match std::panic::catch_unwind(AssertUnwindSafe(|| source.get(index, &mut rng))) {
        Ok(r) => r,
        Err(_) => Err(SkipReason::Corrupt("decoder panicked".into())),
    }
}

/// An endless (or `epochs`-bounded) iterator of [`Batch`]es over an [`IndexedSource`].
pub struct Loader {
    source: Arc<dyn IndexedSource>,
    cfg: LoaderConfig,
    epoch: u64,
    cursor: usize,
    order: Arc<Vec<usize>>,
    order_epoch: Option<u64>,
    bases: BTreeMap<u64, PositionSet>,
    pipeline: Option<OrderedPool<Decoded>>,
    pending: VecDeque<Decoded>,
    stats: SkipStats,
    done: bool,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("len", &self.source.len())
            .field("epoch", &self.epoch)
            .field("cursor", &self.cursor)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Loader {
    /// A loader starting at epoch 0.
    pub fn new(source: Arc<dyn IndexedSource>, cfg: LoaderConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            source,
            cfg,
            epoch: 0,
            cursor: 0,
            order: Arc::new(Vec::new()),
            order_epoch: None,
            bases: BTreeMap::new(),
            pipeline: None,
            pending: VecDeque::new(),
            stats: SkipStats::default(),
            done: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }
    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// Skipped samples so far (since construction or the last restore).
    pub fn skip_stats(&self) -> &SkipStats {
        &self.stats
    }
    /// Samples of the current epoch dealt to this rank.
    pub fn samples_per_epoch(&self) -> usize {
        self.list_len(self.epoch)
    }

    fn list_len(&self, epoch: u64) -> usize {
        let (n, w) = (self.source.len(), self.cfg.world);
        match self.bases.get(&epoch) {
            None => {
                let n = if self.cfg.even_shards { n / w * w } else { n };
                n / w + usize::from(self.cfg.rank < n % w)
            }
            Some(b) => rank_positions(n, self.cfg.rank, w, self.cfg.even_shards, Some(b)).len(),
        }
    }

    /// This rank's position after the last batch returned.
    pub fn state(&self) -> LoaderState {
        let mut st = LoaderState {
            seed: self.cfg.seed,
            len: self.source.len(),
            shuffle: self.cfg.shuffle,
            even_shards: self.cfg.even_shards,
            world: self.cfg.world,
            ranks: BTreeMap::from([(
                self.cfg.rank,
                RankPos {
                    epoch: self.epoch,
                    cursor: self.cursor,
                },
            )]),
            bases: self.bases.clone(),
        };
        st.prune_bases();
        st
    }

    /// Continues from `state`: exactly where this rank stood when it holds this rank's position
    /// at the same world size; re-derived (see [`crate::stream`]) when it holds every rank's
    /// position at another world size.
    pub fn restore(&mut self, state: &LoaderState) -> Result<()> {
        let mine = (
            self.cfg.seed,
            self.source.len(),
            self.cfg.shuffle,
            self.cfg.even_shards,
        );
        let theirs = (state.seed, state.len, state.shuffle, state.even_shards);
        if mine != theirs {
            return Err(Error::State(format!(
                "saved for (seed, samples, shuffle, even_shards) = {theirs:?}, the loader has {mine:?}"
            )));
        }
        if state.world == 0 || state.bases.values().any(|b| !b.is_canonical()) {
            return Err(Error::State(
                "malformed state (world 0 or unsorted bases)".into(),
            ));
        }
        self.pipeline = None;
        self.pending.clear();
        self.order_epoch = None;
        let own = state
            .ranks
            .get(&self.cfg.rank)
            .filter(|_| state.world == self.cfg.world);
        if let Some(pos) = own {
            self.bases = state.bases.clone();
            let n = self.list_len(pos.epoch);
            if pos.cursor > n {
                return Err(Error::State(format!(
                    "cursor {} beyond the {n} samples of rank {}'s epoch {}",
                    pos.cursor, self.cfg.rank, pos.epoch
                )));
            }
            self.epoch = pos.epoch;
            self.cursor = pos.cursor;
        } else if state.is_complete() {
            self.rederive(state);
        } else {
            return Err(Error::State(format!(
                "the state holds ranks {:?} of world size {}; rank {} of world size {} needs its own \
                 position, or every rank's to re-derive it (merge all ranks' states before saving)",
                state.ranks.keys().collect::<Vec<_>>(),
                state.world,
                self.cfg.rank,
                self.cfg.world
            )));
        }
        self.done = self.cfg.epochs.is_some_and(|e| self.epoch >= e);
        Ok(())
    }

    /// New positions from a complete state of another world size: for every epoch some rank
    /// had started and not every rank had finished, what was consumed becomes its base and the
    /// rest is dealt to this world.
    fn rederive(&mut self, st: &LoaderState) {
        let n = self.source.len();
        let lo = st.ranks.values().map(|p| p.epoch).min().unwrap_or(0);
        let hi = st.ranks.values().map(|p| p.epoch).max().unwrap_or(0);
        let (world, even) = (self.cfg.world, self.cfg.even_shards);
        let mut bases = BTreeMap::new();
        let mut first = None;
        for e in lo..=hi {
            let base = st.bases.get(&e);
            let mut consumed: Vec<u64> = base.map(|b| b.iter().collect()).unwrap_or_default();
            for (&r, pos) in &st.ranks {
                if pos.epoch < e {
                    continue;
                }
                let list = rank_positions(n, r, st.world, st.even_shards, base);
                let take = if pos.epoch > e {
                    list.len()
                } else {
                    pos.cursor.min(list.len())
                };
                consumed.extend(list[..take].iter().map(|&p| p as u64));
            }
            let set = PositionSet::from_positions(consumed);
            let rest = n - set.count() as usize;
            let dealt = if even { rest / world * world } else { rest };
            if first.is_none() && dealt > 0 {
                first = Some(e);
            }
            bases.insert(e, set);
        }
        self.epoch = first.unwrap_or(hi + 1);
        self.cursor = 0;
        bases.retain(|&e, _| e >= self.epoch);
        self.bases = bases;
    }

    fn ensure_order(&mut self) {
        if self.order_epoch != Some(self.epoch) {
            let all = epoch_order(
                self.source.len(),
                self.cfg.seed,
                self.epoch,
                self.cfg.shuffle,
            );
            let mine = rank_positions(
                self.source.len(),
                self.cfg.rank,
                self.cfg.world,
                self.cfg.even_shards,
                self.bases.get(&self.epoch),
            );
            self.order = Arc::new(mine.into_iter().map(|p| all[p]).collect());
            self.order_epoch = Some(self.epoch);
        }
    }

    fn start_pipeline(&mut self) {
        self.ensure_order();
        let start = self.cursor.min(self.order.len());
        if self.cfg.workers == 0 {
            return;
        }
        let (source, order) = (Arc::clone(&self.source), Arc::clone(&self.order));
        let (seed, epoch) = (self.cfg.seed, self.epoch);
        let mut lo = start;
        let produce = move || {
            if lo >= order.len() {
                return None;
            }
            let hi = (lo + CHUNK).min(order.len());
            let c: Vec<(usize, usize)> = (lo..hi).map(|p| (p, order[p])).collect();
            lo = hi;
            Some(c)
        };
        let map = move |(pos, index): (usize, usize)| (pos, load_one(&*source, index, seed, epoch));
        let n = in_flight(self.cfg.batch_size, self.cfg.prefetch, self.cfg.workers);
        self.pipeline = Some(OrderedPool::spawn(
            "semhitok-data",
            self.cfg.workers,
            n,
            produce,
            map,
        ));
    }
}

impl EpochSequence for Loader {
    fn next_step(&mut self) -> Step {
        loop {
            if let Some((pos, res)) = self.pending.pop_front() {
                self.cursor = pos + 1;
                return match res {
                    Ok(it) => Step::Item(it),
                    Err(r) => Step::Skip(self.source.key(self.order[pos]), r),
                };
            }
            if self.order_epoch != Some(self.epoch) {
                self.start_pipeline();
            }
            if self.cursor >= self.order.len() {
                return Step::End;
            }
            match self.pipeline.as_mut() {
                // workers == 0: decode inline.
                None => {
                    let pos = self.cursor;
                    let r = load_one(&*self.source, self.order[pos], self.cfg.seed, self.epoch);
                    self.pending.push_back((pos, r));
                }
                Some(p) => match p.next() {
                    Some(chunk) => self.pending.extend(chunk),
                    None => {
                        // Only reachable if a thread died: never end an epoch silently short.
                        self.cursor += 1;
                        let why = SkipReason::Corrupt("worker stopped".into());
                        return Step::Skip("<loader>".into(), why);
                    }
                },
            }
        }
    }
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn end_epoch(&mut self) -> bool {
        let rederived = self.bases.contains_key(&self.epoch);
        self.pipeline = None;
        self.pending.clear();
        self.epoch += 1;
        self.cursor = 0;
        rederived
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let rules = BatchRules {
            batch_size: self.cfg.batch_size,
            drop_last: self.cfg.drop_last,
            format: self.cfg.format,
            epochs: self.cfg.epochs,
        };
        let mut stats = std::mem::take(&mut self.stats);
        let mut done = self.done;
        let b = next_batch(self, rules, &mut stats, &mut done);
        self.stats = stats;
        self.done = done;
        b
    }
}

impl BatchStream for Loader {
    fn next_batch(&mut self) -> Option<Batch> {
        self.next()
    }
    fn state(&self) -> StreamState {
        StreamState::Indexed(Loader::state(self))
    }
    fn restore(&mut self, state: &StreamState) -> Result<()> {
        match state {
            StreamState::Indexed(s) => Loader::restore(self, s),
            StreamState::Webdataset(_) => Err(Error::State(
                "a tar-stream (webdataset) state cannot restore an indexed loader".into(),
            )),
        }
    }
    fn skip_stats(&self) -> &SkipStats {
        &self.stats
    }
    fn sample_shape(&self) -> [usize; 3] {
        let (h, w) = self.source.output_size();
        [3, h as usize, w as usize]
    }
}
