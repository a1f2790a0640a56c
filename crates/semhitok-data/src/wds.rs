//! Batches from webdataset tar shards (COYO-700M, LAION as img2dataset writes them; the
//! format is read by [`crate::tar_samples`]).
//!
//! Order: each epoch the shard list is permuted (seed, epoch) and dealt to the
//! `world * streams` streams (`slot = rank * streams + stream`, streams per rank = the worker
//! count, at most this rank's share of the shards); a stream reads its shards in turn through a
//! shuffle buffer of `shuffle_buffer` samples seeded by (seed, epoch, shard). The streams of a
//! rank are interleaved one sample at a time, round-robin ([`crate::wds_read`]), and batches are
//! cut from that one sequence by the rule every loader shares ([`crate::batch`]): only the last
//! batch of an epoch can be short. Decoding is spread over all workers by an ordered pool, so
//! the output never depends on thread timing and runs on across epoch boundaries.
//!
//! [`WdsState`] stores, per stream, the shard position and how many samples of that shard were
//! consumed, and the stream the next sample comes from; on restore the shard is re-read and
//! those samples are discarded undecoded, so the continuation is exact. A broken tar member
//! ends its shard (counted as `broken_tar` with the shard path); the samples read before it are
//! kept.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;

use crate::batch::{next_batch, BatchRules, EpochSequence, Step};
use crate::error::{Error, Result, SkipReason};
use crate::image::DecodeLimits;
use crate::jpeg_scaled::decode_rgb8_scaled;
use crate::loader::{in_flight, sample_rng, Batch, Item, LoaderConfig, SkipStats};
use crate::pool::OrderedPool;
use crate::stream::{BatchStream, StreamState};
pub use crate::tar_samples::{for_each_sample, list_shards, RawSample, WDS_IMAGE_EXTENSIONS};
use crate::transform::Transform;
use crate::wds_read::{Layout, Raw, Sequencer};
use crate::wds_state::rederive;
pub use crate::wds_state::{ShardBase, ShardDone, StreamPos, WdsRankPos, WdsState};

/// Settings of [`WdsLoader`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WdsConfig {
    pub transform: Transform,
    /// Samples held by each stream's shuffle buffer (<= 1: no shuffling within shards).
    pub shuffle_buffer: usize,
    /// Skip samples without `.txt` (reason `missing_caption`).
    pub require_caption: bool,
    pub limits: DecodeLimits,
}

impl WdsConfig {
    /// Random resized crops, 1000-sample buffer, captions required.
    pub fn train(size: u32) -> Self {
        Self {
            transform: Transform::random_resized_crop(size),
            shuffle_buffer: 1000,
            require_caption: true,
            limits: DecodeLimits::default(),
        }
    }
}

/// Decodes a raw sample into an item.
pub fn decode_sample(
    raw: &RawSample,
    cfg: &WdsConfig,
    rng: &mut ChaCha8Rng,
) -> std::result::Result<Item, SkipReason> {
    let bytes = raw.image().ok_or(SkipReason::MissingImage)?;
    let caption = raw.caption();
    if cfg.require_caption && caption.as_deref().is_none_or(str::is_empty) {
        return Err(SkipReason::MissingCaption);
    }
    let img = decode_rgb8_scaled(bytes, &cfg.limits, cfg.transform.min_source_side())?;
    let image = cfg.transform.apply(&img, rng)?;
    Ok(Item {
        key: raw.key.clone(),
        image,
        label: raw.label(),
        caption,
    })
}

/// One element of the sequence, decoded.
enum Out {
    Item {
        stream: usize,
        pos: StreamPos,
        item: Item,
    },
    Skip {
        stream: usize,
        pos: StreamPos,
        key: String,
        reason: SkipReason,
    },
    StreamEnd {
        stream: usize,
        pos: StreamPos,
    },
    EpochEnd,
}

fn decode(raw: Raw, cfg: &WdsConfig) -> Out {
    match raw {
        Raw::Sample {
            stream,
            pos,
            key,
            raw,
            seed,
            epoch,
            idx,
        } => {
            let mut rng = sample_rng(seed, epoch, idx);
            let r =
                std::panic::catch_unwind(AssertUnwindSafe(|| decode_sample(&raw, cfg, &mut rng)))
                    .unwrap_or_else(|_| Err(SkipReason::Corrupt("decoder panicked".into())));
            match r {
                Ok(item) => Out::Item { stream, pos, item },
                Err(reason) => Out::Skip {
                    stream,
                    pos,
                    key,
                    reason,
                },
            }
        }
        Raw::Skip {
            stream,
            pos,
            key,
            reason,
        } => Out::Skip {
            stream,
            pos,
            key,
            reason,
        },
        Raw::StreamEnd { stream, pos } => Out::StreamEnd { stream, pos },
        Raw::EpochEnd => Out::EpochEnd,
    }
}

