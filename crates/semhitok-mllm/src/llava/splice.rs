//! Splicing image features into the token sequence, truncation, padding into a batch.
//!
//! Layout convention of the trainer's `TokenBatch` (and of LLaVA's
//! `prepare_inputs_labels_for_multimodal`, haotian-liu/LLaVA c121f04 `llava/model/llava_arch.py`):
//! each [`IMAGE_TOKEN_INDEX`] of an [`Example`] becomes `n` consecutive positions (one per
//! projected image feature, written as `n` [`IMAGE_TOKEN_INDEX`] ids) whose labels are
//! [`IGNORE_INDEX`]; the sequence is then cut to the model's limit and right-padded. At the
//! embedding level, [`splice_embeddings`] writes the projected features over those positions.

use super::prompt::Example;
use super::{IGNORE_INDEX, IMAGE_TOKEN_INDEX};
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// One conversation with its image positions expanded: what one row of a batch holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// Ids, `n_image` [`IMAGE_TOKEN_INDEX`] per image.
    pub input_ids: Vec<i64>,
    /// Labels aligned with `input_ids`.
    pub labels: Vec<i64>,
    /// Whether it was cut at the model's limit.
    pub truncated: bool,
}

/// Counters of prompt building, reported once per run (the "counted warning").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PromptStats {
    /// Examples built.
    pub examples: u64,
    /// Examples cut at `max_len`.
    pub truncated: u64,
    /// Examples whose labels LLaVA's mismatch rule ignored.
    pub mismatched: u64,
    /// Examples without an image (text-only records).
    pub text_only: u64,
    /// Examples with no target left after truncation / masking.
    pub no_targets: u64,
}

impl PromptStats {
    /// Counts one example.
    pub fn record(&mut self, ex: &Example, seq: &Sequence) {
        self.examples += 1;
        self.truncated += seq.truncated as u64;
        self.mismatched += ex.mismatch as u64;
        self.text_only += !ex.has_image() as u64;
        self.no_targets += seq.labels.iter().all(|&l| l == IGNORE_INDEX) as u64;
    }
    /// A one-line warning when anything was truncated or masked, `None` otherwise.
    pub fn warning(&self, max_len: usize) -> Option<String> {
        (self.truncated + self.mismatched > 0).then(|| {
            format!(
                "llava prompts: {} of {} sequences truncated at max_seq_len = {max_len}, {} with \
                 LLaVA's tokenization mismatch (labels ignored), {} without any target",
                self.truncated, self.examples, self.mismatched, self.no_targets
            )
        })
    }
}

/// Expands each [`IMAGE_TOKEN_INDEX`] to `n_image` positions and cuts to `max_len`.
pub fn expand(ex: &Example, n_image: usize, max_len: usize) -> Sequence {
    let mut input_ids = Vec::with_capacity(ex.input_ids.len() + n_image);
    let mut labels = Vec::with_capacity(input_ids.capacity());
    for (&t, &l) in ex.input_ids.iter().zip(&ex.labels) {
        if t == IMAGE_TOKEN_INDEX {
            input_ids.extend(std::iter::repeat_n(IMAGE_TOKEN_INDEX, n_image));
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, n_image));
        } else {
            input_ids.push(t);
            labels.push(l);
        }
    }
    let truncated = input_ids.len() > max_len;
    input_ids.truncate(max_len);
    labels.truncate(max_len);
    Sequence {
        input_ids,
        labels,
        truncated,
    }
}

/// Right-padded batch: `(input_ids [B, L] int64 padded with pad_id, labels [B, L] padded with
/// IGNORE_INDEX, attention_mask [B, L] bool)`, L the longest row.
pub fn collate(rows: &[Sequence], pad_id: i64, device: Device) -> Result<(Tensor, Tensor, Tensor)> {
    let b = rows.len();
    let l = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
    if b == 0 || l == 0 {
        return Err(Error::Prompt {
            what: "collate".into(),
            msg: format!("empty batch ({b} rows, longest {l})"),
        });
    }
    let mut ids = vec![pad_id; b * l];
    let mut labels = vec![IGNORE_INDEX; b * l];
    let mut mask = vec![false; b * l];
    for (i, r) in rows.iter().enumerate() {
        let n = r.input_ids.len();
        ids[i * l..i * l + n].copy_from_slice(&r.input_ids);
        labels[i * l..i * l + n].copy_from_slice(&r.labels);
        mask[i * l..i * l + n].fill(true);
    }
    let shape = [b as i64, l as i64];
    Ok((
        Tensor::from_slice(&ids).view(shape).to(device),
        Tensor::from_slice(&labels).view(shape).to(device),
        Tensor::from_slice(&mask).view(shape).to(device),
    ))
}

/// Positions of image features per row: `[B, L]` bool, `input_ids == IMAGE_TOKEN_INDEX`.
pub fn image_mask(input_ids: &Tensor) -> Tensor {
    input_ids.eq(IMAGE_TOKEN_INDEX)
}

/// Token ids safe for the embedding lookup: image positions (and any negative id) read id 0;
/// their embeddings are overwritten by [`splice_embeddings`].
pub fn text_ids(input_ids: &Tensor) -> Tensor {
    input_ids.clamp_min(0)
}

/// Writes image features over the image positions.
///
/// `text_embeds`: [B, L, D] (embeddings of [`text_ids`]); `input_ids`: [B, L];
/// `image_feats`: [B, N, D], row b's features for its N image positions. Every row must have
/// either N image positions or none (a text-only record, whose features are unused); a row cut
/// inside its image (truncation) takes the first features. Returns [B, L, D], differentiable
/// in both embeddings and features.
pub fn splice_embeddings(
    text_embeds: &Tensor,
    input_ids: &Tensor,
    image_feats: &Tensor,
) -> Result<Tensor> {
    let (b, l, d) = text_embeds.size3()?;
    let fs = image_feats.size();
    if input_ids.size() != [b, l] || fs.len() != 3 || fs[0] != b || fs[2] != d {
        return Err(Error::Shape {
            what: "splice_embeddings (text_embeds, input_ids, image_feats)",
            expected: format!("[{b}, {l}, {d}], [{b}, {l}], [{b}, N, {d}]"),
            got: [text_embeds.size(), input_ids.size(), fs].concat(),
        });
    }
    let n = fs[1];
    let mask = image_mask(input_ids); // [B, L]
    let counts: Vec<i64> = Vec::<i64>::try_from(mask.sum_dim_intlist(1, false, Kind::Int64))?;
    for (row, &c) in counts.iter().enumerate() {
        if c > n {
            return Err(Error::Shape {
                what: "image positions of a row",
                expected: format!("at most N = {n} (the image features per image)"),
                got: vec![row as i64, c],
            });
        }
    }
    if n == 0 {
        return Ok(text_embeds.shallow_clone());
    }
    // Row b's k-th image position takes feature k: rank positions within the row, gather.
    let rank = mask.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1; // [B, L]
    let idx = rank
        .clamp(0, (n - 1).max(0))
        .unsqueeze(-1)
        .expand([b, l, d], false);
    let gathered = image_feats
        .to_kind(text_embeds.kind())
        .gather(1, &idx, false); // [B, L, D]
    Ok(text_embeds.where_self(&mask.logical_not().unsqueeze(-1), &gathered))
}
