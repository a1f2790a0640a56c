//! The reading side of a [`WdsLoader`](crate::WdsLoader). One thread per stream reads the
//! stream's shards of the epoch in turn through a shuffle buffer seeded by (seed, epoch, shard)
//! and sends the raw samples (undecoded bytes); a [`Sequencer`] interleaves the streams one
//! sample at a time, round-robin (a finished stream leaves the rotation), marks the end of each
//! epoch and runs on into the next, so decoding never waits at an epoch boundary. Its output,
//! cut into chunks, is what the decoding pool decodes and the loader consumes, in this order.
//!
//! Every element carries its stream's position after it, so the loader's state after any
//! element is exact; a restored sequencer re-reads a stream's current shard and discards the
//! samples already emitted undecoded.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::SkipReason;
use crate::loader::CHUNK;
use crate::order::mix_seed;
use crate::photos::fnv1a;
use crate::tar_samples::{for_each_sample, RawSample};
use crate::wds_state::{slot_shards, ShardBase, ShardDone, StreamPos};

/// What decides which shards a stream reads, in which order.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub shards: Arc<Vec<PathBuf>>,
    pub seed: u64,
    pub shuffle: bool,
    /// Shuffle buffer per stream (<= 1: none).
    pub buffer: usize,
    pub rank: usize,
    pub world: usize,
    pub streams: usize,
    pub epochs: Option<u64>,
    pub bases: BTreeMap<u64, ShardBase>,
}

impl Layout {
    /// Shards read by stream `s` of this rank in `epoch`, in order.
    pub fn stream_shards(&self, epoch: u64, s: usize) -> Vec<usize> {
        slot_shards(
            self.shards.len(),
            self.seed,
            epoch,
            self.shuffle,
            self.bases.get(&epoch),
            self.rank * self.streams + s,
            self.world * self.streams,
        )
    }
}

