//! Webdataset tar shards as img2dataset writes them (COYO-700M, LAION): members
//! `<key>.jpg|jpeg|png|webp` + `<key>.txt` (caption) + `<key>.json`, grouped by key (the path up to
//! the first `.` of the file name, consecutive members), streamed member by member. A shard is
//! never loaded whole; `.tar`, `.tar.gz` and `.tgz` are read.
//!
//! Order: each epoch the shard list is permuted (seed, epoch) and dealt to the
//! `world * workers` streams (`slot = rank * workers + worker`); a stream reads its shards in
//! turn through a shuffle buffer of `shuffle_buffer` samples seeded by (seed, epoch, shard).
//! Each stream fills its own batches; the loader takes batches from the streams round-robin.
//! [`WdsState`] stores, per stream, the shard position and how many samples of that shard came
//! out of the buffer; on restore the shard is re-read and those samples are discarded undecoded,
//! so the continuation is exact. A broken tar member ends its shard (counted as `broken_tar`
//! with the shard path); the samples read before it are kept.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result, SkipReason};
use crate::image::{decode_rgb8, DecodeLimits};
use crate::loader::{epoch_order, mix_seed, sample_rng, Batch, Item, LoaderConfig, SkipStats};
use crate::photos::fnv1a;
use crate::stream::{all_same, merge_ranks, BatchStream, StreamState};
use crate::transform::Transform;

/// Image member extensions, in order of preference.
pub const WDS_IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// One grouped tar sample before decoding: `(extension, bytes)` members.
#[derive(Debug, Clone)]
pub struct RawSample {
    pub key: String,
    pub members: Vec<(String, Vec<u8>)>,
}

impl RawSample {
    /// Bytes of the member with extension `ext` (lower case).
    pub fn get(&self, ext: &str) -> Option<&[u8]> {
        self.members
            .iter()
            .find(|(e, _)| e == ext)
            .map(|(_, b)| b.as_slice())
    }
    /// The image member's bytes, if any.
    pub fn image(&self) -> Option<&[u8]> {
        WDS_IMAGE_EXTENSIONS.iter().find_map(|e| self.get(e))
    }
    /// The caption: `.txt` (lossily decoded, trimmed), else the `caption` field of `.json`.
    pub fn caption(&self) -> Option<String> {
        if let Some(b) = self.get("txt") {
            return Some(String::from_utf8_lossy(b).trim().to_string());
        }
        let v: serde_json::Value = serde_json::from_slice(self.get("json")?).ok()?;
        v.get("caption")?.as_str().map(|c| c.trim().to_string())
    }
    /// The class label of `.cls` (a decimal integer), if any.
    pub fn label(&self) -> Option<i64> {
        std::str::from_utf8(self.get("cls")?)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

fn split_key(path: &str) -> Option<(String, String)> {
    let (dir, file) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let dot = file.find('.')?;
    Some((
        format!("{dir}{}", &file[..dot]),
        file[dot + 1..].to_ascii_lowercase(),
    ))
}

/// Streams the samples of one shard to `f`. Returns `Err(BrokenTar)` when the archive is
/// corrupt; the samples before the damage have been delivered.
pub fn for_each_sample(
    path: &Path,
    mut f: impl FnMut(RawSample) -> ControlFlow<()>,
) -> std::result::Result<(), SkipReason> {
    // Only regular files: a FIFO named `*.tar` would block the reader forever.
    let meta = std::fs::metadata(path).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(SkipReason::Unreadable(format!(
            "not a regular file ({:?})",
            meta.file_type()
        )));
    }
    if meta.len() == 0 {
        return Err(SkipReason::Empty);
    }
    let file = std::fs::File::open(path).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    let name = path.to_string_lossy();
    let reader: Box<dyn Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| SkipReason::BrokenTar(e.to_string()))?;
    let mut cur: Option<RawSample> = None;
    let mut any = false;
    for entry in entries {
        let mut entry = entry.map_err(|e| SkipReason::BrokenTar(format!("header: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let p = entry
            .path()
            .map_err(|e| SkipReason::BrokenTar(e.to_string()))?;
        let Some((key, ext)) = split_key(&p.to_string_lossy()) else {
            continue;
        };
        any = true;
        if entry.size() > DecodeLimits::default().max_file_bytes {
            // Never read a member past the per-file limit: the sample loses this member (an
            // image member: counted as `missing_image`).
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size().min(1 << 26) as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| SkipReason::BrokenTar(format!("member {key}.{ext}: {e}")))?;
        match &mut cur {
            Some(s) if s.key == key => s.members.push((ext, bytes)),
            _ => {
                if let Some(done) = cur.replace(RawSample {
                    key,
                    members: vec![(ext, bytes)],
                }) {
                    if f(done).is_break() {
                        return Ok(());
                    }
                }
            }
        }
    }
    match cur {
        Some(done) => {
            let _ = f(done);
            Ok(())
        }
        // A readable archive without a single member file (e.g. only end-of-archive blocks).
        None if !any => Err(SkipReason::Empty),
        None => Ok(()),
    }
}

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
    let img = decode_rgb8(bytes, &cfg.limits)?;
    let image = cfg.transform.apply(&img, rng)?;
    Ok(Item {
        key: raw.key.clone(),
        image,
        label: raw.label(),
        caption,
    })
}

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
fn slot_shards(
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

enum Msg {
    Batch {
        items: Vec<Item>,
        skips: Vec<(String, SkipReason)>,
        pos: StreamPos,
    },
    End {
        items: Vec<Item>,
        skips: Vec<(String, SkipReason)>,
        pos: StreamPos,
    },
}

struct Pipeline {
    rxs: Vec<Option<Receiver<Msg>>>,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.rxs.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
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
    pipeline: Option<Pipeline>,
    stats: SkipStats,
    done: bool,
    emitted_this_epoch: bool,
}

impl std::fmt::Debug for WdsLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WdsLoader")
            .field("shards", &self.shards.len())
            .field("state", &self.state())
            .finish()
    }
}

/// Lists `*.tar`, `*.tar.gz`, `*.tgz` files in `dir` (sorted), or returns `[dir]` for a file.
pub fn list_shards(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let s = p.to_string_lossy();
            s.ends_with(".tar") || s.ends_with(".tar.gz") || s.ends_with(".tgz")
        })
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::Empty {
            path: path.to_path_buf(),
            detail: "no .tar shards".into(),
        });
    }
    Ok(v)
}

