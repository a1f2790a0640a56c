//! The text-to-image sequence layout, its loss mask, and right-padded training batches.
//!
//! ```text
//! [bos] caption tokens <boi> v_0 .. v_{n-1} <eoi>
//! ```
//! `bos` is the model's `bos_token_id` when its config has one (SmolLM2: `<|im_start|>`), else
//! nothing. The **unconditional text is the empty caption**: `[bos] <boi>`; caption dropout
//! ([`crate::cfg::TextDropout`]) trains on it with p = 0.1 and the guided sampler's
//! unconditional rows start from it. Labels are the input ids themselves (unshifted, the loss
//! shifts) at the visual tokens and `<eoi>`, `-100` elsewhere: no loss on the caption, `bos` or
//! `<boi>`.

use crate::error::{Error, Result};
use crate::vocab::VisualVocab;
use tch::Tensor;

/// Label of a position without loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// How captions and image ids become one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct T2iLayout {
    /// The extended vocabulary.
    pub vocab: VisualVocab,
    /// First token of every sequence (the model's `bos_token_id`), if any.
    pub bos: Option<u32>,
}

/// One training example: input ids and labels of equal length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct T2iExample {
    /// `[bos] caption <boi> visual <eoi>`.
    pub input_ids: Vec<i64>,
    /// The input id at visual tokens and `<eoi>`, [`IGNORE`] elsewhere.
    pub labels: Vec<i64>,
}

impl T2iLayout {
    /// Layout over `vocab`; `bos` must be a text id (below `vocab.rows()`).
    pub fn new(vocab: VisualVocab, bos: Option<u32>) -> Result<Self> {
        if let Some(b) = bos {
            check_text(&vocab, &[b], "bos token id")?;
        }
        Ok(Self { vocab, bos })
    }

    /// The prompt the sampler continues: `[bos] caption <boi>`.
    pub fn prompt(&self, caption: &[u32]) -> Result<Vec<u32>> {
        check_text(&self.vocab, caption, "caption token id")?;
        let mut p = Vec::with_capacity(caption.len() + 2);
        p.extend(self.bos);
        p.extend_from_slice(caption);
        p.push(self.vocab.boi());
        Ok(p)
    }

    /// The unconditional prompt: the empty caption, `[bos] <boi>`.
    pub fn uncond_prompt(&self) -> Vec<u32> {
        self.bos.into_iter().chain([self.vocab.boi()]).collect()
    }

    /// Training example of `caption` (already dropped to `&[]` when trained unconditionally)
    /// and the image's unified ids.
    pub fn example(&self, caption: &[u32], unified_ids: &[u32]) -> Result<T2iExample> {
        let prompt = self.prompt(caption)?;
        let n_prompt = prompt.len();
        let mut input_ids: Vec<i64> = prompt.into_iter().map(i64::from).collect();
        for &u in unified_ids {
            input_ids.push(self.vocab.token_of(u)? as i64);
        }
        input_ids.push(self.vocab.eoi() as i64);
        let labels = input_ids
            .iter()
            .enumerate()
            .map(|(i, &t)| if i >= n_prompt { t } else { IGNORE })
            .collect();
        Ok(T2iExample { input_ids, labels })
    }
}

fn check_text(vocab: &VisualVocab, ids: &[u32], what: &'static str) -> Result<()> {
    match ids.iter().find(|&&t| t >= vocab.rows()) {
        Some(&t) => Err(Error::OutOfRange {
            what,
            value: t as i64,
            lo: 0,
            hi: vocab.rows() as i64,
        }),
        None => Ok(()),
    }
}

/// Right-padded batch tensors (all on the CPU): `(input_ids [B, L] int64, labels [B, L] int64,
/// attention_mask [B, L] bool)` with `L` the longest example, `pad` in the padding of
/// `input_ids`, [`IGNORE`] in the padding of `labels` and `false` in the padding of the mask.
/// Padding (not packing): one example per row, so attention never crosses examples and the
/// positions of every example start at 0, as at sampling time.
pub fn right_pad(examples: &[T2iExample], pad: i64) -> Result<(Tensor, Tensor, Tensor)> {
    let l = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    if examples.is_empty() || l == 0 {
        return Err(Error::Config(
            "a T2I batch needs at least one example".into(),
        ));
    }
    let b = examples.len();
    let mut ids = vec![pad; b * l];
    let mut labels = vec![IGNORE; b * l];
    let mut mask = vec![false; b * l];
    for (r, e) in examples.iter().enumerate() {
        if e.labels.len() != e.input_ids.len() {
            return Err(Error::Shape {
                what: "T2I example labels",
                expected: format!("[{}]", e.input_ids.len()),
                got: vec![e.labels.len() as i64],
            });
        }
        let o = r * l;
        ids[o..o + e.input_ids.len()].copy_from_slice(&e.input_ids);
        labels[o..o + e.labels.len()].copy_from_slice(&e.labels);
        mask[o..o + e.input_ids.len()]
            .iter_mut()
            .for_each(|m| *m = true);
    }
    let shape = [b as i64, l as i64];
    Ok((
        Tensor::from_slice(&ids).f_view(shape)?,
        Tensor::from_slice(&labels).f_view(shape)?,
        Tensor::from_slice(&mask).f_view(shape)?,
    ))
}
