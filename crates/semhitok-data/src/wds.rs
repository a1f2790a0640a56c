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
    /// The caption (`.txt`), lossily decoded and trimmed.
    pub fn caption(&self) -> Option<String> {
        self.get("txt")
            .map(|b| String::from_utf8_lossy(b).trim().to_string())
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
    if let Some(done) = cur {
        let _ = f(done);
    }
    Ok(())
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
        label: None,
        caption,
    })
}

/// A stream's position: shard index in its list, and samples of that shard already emitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamPos {
    pub shard_pos: usize,
    pub emitted: u64,
}

/// Where a [`WdsLoader`] stands (serde; store it in a checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WdsState {
    pub epoch: u64,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    pub n_shards: usize,
    pub streams: Vec<StreamPos>,
    pub finished: Vec<bool>,
    pub next_stream: usize,
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
        let slots = self.lcfg.world * w;
        let slot = self.lcfg.rank * w + s;
        let order = epoch_order(self.shards.len(), self.lcfg.seed, epoch, self.lcfg.shuffle);
        order.into_iter().skip(slot).step_by(slots).collect()
    }

    /// The state after the last batch returned.
    pub fn state(&self) -> WdsState {
        WdsState {
            epoch: self.epoch,
            seed: self.lcfg.seed,
            rank: self.lcfg.rank,
            world: self.lcfg.world,
            n_shards: self.shards.len(),
            streams: self.streams.clone(),
            finished: self.finished.clone(),
            next_stream: self.next_stream,
        }
    }

    /// Continues from `st` (same seed, rank, world, shard count and worker count).
    pub fn restore(&mut self, st: &WdsState) -> Result<()> {
        let me = self.state();
        if (me.seed, me.rank, me.world, me.n_shards, me.streams.len())
            != (st.seed, st.rank, st.world, st.n_shards, st.streams.len())
            || st.finished.len() != st.streams.len()
        {
            return Err(Error::State(format!(
                "saved for seed {} rank {}/{} {} shards {} streams; loader has seed {} rank {}/{} {} shards {} streams",
                st.seed, st.rank, st.world, st.n_shards, st.streams.len(),
                me.seed, me.rank, me.world, me.n_shards, me.streams.len()
            )));
        }
        self.pipeline = None;
        self.epoch = st.epoch;
        self.streams = st.streams.clone();
        self.finished = st.finished.clone();
        self.next_stream = st.next_stream % self.streams.len();
        self.done = self.lcfg.epochs.is_some_and(|e| self.epoch >= e);
        Ok(())
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
                        let shard_seed =
                            mix_seed(&[seed, fnv1a(shard.to_string_lossy().as_bytes())]);
                        let skip = if sp == start.shard_pos {
                            start.emitted
                        } else {
                            0
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
                if !self.emitted_this_epoch {
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
