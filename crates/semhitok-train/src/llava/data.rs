//! LLaVA records as token batches for the trainer: validated records (semhitok-data's
//! `load_llava`: malformed turns and missing images skipped and counted), prompts and labels
//! by `semhitok_mllm::llava::PromptBuilder`, image positions expanded to the tokenizer's patch
//! count, truncation at `llm.max_seq_len` (counted), images decoded on the fly and resized to
//! the tokenizer's input size. The order is a seeded permutation per epoch; the position
//! (epoch, index) is the resumable state.

use crate::error::{Error, Result};
use crate::trainer::{Batch, Batches, TokenBatch};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use semhitok_data::{
    decode_rgb8, load_llava, read_image_file, DecodeLimits, LlavaRecord, SkipStats,
};
use semhitok_mllm::chat::ChatTemplate;
use semhitok_mllm::llava::splice::{collate, expand, Sequence};
use semhitok_mllm::llava::{PromptBuilder, PromptStats, Template};
use semhitok_mllm::llm::load::LoadedLm;
use semhitok_mllm::tokenizer::TextTokenizer;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// An owned copy of what prompt building needs from the LLM (its tokenizer, template, BOS), so
/// the data source does not borrow the model.
#[derive(Debug)]
pub struct LlmText {
    pub tokenizer: TextTokenizer,
    pub chat: Option<ChatTemplate>,
    pub bos: Option<u32>,
    pub template: Template,
    pub max_len: usize,
}

impl LlmText {
    /// From a loaded LLM.
    pub fn of(lm: &LoadedLm, template: Template, max_len: usize) -> Result<Self> {
        let tokenizer = lm.tokenizer.clone();
        let tok = |id: Option<u32>| {
            id.and_then(|i| lm.tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        let chat = match &lm.chat_template {
            Some(t) => Some(ChatTemplate::new(
                t.source(),
                "llm chat template",
                &tok(lm.bos_to_add.or(lm.model.config().bos_token_id)),
                &tok(lm.eos.first().copied()),
            )?),
            None => None,
        };
        let me = Self {
            tokenizer,
            chat,
            bos: lm.bos_to_add,
            template,
            max_len,
        };
        me.builder()?;
        Ok(me)
    }

    /// The prompt builder over this tokenizer and template.
    pub fn builder(&self) -> Result<PromptBuilder<'_>> {
        Ok(PromptBuilder::new(
            &self.tokenizer,
            self.template,
            self.chat.as_ref(),
            self.bos,
            self.max_len,
        )?)
    }

    /// Padding id of the batches: 0 (padded positions are masked out and carry no label).
    pub fn pad_id(&self) -> i64 {
        0
    }
}

/// Counters reported at the end of a run (and in `RUN/data_report.json`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DataReport {
    pub records: usize,
    /// Records `load_llava` skipped (malformed turns, missing images), by reason.
    pub load_skipped: SkipStats,
    /// Records skipped while batching (undecodable image, prompt error), with examples.
    pub batch_skipped: u64,
    pub batch_skip_examples: Vec<String>,
    pub prompts: PromptStats,
}

/// The resumable position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Pos {
    epoch: u64,
    index: usize,
}

/// Token batches of LLaVA records.
#[derive(Debug)]
pub struct LlavaBatches {
    text: LlmText,
    records: Vec<LlavaRecord>,
    image_root: PathBuf,
    image_size: i64,
    n_image: usize,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    order: Vec<usize>,
    pos: Pos,
    limits: DecodeLimits,
    /// Data-parallel shard: this rank's `batch_size` records of each global batch.
    rank: usize,
    world: usize,
    pub report: DataReport,
}

fn permutation(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if shuffle {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in (1..n).rev() {
            v.swap(i, rng.gen_range(0..=i));
        }
    }
    v
}

