//! Training sequences from `semhitok tokenize` shards (docs/tokens-format.md): each sample's
//! unified ids with its caption (the shard's, or `t2i.caption_template` filled with the class
//! of its label), the caption dropped to the empty one with p = `t2i.cfg_dropout`, laid out by
//! [`semhitok_mllm::t2i::T2iLayout`] and right padded with a mask (padding, not packing).
//!
//! Order: per epoch a seeded permutation of the shards, and within each shard a seeded
//! permutation of its samples; one shard is in memory at a time, so the data may be far larger
//! than the memory. The position (`epoch`, `cursor` = samples consumed in the epoch) is the
//! checkpointed state, and a sample's dropout decision is keyed on (`run.seed`, epoch, its
//! global index), so a resumed run reads and drops exactly what the uninterrupted one did.
//! Data-parallel ([`T2iBatches::sharded`]): each global batch is the next `world x batch`
//! positions of that one order, rank r taking its block of them; the dropout keys do not change.

use crate::error::{Error, Result};
use crate::trainer::{Batch, Batches, TokenBatch};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use semhitok_mllm::cfg::TextDropout;
use semhitok_mllm::t2i::{right_pad, T2iExample, T2iLayout};
use semhitok_mllm::tokenizer::TextTokenizer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// `meta.json` + `complete.json` of a tokenize output.
#[derive(Debug, Clone)]
pub struct TokenShards {
    /// The folder.
    pub dir: PathBuf,
    /// Token grid `[h, w]`.
    pub grid: [i64; 2],
    /// K.
    pub k_sem: u32,
    /// m.
    pub m: u32,
    /// Samples per shard (after skips).
    pub counts: Vec<usize>,
}

/// One shard in memory.
#[derive(Debug)]
pub struct Shard {
    /// [n, h * w] unified ids.
    pub ids: Vec<Vec<u32>>,
    /// Per sample, -1 / None when absent.
    pub labels: Vec<i64>,
    /// Per sample.
    pub captions: Vec<Option<String>>,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Input(format!("{}: {e}", path.display())))
}

impl TokenShards {
    /// Open `dir` (errors name the file and the missing field).
    pub fn open(dir: &Path) -> Result<Self> {
        let mp = dir.join("meta.json");
        let meta = read_json(&mp)?;
        let field = |k: &str| {
            meta.get(k)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| Error::Input(format!("{}: no integer `{k}`", mp.display())))
        };
        let grid = meta
            .get("grid")
            .and_then(|g| g.as_array())
            .filter(|g| g.len() == 2)
            .and_then(|g| Some([g[0].as_i64()?, g[1].as_i64()?]))
            .ok_or_else(|| Error::Input(format!("{}: no `grid` [h, w]", mp.display())))?;
        let k_sem = field("semantic_codebook_size")? as u32;
        let m = field("sub_codebook_size")? as u32;
        let cp = dir.join("complete.json");
        if !cp.exists() {
            return Err(Error::Input(format!(
                "{}: missing; the tokenize run is not complete (run `semhitok tokenize` again with the same arguments)",
                cp.display()
            )));
        }
        let complete = read_json(&cp)?;
        let counts: Vec<usize> = complete
            .get("shards")
            .and_then(|s| s.as_array())
            .ok_or_else(|| Error::Input(format!("{}: no `shards` list", cp.display())))?
            .iter()
            .map(|s| s.get("count").and_then(|c| c.as_u64()).map(|c| c as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Input(format!("{}: a shard without `count`", cp.display())))?;
        if counts.iter().sum::<usize>() == 0 {
            return Err(Error::Input(format!("{}: no samples", dir.display())));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            grid,
            k_sem,
            m,
            counts,
        })
    }

    /// Tokens per image, h * w.
    pub fn tokens_per_image(&self) -> usize {
        (self.grid[0] * self.grid[1]) as usize
    }

    /// Samples in all shards.
    pub fn len(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Whether there are no samples (never true for an opened folder).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Read shard `s`.
    pub fn read(&self, s: usize) -> Result<Shard> {
        let sp = self.dir.join(format!("shard-{s:05}.safetensors"));
        let jp = self.dir.join(format!("shard-{s:05}.json"));
        let t: HashMap<String, Tensor> = Tensor::read_safetensors(&sp)
            .map_err(|e| Error::Input(format!("{}: {e}", sp.display())))?
            .into_iter()
            .collect();
        let u = t
            .get("unified")
            .ok_or_else(|| Error::Input(format!("{}: no tensor `unified`", sp.display())))?;
        let n = self.counts[s];
        let hw = self.tokens_per_image() as i64;
        if u.size() != [n as i64, self.grid[0], self.grid[1]] {
            return Err(Error::Input(format!(
                "{}: `unified` is {:?}, expected [{n}, {}, {}]",
                sp.display(),
                u.size(),
                self.grid[0],
                self.grid[1]
            )));
        }
        let flat: Vec<i64> = Vec::try_from(u.to_kind(Kind::Int64).reshape([-1]))?;
        let bound = self.k_sem as i64 * self.m as i64;
        if let Some(p) = flat.iter().position(|&x| x < 0 || x >= bound) {
            return Err(Error::Input(format!(
                "{}: unified id {} at sample {}, token {} is outside 0..{bound}",
                sp.display(),
                flat[p],
                p as i64 / hw,
                p as i64 % hw
            )));
        }
        let ids = flat
            .chunks(hw as usize)
            .map(|r| r.iter().map(|&x| x as u32).collect())
            .collect();
        let labels = match t.get("labels") {
            Some(l) => Vec::<i64>::try_from(l.to_kind(Kind::Int64))?,
            None => vec![-1; n],
        };
        let side = read_json(&jp)?;
        let captions: Vec<Option<String>> = match side.get("captions").and_then(|c| c.as_array()) {
            Some(c) => c.iter().map(|x| x.as_str().map(str::to_string)).collect(),
            None => vec![None; n],
        };
        if labels.len() != n || captions.len() != n {
            return Err(Error::Input(format!(
                "{}: {} labels and {} captions for {n} samples",
                jp.display(),
                labels.len(),
                captions.len()
            )));
        }
        Ok(Shard {
            ids,
            labels,
            captions,
        })
    }
}