impl WdsLoader {
    /// A loader over `shards` (see [`list_shards`]). One stream per worker (at least one).
    pub fn new(shards: Vec<PathBuf>, cfg: WdsConfig, lcfg: LoaderConfig) -> Result<Self> {
        if lcfg.batch_size == 0 || lcfg.world == 0 || lcfg.rank >= lcfg.world {
            return Err(Error::Config(format!(
                "batch_size {} rank {} world {}: need batch_size >= 1 and rank < world",
                lcfg.batch_size, lcfg.rank, lcfg.world
            )));
        }
        let w = lcfg.workers.max(1);
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
            stats: SkipStats::default(),
            done: false,
            emitted_this_epoch: false,
        })
    }

    /// Skipped samples so far.
    pub fn skip_stats(&self) -> &SkipStats {
        &self.stats
    }

    /// Shards read by stream `s` of this rank in `epoch`, in order.
    pub fn stream_shards(&self, epoch: u64, s: usize) -> Vec<usize> {
        let w = self.streams.len();
        slot_shards(
            self.shards.len(),
            self.lcfg.seed,
            epoch,
            self.lcfg.shuffle,
            self.bases.get(&epoch),
            self.lcfg.rank * w + s,
            self.lcfg.world * w,
        )
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
            self.rederive(st);
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
        self.emitted_this_epoch = false;
        self.done = self.lcfg.epochs.is_some_and(|e| self.epoch >= e);
        Ok(())
    }

    fn rederive(&mut self, st: &WdsState) {
        let lo = st.ranks.values().map(|p| p.epoch).min().unwrap_or(0);
        let hi = st.ranks.values().map(|p| p.epoch).max().unwrap_or(0);
        let n = self.shards.len();
        let old_slots = st.world * st.streams_per_rank;
        let mut bases = BTreeMap::new();
        let mut first = None;
        for e in lo..=hi {
            let base = st.bases.get(&e);
            let mut done: BTreeMap<usize, ShardDone> =
                base.map(|b| b.0.clone()).unwrap_or_default();
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
        self.epoch = first.unwrap_or(hi + 1);
        bases.retain(|&e, _| e >= self.epoch);
        self.bases = bases;
        self.streams
            .iter_mut()
            .for_each(|p| *p = StreamPos::default());
        self.next_stream = 0;
        for s in 0..self.streams.len() {
            self.finished[s] = self.stream_shards(self.epoch, s).is_empty();
        }
    }

    fn start(&mut self) {
        let mut rxs = Vec::new();
        let mut handles = Vec::new();
        for s in 0..self.streams.len() {
            if self.finished[s] {
                rxs.push(None);
                continue;
            }
            let (tx, rx) = bounded::<Msg>(self.lcfg.prefetch.max(1));
            let list = self.stream_shards(self.epoch, s);
            let base = self.bases.get(&self.epoch).cloned().unwrap_or_default();
            let start = self.streams[s];
            let (shards, cfg) = (Arc::clone(&self.shards), Arc::clone(&self.cfg));
            let (seed, epoch, b) = (self.lcfg.seed, self.epoch, self.lcfg.batch_size);
            let buffer = if self.lcfg.shuffle {
                cfg.shuffle_buffer
            } else {
                0
            };
            let h = std::thread::Builder::new()
                .name(format!("semhitok-wds-{s}"))
                .spawn(move || {
                    let mut items = Vec::new();
                    let mut skips = Vec::new();
                    let mut pos = start;
                    for sp in start.shard_pos..list.len() {
                        let shard = &shards[list[sp]];
                        // Emission order and augmentation depend on the shard (index and file
                        // name, not the folder it lives in) and the epoch only.
                        let name = shard.file_name().unwrap_or_default().to_string_lossy();
                        let shard_seed = mix_seed(&[seed, list[sp] as u64, fnv1a(name.as_bytes())]);
                        // Samples emitted before: by this stream (resume) or, after a layout
                        // change, by the stream that had the shard before.
                        let before = match base.0.get(&list[sp]) {
                            Some(ShardDone::Emitted(k)) => *k,
                            _ => 0,
                        };
                        let skip = if sp == start.shard_pos {
                            start.emitted.max(before)
                        } else {
                            before
                        };
                        pos = StreamPos {
                            shard_pos: sp,
                            emitted: 0,
                        };
                        let mut rng =
                            ChaCha8Rng::seed_from_u64(mix_seed(&[shard_seed, epoch, 0xB0F]));
                        let mut buf: Vec<RawSample> = Vec::new();
                        let dead = std::cell::Cell::new(false);
                        let mut emit = |raw: RawSample, pos: &mut StreamPos| -> ControlFlow<()> {
                            let idx = pos.emitted;
                            pos.emitted += 1;
                            if idx < skip {
                                return ControlFlow::Continue(());
                            }
                            let mut r = sample_rng(shard_seed, epoch, idx);
                            match decode_sample(&raw, &cfg, &mut r) {
                                Ok(it) => items.push(it),
                                Err(e) => {
                                    skips.push((format!("{}:{}", shard.display(), raw.key), e))
                                }
                            }
                            if items.len() == b {
                                let msg = Msg::Batch {
                                    items: std::mem::take(&mut items),
                                    skips: std::mem::take(&mut skips),
                                    pos: *pos,
                                };
                                if tx.send(msg).is_err() {
                                    dead.set(true);
                                    return ControlFlow::Break(());
                                }
                            }
                            ControlFlow::Continue(())
                        };
                        let res = for_each_sample(shard, |raw| {
                            if buffer <= 1 {
                                return emit(raw, &mut pos);
                            }
                            if buf.len() < buffer {
                                buf.push(raw);
                                return ControlFlow::Continue(());
                            }
                            let j = rng.gen_range(0..buf.len());
                            let out = std::mem::replace(&mut buf[j], raw);
                            emit(out, &mut pos)
                        });
                        while !buf.is_empty() && !dead.get() {
                            let j = rng.gen_range(0..buf.len());
                            let out = buf.swap_remove(j);
                            let _ = emit(out, &mut pos);
                        }
                        if dead.get() {
                            return; // the loader was dropped or restarted
                        }
                        if let Err(e) = res {
                            skips.push((shard.display().to_string(), e));
                        }
                        pos = StreamPos {
                            shard_pos: sp + 1,
                            emitted: 0,
                        };
                    }
                    pos.shard_pos = pos.shard_pos.max(list.len());
                    let _ = tx.send(Msg::End { items, skips, pos });
                })
                .expect("spawning a wds stream thread");
            rxs.push(Some(rx));
            handles.push(h);
        }
        self.pipeline = Some(Pipeline { rxs, handles });
    }
}