/// Batches from webdataset shards.
pub struct WdsLoader {
    shards: Arc<Vec<PathBuf>>,
    cfg: Arc<WdsConfig>,
    lcfg: LoaderConfig,
    epoch: u64,
    streams: Vec<StreamPos>,
    finished: Vec<bool>,
    next_stream: usize,
    bases: BTreeMap<u64, ShardBase>,
    pipeline: Option<OrderedPool<Out>>,
    pending: VecDeque<Out>,
    stats: SkipStats,
    done: bool,
}

impl std::fmt::Debug for WdsLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WdsLoader")
            .field("shards", &self.shards.len())
            .field("state", &self.state())
            .finish()
    }
}

impl WdsLoader {
    /// A loader over `shards` (see [`list_shards`]). One stream per worker, at most
    /// `shards / world` streams; fewer shards than ranks is an error.
    pub fn new(shards: Vec<PathBuf>, cfg: WdsConfig, lcfg: LoaderConfig) -> Result<Self> {
        if lcfg.batch_size == 0 || lcfg.world == 0 || lcfg.rank >= lcfg.world {
            return Err(Error::Config(format!(
                "batch_size {} rank {} world {}: need batch_size >= 1 and rank < world",
                lcfg.batch_size, lcfg.rank, lcfg.world
            )));
        }
        if shards.len() < lcfg.world {
            return Err(Error::Config(format!(
                "{} shards for world size {}: every rank needs at least one shard (pack with a \
                 smaller --shard-size)",
                shards.len(),
                lcfg.world
            )));
        }
        // One stream per worker, but never more streams than this rank's share of the shards
        // (a stream without a shard would idle).
        let w = lcfg.workers.max(1).min(shards.len() / lcfg.world).max(1);
        Ok(Self {
            shards: Arc::new(shards),
            cfg: Arc::new(cfg),
            lcfg,
            epoch: 0,
            streams: vec![StreamPos::default(); w],
            finished: vec![false; w],
            next_stream: 0,
            bases: BTreeMap::new(),
            pipeline: None,
            pending: VecDeque::new(),
            stats: SkipStats::default(),
            done: false,
        })
    }

    /// Skipped samples so far.
    pub fn skip_stats(&self) -> &SkipStats {
        &self.stats
    }

    fn layout(&self) -> Layout {
        Layout {
            shards: Arc::clone(&self.shards),
            seed: self.lcfg.seed,
            shuffle: self.lcfg.shuffle,
            buffer: self.cfg.shuffle_buffer,
            rank: self.lcfg.rank,
            world: self.lcfg.world,
            streams: self.streams.len(),
            epochs: self.lcfg.epochs,
            bases: self.bases.clone(),
        }
    }

    /// Shards read by stream `s` of this rank in `epoch`, in order.
    pub fn stream_shards(&self, epoch: u64, s: usize) -> Vec<usize> {
        self.layout().stream_shards(epoch, s)
    }

    /// This rank's position after the last batch returned.
    pub fn state(&self) -> WdsState {
        let mut bases = self.bases.clone();
        if self.lcfg.world == 1 {
            bases.retain(|&e, _| e >= self.epoch);
        }
        WdsState {
            seed: self.lcfg.seed,
            n_shards: self.shards.len(),
            shuffle: self.lcfg.shuffle,
            world: self.lcfg.world,
            streams_per_rank: self.streams.len(),
            ranks: BTreeMap::from([(
                self.lcfg.rank,
                WdsRankPos {
                    epoch: self.epoch,
                    streams: self.streams.clone(),
                    next_stream: self.next_stream,
                },
            )]),
            bases,
        }
    }

    /// Continues from `st`: exactly where this rank stood when it holds this rank's position
    /// for the same world size and worker count; re-derived at shard granularity (finished
    /// shards stay finished, a shard read in part continues after its emitted samples) when it
    /// holds every rank's position for another layout.
    pub fn restore(&mut self, st: &WdsState) -> Result<()> {
        let mine = (self.lcfg.seed, self.shards.len(), self.lcfg.shuffle);
        let theirs = (st.seed, st.n_shards, st.shuffle);
        if mine != theirs {
            return Err(Error::State(format!(
                "saved for (seed, shards, shuffle) = {theirs:?}, the loader has {mine:?}"
            )));
        }
        if st.world == 0 || st.streams_per_rank == 0 {
            return Err(Error::State("malformed state (world or streams 0)".into()));
        }
        self.pipeline = None;
        self.pending.clear();
        let same = st.world == self.lcfg.world && st.streams_per_rank == self.streams.len();
        if let Some(pos) = st.ranks.get(&self.lcfg.rank).filter(|_| same) {
            if pos.streams.len() != self.streams.len() {
                return Err(Error::State(format!(
                    "rank {} has {} stream positions, expected {}",
                    self.lcfg.rank,
                    pos.streams.len(),
                    self.streams.len()
                )));
            }
            self.bases = st.bases.clone();
            self.epoch = pos.epoch;
            self.streams = pos.streams.clone();
            self.next_stream = pos.next_stream % self.streams.len();
            for s in 0..self.streams.len() {
                let n = self.stream_shards(self.epoch, s).len();
                if self.streams[s].shard_pos > n {
                    return Err(Error::State(format!(
                        "stream {s} at shard {} of its {n}",
                        self.streams[s].shard_pos
                    )));
                }
                self.finished[s] = self.streams[s].shard_pos >= n;
            }
        } else if st.is_complete() {
            let (epoch, bases) = rederive(st);
            self.epoch = epoch;
            self.bases = bases;
            self.streams
                .iter_mut()
                .for_each(|p| *p = StreamPos::default());
            self.next_stream = 0;
            for s in 0..self.streams.len() {
                self.finished[s] = self.stream_shards(self.epoch, s).is_empty();
            }
        } else {
            return Err(Error::State(format!(
                "the state holds ranks {:?} of world size {} x {} streams; rank {} of world size {} x {} \
                 streams needs its own position, or every rank's to re-derive it (merge all ranks' \
                 states before saving)",
                st.ranks.keys().collect::<Vec<_>>(),
                st.world,
                st.streams_per_rank,
                self.lcfg.rank,
                self.lcfg.world,
                self.streams.len()
            )));
        }
        self.done = self.lcfg.epochs.is_some_and(|e| self.epoch >= e);
        Ok(())
    }

