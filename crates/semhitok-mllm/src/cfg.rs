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

/// Classifier-free guidance at sampling time: the scale and the image-token steps it applies to.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guidance {
    /// `s` of `u + s (c - u)`; 1 = no guidance (and no unconditional pass).
    pub scale: f64,
    /// Guidance interval: steps `start..end` (0 = the first image token) are guided, the others
    /// take the conditional logits (LlamaGen's `cfg_interval = c` is `0..c + 2`). `None`: all.
    pub interval: Option<(usize, usize)>,
}

impl Default for Guidance {
    fn default() -> Self {
        Self {
            scale: 1.0,
            interval: None,
        }
    }
}

impl Guidance {
    /// Guidance with `scale` at every step.
    pub fn scale(scale: f64) -> Self {
        Self {
            scale,
            interval: None,
        }
    }
    /// Errors when the scale is not finite or the interval is reversed.
    pub fn validate(&self) -> Result<()> {
        if !self.scale.is_finite() {
            return Err(Error::Config(format!(
                "cfg scale {} must be finite",
                self.scale
            )));
        }
        if let Some((a, b)) = self.interval {
            if a > b {
                return Err(Error::Config(format!("cfg interval {a}..{b} is reversed")));
            }
        }
        Ok(())
    }
    /// Whether the unconditional rows run at all (scale != 1 and a non-empty interval).
    pub fn needs_uncond(&self) -> bool {
        self.scale != 1.0 && self.interval.is_none_or(|(a, b)| a < b)
    }
    /// Whether step `t` (0 = first image token) is guided.
    pub fn guides(&self, t: usize) -> bool {
        self.needs_uncond() && self.interval.is_none_or(|(a, b)| (a..b).contains(&t))
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