impl LlavaBatches {
    /// Open `json` (records validated, images checked under `image_root`). `n_image`: feature
    /// positions per image; `image_size`: the tokenizer's input size.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        json: &Path,
        image_root: &Path,
        text: LlmText,
        n_image: usize,
        image_size: i64,
        batch_size: usize,
        limit: Option<usize>,
        shuffle: bool,
        seed: u64,
    ) -> Result<Self> {
        let (mut records, load_skipped) = load_llava(json, Some(image_root))?;
        if let Some(l) = limit {
            records.truncate(l);
        }
        if records.is_empty() {
            return Err(Error::Input(format!(
                "{}: no usable LLaVA records ({} skipped: {:?})",
                json.display(),
                load_skipped.skipped,
                load_skipped.reasons
            )));
        }
        if load_skipped.skipped > 0 {
            eprintln!(
                "llava data {}: {} records skipped ({:?})",
                json.display(),
                load_skipped.skipped,
                load_skipped.reasons
            );
        }
        let order = permutation(records.len(), seed, 0, shuffle);
        Ok(Self {
            report: DataReport {
                records: records.len(),
                load_skipped,
                ..Default::default()
            },
            text,
            records,
            image_root: image_root.to_path_buf(),
            image_size,
            n_image,
            batch_size,
            shuffle,
            seed,
            order,
            pos: Pos { epoch: 0, index: 0 },
            limits: DecodeLimits::default(),
            rank: 0,
            world: 1,
        })
    }

    /// Rank `rank` of `world` of a data-parallel run: each global batch is the next
    /// `world x batch_size` records of the one record order; this rank builds records
    /// `[rank x batch_size, (rank + 1) x batch_size)` of it, so the ranks together train on exactly
    /// what one process with batch `world x batch_size` trains on, and the position (records
    /// consumed) is the same on every rank and independent of the world size. A record that
    /// fails to build leaves its rank's batch one row short (one process would take the next
    /// record instead; the loss weighting by tokens keeps the step a mean over what was built).
    pub fn sharded(mut self, rank: usize, world: usize) -> Self {
        self.rank = rank;
        self.world = world.max(1);
        self
    }

    /// Build record `i` into a row (and its image), counting a failure as skipped.
    fn build(&mut self, i: usize, device: Device) -> Option<(Sequence, Tensor)> {
        let rec = &self.records[i];
        let built = self
            .text
            .builder()
            .and_then(|b| Ok(b.example(&rec.conversations, &rec.id)?))
            .map_err(|e| e.to_string())
            .and_then(|ex| Ok((ex, self.image(rec, device)?)));
        match built {
            Ok((ex, img)) => {
                let seq = expand(&ex, self.n_image, self.text.max_len);
                self.report.prompts.record(&ex, &seq);
                Some((seq, img))
            }
            Err(e) => {
                self.report.batch_skipped += 1;
                if self.report.batch_skip_examples.len() < 100 {
                    let id = self.records[i].id.clone();
                    self.report.batch_skip_examples.push(format!("{id}: {e}"));
                }
                None
            }
        }
    }

    /// Valid records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn next_record(&mut self) -> usize {
        if self.pos.index >= self.order.len() {
            self.pos = Pos {
                epoch: self.pos.epoch + 1,
                index: 0,
            };
            self.order = permutation(self.records.len(), self.seed, self.pos.epoch, self.shuffle);
        }
        let r = self.order[self.pos.index];
        self.pos.index += 1;
        r
    }

    fn image(&self, rec: &LlavaRecord, device: Device) -> std::result::Result<Tensor, String> {
        let Some(rel) = &rec.image else {
            return Ok(Tensor::zeros(
                [1, 3, self.image_size, self.image_size],
                (Kind::Float, device),
            ));
        };
        let p = self.image_root.join(rel);
        let bytes =
            read_image_file(&p, &self.limits).map_err(|e| format!("{}: {e}", p.display()))?;
        let img = decode_rgb8(&bytes, &self.limits).map_err(|e| format!("{}: {e}", p.display()))?;
        let t = Tensor::from_slice(&img.data)
            .view([img.height as i64, img.width as i64, 3])
            .permute([2, 0, 1]);
        semhitok_nn::pretrained::preprocess(&t, self.image_size, device)
            .map_err(|e| format!("{}: {e}", p.display()))
    }
}

impl Batches for LlavaBatches {
    fn next_batch(&mut self, device: Device) -> Result<Batch> {
        let mut rows = vec![];
        let mut images = vec![];
        if self.world > 1 {
            // This rank's slots of the next global batch (see `sharded`).
            let own = self.rank * self.batch_size..(self.rank + 1) * self.batch_size;
            for slot in 0..self.world * self.batch_size {
                let i = self.next_record();
                if own.contains(&slot) {
                    if let Some((seq, img)) = self.build(i, device) {
                        rows.push(seq);
                        images.push(img);
                    }
                }
            }
            if rows.is_empty() {
                return Err(Error::Input(format!(
                    "llava data: none of rank {}'s {} records of this global batch could be used (e.g. {:?})",
                    self.rank,
                    self.batch_size,
                    self.report.batch_skip_examples.last()
                )));
            }
        }
        let mut tries = 0usize;
        while self.world == 1 && rows.len() < self.batch_size {
            tries += 1;
            if tries > self.records.len() * 2 + self.batch_size {
                return Err(Error::Input(format!(
                    "llava data: no usable record in a whole epoch ({} skipped while batching, e.g. {:?})",
                    self.report.batch_skipped,
                    self.report.batch_skip_examples.first()
                )));
            }
            let i = self.next_record();
            if let Some((seq, img)) = self.build(i, device) {
                rows.push(seq);
                images.push(img);
            }
        }
        let (input_ids, labels, attention_mask) = collate(&rows, self.text.pad_id(), device)?;
        Ok(Batch::Tokens(TokenBatch {
            input_ids,
            labels,
            attention_mask,
            images: Some(Tensor::cat(&images, 0)),
        }))
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({"epoch": self.pos.epoch, "index": self.pos.index, "records": self.records.len()})
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let bad = || {
            Error::Input(format!(
                "llava data state {state}: expected epoch, index, records"
            ))
        };
        let epoch = state["epoch"].as_u64().ok_or_else(bad)?;
        let index = state["index"].as_u64().ok_or_else(bad)? as usize;
        let n = state["records"].as_u64().ok_or_else(bad)? as usize;
        if n != self.records.len() || index > n {
            return Err(Error::Input(format!(
                "llava data state from a set of {n} records; this one has {} (another JSON or limit?)",
                self.records.len()
            )));
        }
        self.pos = Pos { epoch, index };
        self.order = permutation(self.records.len(), self.seed, epoch, self.shuffle);
        Ok(())
    }
}
