//! Batching over an indexed source: seeded epoch-aware shuffling, sharding by (rank, world,
//! worker), worker threads with a bounded prefetch queue, skip accounting and an exactly
//! resumable [`LoaderState`].
//!
//! Order of an epoch: `epoch_order(n, seed, epoch)` (a ChaCha8 permutation, or the identity when
//! `shuffle` is off) is dealt round-robin to ranks (`order[rank], order[rank + world], ...`). The
//! rank's list is cut into chunks of `batch_size` positions; chunk `c` is decoded by worker
//! `c % workers` and chunks are consumed strictly in order, so the output never depends on thread
//! timing. Every sample draws its randomness (crops, flips) from `sample_rng(seed, epoch, index)`.
//!
//! Bad samples are skipped and counted ([`SkipStats`]); a batch is filled from the following
//! samples, so batches keep `batch_size` except the last one of an epoch (dropped when
//! `drop_last`). [`LoaderState`] records the epoch and the position in the rank's list after the
//! last sample of the last batch returned; [`Loader::restore`] continues from exactly there.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result, SkipReason};
use crate::image::Rgb8Image;
use crate::stream::{all_same, merge_ranks, BatchStream, PositionSet, StreamState};
use crate::transform::{write_chw_f32, write_chw_u8};

/// One decoded, transformed sample.
#[derive(Debug, Clone)]
pub struct Item {
    /// Stable identifier (relative path, tar key, `crop:<photo>:<i>`, ...).
    pub key: String,
    /// The transformed image, `size x size`.
    pub image: Rgb8Image,
    pub label: Option<i64>,
    pub caption: Option<String>,
}

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

/// Element type of [`Batch::pixels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    /// f32 in [-1, 1] (`v / 127.5 - 1`).
    #[default]
    F32,
    /// Raw u8 in [0, 255].
    U8,
}

/// One contiguous NCHW buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

/// A batch: `pixels` is NCHW with `shape = [N, 3, H, W]`, ready for a single
/// `Tensor::from_slice(..).view(shape)` copy.
#[derive(Debug, Clone)]
pub struct Batch {
    pub pixels: Pixels,
    pub shape: [usize; 4],
    pub keys: Vec<String>,
    pub labels: Vec<Option<i64>>,
    pub captions: Vec<Option<String>>,
    /// The epoch these samples belong to.
    pub epoch: u64,
}

impl Batch {
    /// The f32 buffer, or `None` for a u8 batch.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.pixels {
            Pixels::F32(v) => Some(v),
            Pixels::U8(_) => None,
        }
    }
    /// The u8 buffer, or `None` for an f32 batch.
    pub fn as_u8(&self) -> Option<&[u8]> {
        match &self.pixels {
            Pixels::U8(v) => Some(v),
            Pixels::F32(_) => None,
        }
    }
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.shape[0]
    }
    /// True for an empty batch (never yielded by a loader).
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// Assembles a batch from same-sized items.
    pub fn from_items(items: Vec<Item>, format: PixelFormat, epoch: u64) -> Self {
        let (h, w) = items
            .first()
            .map_or((0, 0), |it| (it.image.height, it.image.width));
        let per = 3 * h as usize * w as usize;
        let n = items.len();
        let pixels = match format {
            PixelFormat::F32 => {
                let mut buf = vec![0f32; n * per];
                for (it, out) in items.iter().zip(buf.chunks_exact_mut(per.max(1))) {
                    write_chw_f32(&it.image, out);
                }
                Pixels::F32(buf)
            }
            PixelFormat::U8 => {
                let mut buf = vec![0u8; n * per];
                for (it, out) in items.iter().zip(buf.chunks_exact_mut(per.max(1))) {
                    write_chw_u8(&it.image, out);
                }
                Pixels::U8(buf)
            }
        };
        let mut keys = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        let mut captions = Vec::with_capacity(n);
        for it in items {
            keys.push(it.key);
            labels.push(it.label);
            captions.push(it.caption);
        }
        Batch {
            pixels,
            shape: [n, 3, h as usize, w as usize],
            keys,
            labels,
            captions,
            epoch,
        }
    }
}

/// Counts of skipped samples by reason, with the first examples.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SkipStats {
    /// Samples skipped in total.
    pub skipped: u64,
    /// Count per [`SkipReason::as_str`].
    pub reasons: BTreeMap<String, u64>,
    /// The first [`SkipStats::MAX_EXAMPLES`] `(key, reason)` pairs.
    pub examples: Vec<(String, String)>,
}