/// One element of the interleaved sequence, before decoding.
pub(crate) enum Raw {
    Sample {
        stream: usize,
        pos: StreamPos,
        key: String,
        raw: RawSample,
        /// The sample's RNG is `sample_rng(seed, epoch, idx)`.
        seed: u64,
        epoch: u64,
        idx: u64,
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

enum Msg {
    Sample {
        pos: StreamPos,
        key: String,
        raw: RawSample,
        seed: u64,
        idx: u64,
    },
    Skip {
        pos: StreamPos,
        key: String,
        reason: SkipReason,
    },
    End {
        pos: StreamPos,
    },
}

struct Reader {
    rx: Option<Receiver<Msg>>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.rx = None; // the thread's next send fails: it stops
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Interleaves the streams of this rank, epoch after epoch.
pub(crate) struct Sequencer {
    layout: Arc<Layout>,
    epoch: u64,
    finished: Vec<bool>,
    ends: Vec<StreamPos>,
    next: usize,
    readers: Vec<Option<Reader>>,
    ended: bool,
}

impl Sequencer {
    /// Starts at `epoch` with each stream at `starts[s]` (`finished[s]`: nothing left) and the
    /// rotation at stream `next`.
    pub fn new(
        layout: Arc<Layout>,
        epoch: u64,
        starts: &[StreamPos],
        finished: &[bool],
        next: usize,
    ) -> Self {
        let mut s = Self {
            layout,
            epoch,
            finished: finished.to_vec(),
            ends: Vec::new(),
            next,
            readers: Vec::new(),
            ended: false,
        };
        s.spawn(starts);
        s
    }

    fn spawn(&mut self, starts: &[StreamPos]) {
        let n = self.layout.streams;
        self.readers = (0..n)
            .map(|s| {
                (!self.finished[s]).then(|| spawn_reader(&self.layout, self.epoch, s, starts[s]))
            })
            .collect();
        self.ends = (0..n)
            .map(|s| StreamPos {
                shard_pos: self.layout.stream_shards(self.epoch, s).len(),
                emitted: 0,
            })
            .collect();
    }

    /// The next chunk of at most [`CHUNK`] elements (a chunk ends after an epoch's end), or
    /// `None` after the last epoch.
    pub fn produce(&mut self) -> Option<Vec<Raw>> {
        if self.ended {
            return None;
        }
        let n = self.layout.streams;
        let mut out = Vec::with_capacity(CHUNK);
        while out.len() < CHUNK {
            if self.finished.iter().all(|&f| f) {
                out.push(Raw::EpochEnd);
                self.epoch += 1;
                if self.layout.epochs.is_some_and(|e| self.epoch >= e) {
                    self.ended = true;
                    self.readers.clear();
                } else {
                    self.finished = vec![false; n];
                    self.next = 0;
                    self.spawn(&vec![StreamPos::default(); n]);
                }
                break;
            }
            let s = self.next;
            self.next = (s + 1) % n;
            if self.finished[s] {
                continue;
            }
            let msg = self.readers[s]
                .as_ref()
                .and_then(|r| r.rx.as_ref())
                .and_then(|rx| rx.recv().ok());
            match msg {
                Some(Msg::Sample {
                    pos,
                    key,
                    raw,
                    seed,
                    idx,
                }) => out.push(Raw::Sample {
                    stream: s,
                    pos,
                    key,
                    raw,
                    seed,
                    epoch: self.epoch,
                    idx,
                }),
                Some(Msg::Skip { pos, key, reason }) => out.push(Raw::Skip {
                    stream: s,
                    pos,
                    key,
                    reason,
                }),
                end => {
                    let pos = match end {
                        Some(Msg::End { pos }) => pos,
                        _ => {
                            // The reader died: the rest of its shards is lost, and counted.
                            out.push(Raw::Skip {
                                stream: s,
                                pos: self.ends[s],
                                key: format!("stream {s}"),
                                reason: SkipReason::Corrupt("shard reader stopped".into()),
                            });
                            self.ends[s]
                        }
                    };
                    out.push(Raw::StreamEnd { stream: s, pos });
                    self.finished[s] = true;
                    self.readers[s] = None;
                }
            }
        }
        Some(out)
    }
}

fn spawn_reader(layout: &Arc<Layout>, epoch: u64, s: usize, start: StreamPos) -> Reader {
    let (tx, rx) = bounded::<Msg>(2 * CHUNK);
    let layout = Arc::clone(layout);
    let handle = std::thread::Builder::new()
        .name(format!("semhitok-wds-read-{s}"))
        .spawn(move || read_stream(&layout, epoch, s, start, &tx))
        .expect("spawning a shard reader thread");
    Reader {
        rx: Some(rx),
        handle: Some(handle),
    }
}

/// Sends the samples of stream `s` from `start` on, then `End`; returns early when the
/// receiver is gone.
fn read_stream(layout: &Layout, epoch: u64, s: usize, start: StreamPos, tx: &Sender<Msg>) {
    let list = layout.stream_shards(epoch, s);
    let base = layout.bases.get(&epoch);
    let buffer = if layout.shuffle { layout.buffer } else { 0 };
    for sp in start.shard_pos..list.len() {
        let shard = &layout.shards[list[sp]];
        // Emission order and augmentation depend on the shard (index and file name, not the
        // folder it lives in) and the epoch only.
        let name = shard.file_name().unwrap_or_default().to_string_lossy();
        let shard_seed = mix_seed(&[layout.seed, list[sp] as u64, fnv1a(name.as_bytes())]);
        // Samples emitted before: by this stream (resume) or, after a layout change, by the
        // stream that had the shard before.
        let before = match base.and_then(|b| b.0.get(&list[sp])) {
            Some(ShardDone::Emitted(k)) => *k,
            _ => 0,
        };
        let skip = if sp == start.shard_pos {
            start.emitted.max(before)
        } else {
            before
        };
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[shard_seed, epoch, 0xB0F]));
        let mut buf: Vec<RawSample> = Vec::new();
        let mut k = 0u64;
        let mut dead = false;
        let mut emit = |raw: RawSample| -> ControlFlow<()> {
            let idx = k;
            k += 1;
            if idx < skip {
                return ControlFlow::Continue(());
            }
            let msg = Msg::Sample {
                pos: StreamPos {
                    shard_pos: sp,
                    emitted: idx + 1,
                },
                key: format!("{}:{}", shard.display(), raw.key),
                raw,
                seed: shard_seed,
                idx,
            };
            if tx.send(msg).is_err() {
                dead = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        };
        let res = for_each_sample(shard, |raw| {
            if buffer <= 1 {
                return emit(raw);
            }
            if buf.len() < buffer {
                buf.push(raw);
                return ControlFlow::Continue(());
            }
            let j = rng.gen_range(0..buf.len());
            let out = std::mem::replace(&mut buf[j], raw);
            emit(out)
        });
        while !buf.is_empty() {
            let j = rng.gen_range(0..buf.len());
            let out = buf.swap_remove(j);
            if emit(out).is_break() {
                break;
            }
        }
        if dead {
            return; // the loader was dropped or restored
        }
        if let Err(reason) = res {
            let pos = StreamPos {
                shard_pos: sp + 1,
                emitted: 0,
            };
            let key = shard.display().to_string();
            if tx.send(Msg::Skip { pos, key, reason }).is_err() {
                return;
            }
        }
    }
    let pos = StreamPos {
        shard_pos: list.len(),
        emitted: 0,
    };
    let _ = tx.send(Msg::End { pos });
}