/// How a sample's caption text is made.
#[derive(Debug, Clone)]
pub enum CaptionSource {
    /// The shard's caption (a sample without one is trained unconditionally).
    Shards,
    /// `template` with `{class}` = `names[label]`.
    Template {
        template: String,
        names: &'static [&'static str],
    },
}

impl CaptionSource {
    /// The caption text of a sample.
    pub fn caption(&self, label: i64, stored: Option<&str>) -> Result<String> {
        match self {
            CaptionSource::Shards => Ok(stored.unwrap_or("").to_string()),
            CaptionSource::Template { template, names } => {
                let name = usize::try_from(label)
                    .ok()
                    .and_then(|l| names.get(l))
                    .ok_or_else(|| {
                        Error::Input(format!(
                            "label {label} has no class name ({} classes)",
                            names.len()
                        ))
                    })?;
                Ok(template.replace("{class}", name))
            }
        }
    }
}

/// The caption of class `label` for prompts (the same text training used).
pub fn class_caption(template: &str, names: &[&str], label: usize) -> String {
    template.replace("{class}", names[label])
}

/// [`Batches`] of text-to-image sequences.
pub struct T2iBatches {
    shards: TokenShards,
    layout: T2iLayout,
    tokenizer: TextTokenizer,
    captions: CaptionSource,
    dropout: TextDropout,
    batch: usize,
    max_caption: usize,
    seed: u64,
    epoch: u64,
    cursor: usize,
    /// Per epoch: shard order, and the global index of each shard's first sample.
    order: Vec<usize>,
    offsets: Vec<usize>,
    loaded: Option<(usize, Shard, Vec<usize>)>,
    token_cache: HashMap<String, Vec<u32>>,
    /// Data-parallel shard (0 of 1: a single process).
    rank: usize,
    world: usize,
}

