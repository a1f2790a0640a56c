//! What every loader yields: [`Item`]s (one decoded, transformed sample), assembled into
//! [`Batch`]es (one contiguous NCHW buffer), with [`SkipStats`] for the samples left out; and the
//! one definition of how a batch is filled from an epoch's sequence of decoded samples and what
//! happens at the end of an epoch ([`next_batch`]), shared by [`Loader`](crate::Loader) and
//! [`WdsLoader`](crate::WdsLoader).

use std::collections::BTreeMap;

use crate::error::SkipReason;
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

/// The next element of an epoch's sequence, in order.
pub(crate) enum Step {
    /// A usable sample.
    Item(Item),
    /// A sample (or a whole shard) left out: key and reason.
    Skip(String, SkipReason),
    /// The epoch has no more samples for this rank.
    End,
}

/// A source of epochs whose elements come out in a fixed order ([`Step`]s).
pub(crate) trait EpochSequence {
    /// The next element of the current epoch; updates the position to just after it.
    fn next_step(&mut self) -> Step;
    /// The epoch the next element belongs to.
    fn epoch(&self) -> u64;
    /// Moves to the start of the next epoch. Returns whether the epoch just ended was dealt
    /// after a change of world size (it may legitimately have left this rank nothing).
    fn end_epoch(&mut self) -> bool;
}

/// How batches are cut from an [`EpochSequence`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchRules {
    pub batch_size: usize,
    pub drop_last: bool,
    pub format: PixelFormat,
    /// Stop after this many epochs (`None`: endless).
    pub epochs: Option<u64>,
}

/// The next batch of `seq`: the next `batch_size` usable samples of its epoch in order (skips
/// recorded in `stats` and refilled from the following samples). The short batch at an epoch's
/// end is returned unless `drop_last` (an empty one never is). Sets `done` when `epochs` are
/// over, or when a whole epoch yielded no batch (an unusable dataset: stop rather than spin).
pub(crate) fn next_batch(
    seq: &mut impl EpochSequence,
    rules: BatchRules,
    stats: &mut SkipStats,
    done: &mut bool,
) -> Option<Batch> {
    let mut empty_epochs = 0;
    loop {
        if *done {
            return None;
        }
        let epoch = seq.epoch();
        let mut items = Vec::with_capacity(rules.batch_size);
        let mut ended = false;
        while items.len() < rules.batch_size {
            match seq.next_step() {
                Step::Item(it) => items.push(it),
                Step::Skip(key, reason) => stats.record(&key, &reason),
                Step::End => {
                    ended = true;
                    break;
                }
            }
        }
        if !ended {
            return Some(Batch::from_items(items, rules.format, epoch));
        }
        let rederived = seq.end_epoch();
        if rules.epochs.is_some_and(|e| seq.epoch() >= e) {
            *done = true;
        }
        if !items.is_empty() && !(rules.drop_last && items.len() < rules.batch_size) {
            return Some(Batch::from_items(items, rules.format, epoch));
        }
        if !rederived {
            empty_epochs += 1;
        }
        if empty_epochs > 1 {
            *done = true;
            return None;
        }
    }
}
