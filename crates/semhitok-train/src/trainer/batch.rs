//! [`Batch`]: what a [`Batches`](super::Batches) source hands to [`Task::loss`](super::Task):
//! images for the tokenizer stages, token sequences (with or without images) for the LLM ones.

use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// Position in `input_ids` where an image's features go (LLaVA's `IMAGE_TOKEN_INDEX`).
pub const IMAGE_TOKEN_INDEX: i64 = -200;
/// A label that takes no loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// One micro-batch.
#[derive(Debug)]
pub enum Batch {
    /// Images `[B, 3, H, W]` in [-1, 1].
    Images(Tensor),
    /// Token sequences (LLaVA, text-to-image).
    Tokens(TokenBatch),
}

/// Right-padded token sequences with their labels.
#[derive(Debug)]
pub struct TokenBatch {
    /// `[B, L]` int64; [`IMAGE_TOKEN_INDEX`] at image-feature positions.
    pub input_ids: Tensor,
    /// `[B, L]` int64, aligned with `input_ids` (unshifted); [`IGNORE_INDEX`] = no loss.
    pub labels: Tensor,
    /// `[B, L]` bool, true = real token (right padding).
    pub attention_mask: Tensor,
    /// `[B, 3, H, W]` in [-1, 1] (LLaVA), `None` (text-to-image).
    pub images: Option<Tensor>,
}

impl Batch {
    /// The images of an [`Batch::Images`] batch; an error naming the variant otherwise.
    pub fn images(&self) -> Result<&Tensor> {
        match self {
            Batch::Images(t) => Ok(t),
            Batch::Tokens(_) => Err(Error::Input(
                "this task trains on images, but the data source gave a token batch".into(),
            )),
        }
    }

    /// The token batch of a [`Batch::Tokens`] batch; an error naming the variant otherwise.
    pub fn tokens(&self) -> Result<&TokenBatch> {
        match self {
            Batch::Tokens(t) => Ok(t),
            Batch::Images(_) => Err(Error::Input(
                "this task trains on token sequences, but the data source gave an image batch"
                    .into(),
            )),
        }
    }

    /// Samples in the batch (B), for the throughput figures.
    pub fn len(&self) -> usize {
        let t = match self {
            Batch::Images(t) => t,
            Batch::Tokens(t) => &t.input_ids,
        };
        t.size().first().map_or(0, |&b| b.max(0) as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TokenBatch {
    /// Shapes and dtypes as documented on the fields, else an error naming the tensor and its
    /// shape (no device work: metadata only).
    pub fn check(&self) -> Result<()> {
        let ids = self.input_ids.size();
        let bad = |what: &str, msg: String| Err(Error::Input(format!("token batch: {what} {msg}")));
        if ids.len() != 2 {
            return bad("input_ids", format!("has shape {ids:?}, expected [B, L]"));
        }
        for (name, t, kind) in [
            ("input_ids", &self.input_ids, Kind::Int64),
            ("labels", &self.labels, Kind::Int64),
            ("attention_mask", &self.attention_mask, Kind::Bool),
        ] {
            if t.size() != ids {
                return bad(name, format!("has shape {:?}, input_ids {ids:?}", t.size()));
            }
            if t.kind() != kind {
                return bad(name, format!("is {:?}, expected {kind:?}", t.kind()));
            }
        }
        if let Some(im) = &self.images {
            let s = im.size();
            if s.len() != 4 || s[0] != ids[0] || s[1] != 3 {
                return bad(
                    "images",
                    format!("has shape {s:?}, expected [{}, 3, H, W]", ids[0]),
                );
            }
        }
        Ok(())
    }

    /// The number of labels a causal LM loss averages over: positions `1..L` whose label is
    /// not [`IGNORE_INDEX`] (position 0 predicts nothing after the shift). An int64 scalar on
    /// the batch's device (no host sync).
    pub fn n_loss_tokens(&self) -> Result<Tensor> {
        let shifted = self.labels.f_slice(1, 1, None, 1)?;
        Ok(shifted.f_ne(IGNORE_INDEX)?.f_sum(Kind::Int64)?)
    }

    /// Real (unpadded) tokens: the `attention_mask` count, an int64 scalar on the device.
    pub fn n_tokens(&self) -> Result<Tensor> {
        Ok(self.attention_mask.f_sum(Kind::Int64)?)
    }

    /// Move every tensor to `device`.
    pub fn to_device(&self, device: tch::Device) -> TokenBatch {
        TokenBatch {
            input_ids: self.input_ids.to_device(device),
            labels: self.labels.to_device(device),
            attention_mask: self.attention_mask.to_device(device),
            images: self.images.as_ref().map(|t| t.to_device(device)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tb() -> TokenBatch {
        TokenBatch {
            input_ids: Tensor::from_slice(&[1i64, IMAGE_TOKEN_INDEX, 3, 0, 5, 6, 7, 8])
                .view([2, 4]),
            labels: Tensor::from_slice(&[IGNORE_INDEX, IGNORE_INDEX, 3, IGNORE_INDEX, 5, 6, 7, 8])
                .view([2, 4]),
            attention_mask: Tensor::from_slice(&[true, true, true, false, true, true, true, true])
                .view([2, 4]),
            images: None,
        }
    }

    #[test]
    fn counts_and_accessors() {
        let b = tb();
        b.check().unwrap();
        // Row 0: labels[1..] = [-100, 3, -100] -> 1; row 1: [6, 7, 8] -> 3.
        assert_eq!(b.n_loss_tokens().unwrap().int64_value(&[]), 4);
        assert_eq!(b.n_tokens().unwrap().int64_value(&[]), 7);
        let batch = Batch::Tokens(b);
        assert_eq!(batch.len(), 2);
        assert!(batch.tokens().is_ok());
        let e = batch.images().unwrap_err().to_string();
        assert!(e.contains("token batch"), "{e}");
        let im = Batch::Images(Tensor::zeros([3, 3, 8, 8], (Kind::Float, tch::Device::Cpu)));
        assert_eq!(im.len(), 3);
        assert!(im.tokens().unwrap_err().to_string().contains("image batch"));
    }

    #[test]
    fn check_names_tensor_and_shape() {
        let mut b = tb();
        b.labels = b.labels.narrow(1, 0, 3);
        let e = b.check().unwrap_err().to_string();
        assert!(e.contains("labels") && e.contains("[2, 3]"), "{e}");
        let mut b = tb();
        b.attention_mask = b.attention_mask.to_kind(Kind::Int64);
        let e = b.check().unwrap_err().to_string();
        assert!(e.contains("attention_mask") && e.contains("Bool"), "{e}");
        let mut b = tb();
        b.images = Some(Tensor::zeros([1, 3, 8, 8], (Kind::Float, tch::Device::Cpu)));
        let e = b.check().unwrap_err().to_string();
        assert!(e.contains("images") && e.contains("[2, 3, H, W]"), "{e}");
    }
}