impl std::fmt::Debug for T2iBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T2iBatches")
            .field("dir", &self.shards.dir)
            .field("epoch", &self.epoch)
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl T2iBatches {
    /// Sequences of `shards` in `layout`; captions tokenized by `tokenizer` and cut to what
    /// fits `max_seq_len` (`[bos] caption <boi> h*w ids <eoi>`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shards: TokenShards,
        layout: T2iLayout,
        tokenizer: TextTokenizer,
        captions: CaptionSource,
        cfg_dropout: f64,
        seed: u64,
        batch: usize,
        max_seq_len: usize,
    ) -> Result<Self> {
        let fixed = shards.tokens_per_image() + 2 + layout.bos.is_some() as usize;
        if max_seq_len <= fixed {
            return Err(Error::Input(format!(
                "llm.max_seq_len {max_seq_len} leaves no room for a caption: an image takes {fixed} tokens"
            )));
        }
        let mut offsets = Vec::with_capacity(shards.counts.len());
        let mut acc = 0;
        for &c in &shards.counts {
            offsets.push(acc);
            acc += c;
        }
        let mut b = Self {
            max_caption: max_seq_len - fixed,
            dropout: TextDropout::new(cfg_dropout, seed)?,
            shards,
            layout,
            tokenizer,
            captions,
            batch,
            seed,
            epoch: 0,
            cursor: 0,
            order: vec![],
            offsets,
            loaded: None,
            token_cache: HashMap::new(),
            rank: 0,
            world: 1,
        };
        b.start_epoch();
        Ok(b)
    }

    /// Rank `rank` of `world` of a data-parallel run: of each global batch (the next `world x
    /// batch` positions of the epoch order), this rank reads positions `[rank x batch, (rank + 1)
    /// x batch)`; so the ranks together read, and drop captions of, exactly what one process with
    /// batch `world x batch` does, and the position (`epoch`, `cursor`) is the same on every rank
    /// and does not depend on the world size.
    pub fn sharded(mut self, rank: usize, world: usize) -> Self {
        self.rank = rank;
        self.world = world.max(1);
        self
    }

    /// Step over the next position without reading it (another rank's sample).
    fn skip_example(&mut self) {
        if self.cursor >= self.shards.len() {
            self.epoch += 1;
            self.cursor = 0;
            self.start_epoch();
        }
        self.cursor += 1;
    }

    fn rng(&self, stream: u64) -> ChaCha8Rng {
        let mut r = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7432_6932);
        r.set_stream(self.epoch.wrapping_mul(1 << 32).wrapping_add(stream));
        r
    }

    fn start_epoch(&mut self) {
        let mut order: Vec<usize> = (0..self.shards.counts.len()).collect();
        order.shuffle(&mut self.rng(u32::MAX as u64));
        self.order = order;
        self.loaded = None;
    }

    /// (shard, index in shard) of epoch position `pos`.
    fn locate(&self, mut pos: usize) -> (usize, usize) {
        for &s in &self.order {
            if pos < self.shards.counts[s] {
                return (s, pos);
            }
            pos -= self.shards.counts[s];
        }
        unreachable!("position inside the epoch")
    }

    fn caption_ids(&mut self, text: &str) -> Result<Vec<u32>> {
        if let Some(t) = self.token_cache.get(text) {
            return Ok(t.clone());
        }
        let mut ids = self.tokenizer.encode(text)?;
        ids.truncate(self.max_caption);
        self.token_cache.insert(text.to_string(), ids.clone());
        Ok(ids)
    }

    /// The next example and its global sample index.
    fn next_example(&mut self) -> Result<(T2iExample, usize)> {
        if self.cursor >= self.shards.len() {
            self.epoch += 1;
            self.cursor = 0;
            self.start_epoch();
        }
        let (s, pos) = self.locate(self.cursor);
        if self.loaded.as_ref().is_none_or(|l| l.0 != s) {
            let shard = self.shards.read(s)?;
            let mut perm: Vec<usize> = (0..shard.ids.len()).collect();
            perm.shuffle(&mut self.rng(s as u64));
            self.loaded = Some((s, shard, perm));
        }
        let (_, shard, perm) = self.loaded.as_ref().expect("loaded above");
        let i = perm[pos];
        let global = self.offsets[s] + i;
        let text = self
            .captions
            .caption(shard.labels[i], shard.captions[i].as_deref())?;
        let ids = shard.ids[i].clone();
        self.cursor += 1;
        let caption = if self.dropout.drops(self.epoch, global as u64) {
            vec![]
        } else {
            self.caption_ids(&text)?
        };
        Ok((self.layout.example(&caption, &ids)?, global))
    }
}

impl Batches for T2iBatches {
    fn next_batch(&mut self, device: Device) -> Result<Batch> {
        let mut ex = Vec::with_capacity(self.batch);
        let own = self.rank * self.batch..(self.rank + 1) * self.batch;
        for slot in 0..self.world * self.batch {
            if own.contains(&slot) {
                ex.push(self.next_example()?.0);
            } else {
                self.skip_example();
            }
        }
        let (ids, labels, mask) = right_pad(&ex, 0)?;
        Ok(Batch::Tokens(TokenBatch {
            input_ids: ids.to_device(device),
            labels: labels.to_device(device),
            attention_mask: mask.to_device(device),
            images: None,
        }))
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "epoch": self.epoch, "cursor": self.cursor })
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let (e, c) = (state["epoch"].as_u64(), state["cursor"].as_u64());
        match (e, c) {
            (Some(e), Some(c)) if (c as usize) <= self.shards.len() => {
                self.epoch = e;
                self.cursor = c as usize;
                self.start_epoch();
                Ok(())
            }
            _ => Err(Error::Input(format!(
                "t2i data state {state} is not {{epoch, cursor <= {}}}",
                self.shards.len()
            ))),
        }
    }
}