impl SkipStats {
    /// How many `(key, reason)` examples are kept.
    pub const MAX_EXAMPLES: usize = 1000;
    /// Records one skipped sample.
    pub fn record(&mut self, key: &str, reason: &SkipReason) {
        self.skipped += 1;
        *self.reasons.entry(reason.as_str().to_string()).or_default() += 1;
        if self.examples.len() < Self::MAX_EXAMPLES {
            self.examples.push((key.to_string(), reason.to_string()));
        }
    }
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

type Chunk = Vec<(usize, std::result::Result<Item, SkipReason>)>;

struct Pipeline {
    rxs: Vec<Receiver<Chunk>>,
    handles: Vec<JoinHandle<()>>,
    n_chunks: usize,
    next_chunk: usize,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.rxs.clear(); // workers see a closed channel and stop
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

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
    pipeline: Option<Pipeline>,
    pending: VecDeque<(usize, std::result::Result<Item, SkipReason>)>,
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
        let b = self.cfg.batch_size;
        let start = self.cursor.min(self.order.len());
        let n_chunks = (self.order.len() - start).div_ceil(b);
        let mut rxs = Vec::new();
        let mut handles = Vec::new();
        for w in 0..self.cfg.workers {
            let (tx, rx) = bounded::<Chunk>(self.cfg.prefetch.max(1));
            let (source, order) = (Arc::clone(&self.source), Arc::clone(&self.order));
            let (seed, epoch, workers) = (self.cfg.seed, self.epoch, self.cfg.workers);
            let h = std::thread::Builder::new()
                .name(format!("semhitok-data-{w}"))
                .spawn(move || {
                    for c in (w..n_chunks).step_by(workers) {
                        let lo = start + c * b;
                        let hi = (lo + b).min(order.len());
                        let chunk: Chunk = (lo..hi)
                            .map(|pos| (pos, load_one(&*source, order[pos], seed, epoch)))
                            .collect();
                        if tx.send(chunk).is_err() {
                            return;
                        }
                    }
                })
                .expect("spawning a loader thread");
            rxs.push(rx);
            handles.push(h);
        }
        self.pipeline = Some(Pipeline {
            rxs,
            handles,
            n_chunks,
            next_chunk: 0,
        });
    }

    /// Next decoded `(position, result)` of this epoch, or `None` at its end.
    fn next_result(&mut self) -> Option<(usize, std::result::Result<Item, SkipReason>)> {
        loop {
            if let Some(x) = self.pending.pop_front() {
                return Some(x);
            }
            if self.pipeline.is_none() {
                self.start_pipeline();
            }
            let p = self.pipeline.as_mut()?;
            if p.next_chunk >= p.n_chunks {
                return None;
            }
            let c = p.next_chunk;
            p.next_chunk += 1;
            if p.rxs.is_empty() {
                // workers == 0: decode inline.
                let b = self.cfg.batch_size;
                let lo = self.cursor.min(self.order.len());
                let hi = (lo + b).min(self.order.len());
                for pos in lo..hi {
                    let r = load_one(&*self.source, self.order[pos], self.cfg.seed, self.epoch);
                    self.pending.push_back((pos, r));
                }
            } else {
                let w = c % p.rxs.len();
                match p.rxs[w].recv() {
                    Ok(chunk) => self.pending.extend(chunk),
                    Err(_) => return None, // a worker died: end the epoch (counted below)
                }
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let mut empty_epochs = 0;
        loop {
            if self.done {
                return None;
            }
            let mut items = Vec::with_capacity(self.cfg.batch_size);
            let mut epoch_ended = false;
            while items.len() < self.cfg.batch_size {
                match self.next_result() {
                    Some((pos, res)) => {
                        self.cursor = pos + 1;
                        match res {
                            Ok(it) => items.push(it),
                            Err(r) => {
                                let key = self.source.key(self.order[pos]);
                                self.stats.record(&key, &r);
                            }
                        }
                    }
                    None => {
                        epoch_ended = true;
                        break;
                    }
                }
            }
            let epoch = self.epoch;
            if epoch_ended {
                let expected = self.order.len();
                if self.cursor < expected {
                    // Only reachable if a worker thread died: never end an epoch silently short.
                    let missing = expected - self.cursor;
                    for _ in 0..missing {
                        self.stats
                            .record("<loader>", &SkipReason::Corrupt("worker stopped".into()));
                    }
                }
                self.pipeline = None;
                self.pending.clear();
                self.epoch += 1;
                self.cursor = 0;
                if self.cfg.epochs.is_some_and(|e| self.epoch >= e) {
                    self.done = true;
                }
                if items.is_empty() || (self.cfg.drop_last && items.len() < self.cfg.batch_size) {
                    // An epoch dealt after a world-size change may leave this rank nothing.
                    if !self.bases.contains_key(&epoch) {
                        empty_epochs += 1;
                    }
                    if empty_epochs > 1 {
                        // Two epochs without a single batch: stop rather than spin forever.
                        self.done = true;
                        return None;
                    }
                    continue;
                }
            }
            return Some(Batch::from_items(items, self.cfg.format, epoch));
        }
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
