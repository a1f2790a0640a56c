//! Classifier-free guidance: caption dropout while training, guided logits while sampling.

use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

/// Drops the caption of a training sample with probability `p` (the paper: 0.1), replacing it
/// with the unconditional prompt, so one model learns both p(image | text) and p(image).
/// Seeded and sample-indexed: the decision for sample `i` of epoch `e` does not depend on the
/// order samples are seen in, so resumed or sharded runs drop the same captions.
#[derive(Debug, Clone)]
pub struct TextDropout {
    p: f64,
    seed: u64,
}

impl TextDropout {
    /// `p` in [0, 1].
    pub fn new(p: f64, seed: u64) -> Result<Self> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Config(format!(
                "text dropout probability {p} is outside [0, 1]"
            )));
        }
        Ok(Self { p, seed })
    }
    /// Whether sample `index` of `epoch` is trained unconditionally.
    pub fn drops(&self, epoch: u64, index: u64) -> bool {
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.set_stream(index);
        rng.gen_bool(self.p)
    }
    /// The caption to train on: `text`, or `uncond` when dropped.
    pub fn apply<'a>(
        &self,
        epoch: u64,
        index: u64,
        text: &'a [u32],
        uncond: &'a [u32],
    ) -> &'a [u32] {
        if self.drops(epoch, index) {
            uncond
        } else {
            text
        }
    }
}

/// Guided logits `uncond + scale * (cond - uncond)`; `scale = 1` gives `cond`.
/// cond, uncond: [B, V] (or any equal shapes) -> same shape.
pub fn guided_logits(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor> {
    if cond.size() != uncond.size() {
        return Err(Error::Shape {
            what: "uncond logits",
            expected: format!("{:?}", cond.size()),
            got: uncond.size(),
        });
    }
    Ok(uncond.f_add(&cond.f_sub(uncond)?.f_mul_scalar(scale)?)?)
}