impl Iterator for WdsLoader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let mut empty_epochs = 0;
        loop {
            if self.done {
                return None;
            }
            if self.finished.iter().all(|&f| f) {
                // An epoch dealt after a layout change may leave this rank nothing.
                if !self.emitted_this_epoch && !self.bases.contains_key(&self.epoch) {
                    empty_epochs += 1;
                }
                self.pipeline = None;
                self.epoch += 1;
                self.streams
                    .iter_mut()
                    .for_each(|s| *s = StreamPos::default());
                self.finished.iter_mut().for_each(|f| *f = false);
                self.next_stream = 0;
                self.emitted_this_epoch = false;
                if self.lcfg.epochs.is_some_and(|e| self.epoch >= e) || empty_epochs > 1 {
                    self.done = true;
                    return None;
                }
                continue;
            }
            if self.pipeline.is_none() {
                self.start();
            }
            let s = self.next_stream;
            self.next_stream = (s + 1) % self.streams.len();
            if self.finished[s] {
                continue;
            }
            let rx = self.pipeline.as_ref().and_then(|p| p.rxs[s].clone());
            let msg = rx.and_then(|rx| rx.recv().ok());
            let (items, skips, pos, end) = match msg {
                Some(Msg::Batch { items, skips, pos }) => (items, skips, pos, false),
                Some(Msg::End { items, skips, pos }) => (items, skips, pos, true),
                None => {
                    self.stats.record(
                        &format!("stream {s}"),
                        &SkipReason::Corrupt("stream stopped".into()),
                    );
                    self.finished[s] = true;
                    continue;
                }
            };
            for (k, r) in &skips {
                self.stats.record(k, r);
            }
            self.streams[s] = pos;
            if end {
                self.finished[s] = true;
                if items.is_empty() || (self.lcfg.drop_last && items.len() < self.lcfg.batch_size) {
                    continue;
                }
            }
            self.emitted_this_epoch = true;
            return Some(Batch::from_items(items, self.lcfg.format, self.epoch));
        }
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