    fn start(&mut self) {
        let mut seq = Sequencer::new(
            Arc::new(self.layout()),
            self.epoch,
            &self.streams,
            &self.finished,
            self.next_stream,
        );
        let cfg = Arc::clone(&self.cfg);
        let workers = self.lcfg.workers.max(1);
        let n = in_flight(self.lcfg.batch_size, self.lcfg.prefetch, workers);
        self.pipeline = Some(OrderedPool::spawn(
            "semhitok-wds",
            workers,
            n,
            move || seq.produce(),
            move |raw| decode(raw, &cfg),
        ));
    }
}

impl EpochSequence for WdsLoader {
    fn next_step(&mut self) -> Step {
        let n = self.streams.len();
        loop {
            match self.pending.pop_front() {
                Some(Out::Item { stream, pos, item }) => {
                    self.streams[stream] = pos;
                    self.next_stream = (stream + 1) % n;
                    return Step::Item(item);
                }
                Some(Out::Skip {
                    stream,
                    pos,
                    key,
                    reason,
                }) => {
                    self.streams[stream] = pos;
                    self.next_stream = (stream + 1) % n;
                    return Step::Skip(key, reason);
                }
                Some(Out::StreamEnd { stream, pos }) => {
                    self.streams[stream] = pos;
                    self.next_stream = (stream + 1) % n;
                    self.finished[stream] = true;
                }
                Some(Out::EpochEnd) => return Step::End,
                None => {
                    if self.pipeline.is_none() {
                        if self.finished.iter().all(|&f| f) {
                            // Restored at the very end of an epoch.
                            return Step::End;
                        }
                        self.start();
                    }
                    match self.pipeline.as_mut().and_then(|p| p.next()) {
                        Some(chunk) => self.pending.extend(chunk),
                        None => {
                            // Only if a thread died: end the epoch, counted.
                            self.pipeline = None;
                            let why = SkipReason::Corrupt("decoding pool stopped".into());
                            self.finished.iter_mut().for_each(|f| *f = true);
                            return Step::Skip("<loader>".into(), why);
                        }
                    }
                }
            }
        }
    }
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn end_epoch(&mut self) -> bool {
        let rederived = self.bases.contains_key(&self.epoch);
        // The pipeline runs on into the next epoch: keep it and what it has decoded.
        self.epoch += 1;
        self.streams
            .iter_mut()
            .for_each(|s| *s = StreamPos::default());
        self.finished.iter_mut().for_each(|f| *f = false);
        self.next_stream = 0;
        rederived
    }
}

impl Iterator for WdsLoader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let rules = BatchRules {
            batch_size: self.lcfg.batch_size,
            drop_last: self.lcfg.drop_last,
            format: self.lcfg.format,
            epochs: self.lcfg.epochs,
        };
        let mut stats = std::mem::take(&mut self.stats);
        let mut done = self.done;
        let b = next_batch(self, rules, &mut stats, &mut done);
        self.stats = stats;
        self.done = done;
        b
    }
}

impl BatchStream for WdsLoader {
    fn next_batch(&mut self) -> Option<Batch> {
        self.next()
    }
    fn state(&self) -> StreamState {
        StreamState::Webdataset(WdsLoader::state(self))
    }
    fn restore(&mut self, state: &StreamState) -> Result<()> {
        match state {
            StreamState::Webdataset(s) => WdsLoader::restore(self, s),
            StreamState::Indexed(_) => Err(Error::State(
                "an indexed-source state cannot restore a tar-stream (webdataset) loader".into(),
            )),
        }
    }
    fn skip_stats(&self) -> &SkipStats {
        &self.stats
    }
    fn sample_shape(&self) -> [usize; 3] {
        let s = self.cfg.transform.size() as usize;
        [3, s, s]
    }
}
