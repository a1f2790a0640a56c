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

/// Where an indexed loader stands; serialize it into a checkpoint and give it to
/// [`Loader::restore`]. The identifying fields must match the restoring loader.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    /// Samples of this rank's epoch list already consumed.
    pub cursor: usize,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    pub len: usize,
    pub shuffle: bool,
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
    /// Samples per epoch on this rank.
    pub fn samples_per_epoch(&self) -> usize {
        let n = self.source.len();
        let w = self.cfg.world;
        let n = if self.cfg.even_shards { n / w * w } else { n };
        n / w + usize::from(self.cfg.rank < n % w)
    }
    /// The state after the last batch returned.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            epoch: self.epoch,
            cursor: self.cursor,
            seed: self.cfg.seed,
            rank: self.cfg.rank,
            world: self.cfg.world,
            len: self.source.len(),
            shuffle: self.cfg.shuffle,
        }
    }
    /// Continues from `state`; the next batch is the one that followed when it was taken.
    pub fn restore(&mut self, state: &LoaderState) -> Result<()> {
        let mine = self.state();
        let same = (mine.seed, mine.rank, mine.world, mine.len, mine.shuffle)
            == (
                state.seed,
                state.rank,
                state.world,
                state.len,
                state.shuffle,
            );
        if !same {
            return Err(Error::State(format!(
                "saved for seed {} rank {}/{} len {} shuffle {}, loader has seed {} rank {}/{} len {} shuffle {}",
                state.seed, state.rank, state.world, state.len, state.shuffle,
                mine.seed, mine.rank, mine.world, mine.len, mine.shuffle
            )));
        }
        if state.cursor > self.samples_per_epoch() {
            return Err(Error::State(format!(
                "cursor {} beyond the {} samples of an epoch",
                state.cursor,
                self.samples_per_epoch()
            )));
        }
        self.pipeline = None;
        self.pending.clear();
        self.epoch = state.epoch;
        self.cursor = state.cursor;
        self.done = self.cfg.epochs.is_some_and(|e| self.epoch >= e);
        Ok(())
    }

    fn ensure_order(&mut self) {
        if self.order_epoch != Some(self.epoch) {
            let all = epoch_order(
                self.source.len(),
                self.cfg.seed,
                self.epoch,
                self.cfg.shuffle,
            );
            let mine = shard(&all, self.cfg.rank, self.cfg.world, self.cfg.even_shards);
            self.order = Arc::new(mine);
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
                    empty_epochs += 1;
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
