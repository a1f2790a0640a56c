//! Guided autoregressive image-token generation with the KV cache.
//!
//! Layout (LlamaGen's `generate.py`): with guidance the batch has 2B rows, the B conditional
//! prompts `[bos] caption <boi>` first and B unconditional ones `[bos] <boi>` after them, left
//! padded into one prefill; then one token per step for all 2B rows, the same sampled token
//! appended to a sample's conditional and unconditional row. Guided logits `u + s (c - u)` on
//! guided steps ([`Guidance::guides`]), the conditional logits on the others; with `s = 1`
//! only the B conditional rows exist. Each sample has its own seed: its host RNG
//! (ChaCha8 seeded with the sample's seed) gives one uniform per step, so a sample does not
//! depend on which batch it ran in, and the device picks by inverse CDF
//! ([`super::sampler`]). The sampled ids stay on the device until the last step (no host
//! sync per token: the uniforms do not depend on earlier picks).

use super::sampler::VisualSampling;
use super::sequence::T2iLayout;
use crate::cfg::{guided_logits, Guidance};
use crate::error::{Error, Result};
use crate::generate::left_pad;
use crate::llm::{Input, KvCache, LlamaModel};
use crate::vocab::VisualVocab;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// A causal LM seen through its visual logits.
pub trait VisualLogits {
    /// Device the logits live on.
    fn device(&self) -> Device;
    /// Start `R` rows: ids [R, L] int64 left padded, mask [R, L] (nonzero = real) or `None` ->
    /// the visual logits after the last position, [R, K * m].
    fn prefill(&mut self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor>;
    /// Append one token per row, ids [R] int64 -> visual logits [R, K * m].
    fn step(&mut self, ids: &Tensor) -> Result<Tensor>;
}

/// [`LlamaModel`] with a [`KvCache`]: the prefill fills the cache, each step feeds one token.
/// Only the visual rows of the output head are multiplied (`[K * m, H]` of `lm_head`).
#[derive(Debug)]
pub struct CachedVisualLm<'a> {
    model: &'a LlamaModel,
    head: Tensor,
    cache: Option<KvCache>,
    max_new: i64,
}

impl<'a> CachedVisualLm<'a> {
    /// `model` must already have the extended vocabulary (`vocab.total()` rows); the cache of
    /// the next prefill has room for `max_new` tokens after the prompt.
    pub fn new(model: &'a LlamaModel, vocab: &VisualVocab, max_new: usize) -> Result<Self> {
        Ok(Self {
            model,
            head: visual_head(model, vocab)?,
            cache: None,
            max_new: max_new as i64,
        })
    }
}

/// The visual rows of `model`'s output head, [K * m, H]; errors when the model has not been
/// extended to `vocab`.
pub fn visual_head(model: &LlamaModel, vocab: &VisualVocab) -> Result<Tensor> {
    let v = model.config().vocab_size;
    if v != vocab.total() as i64 {
        return Err(Error::Config(format!(
            "the LLM has {v} vocabulary rows but the visual vocabulary needs {} ({} + {} new); \
             was it extended (extend_vocab) for this tokenizer?",
            vocab.total(),
            vocab.rows(),
            vocab.n_new()
        )));
    }
    Ok(model
        .lm_head_weight()
        .f_narrow(0, vocab.visual_start() as i64, vocab.n_visual() as i64)?)
}

/// hidden [R, 1, H] -> visual logits [R, K * m] (f32).
pub fn visual_logits(hidden_last: &Tensor, head: &Tensor) -> Result<Tensor> {
    Ok(hidden_last
        .f_squeeze_dim(1)?
        .f_linear::<&Tensor>(head, None)?
        .f_to_kind(Kind::Float)?)
}

impl VisualLogits for CachedVisualLm<'_> {
    fn device(&self) -> Device {
        self.model.device()
    }
    fn prefill(&mut self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (r, l) = (ids.size()[0], ids.size()[1]);
        let mut cache = self.model.new_cache(r, l + self.max_new)?;
        let h = self
            .model
            .forward_hidden(Input::Ids(ids), mask, &mut cache)?;
        self.cache = Some(cache);
        visual_logits(&h.f_narrow(1, l - 1, 1)?, &self.head)
    }
    fn step(&mut self, ids: &Tensor) -> Result<Tensor> {
        let cache = self
            .cache
            .as_mut()
            .ok_or_else(|| Error::Config("step before prefill".into()))?;
        let h = self
            .model
            .forward_hidden(Input::Ids(&ids.f_unsqueeze(1)?), None, cache)?;
        visual_logits(&h, &self.head)
    }
}

/// Sampling settings of text-to-image generation.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct T2iSampling {
    /// Temperature, top-k, top-p over the visual tokens.
    pub sampling: VisualSampling,
    /// Classifier-free guidance.
    pub guidance: Guidance,
}

/// One image to generate: its caption's token ids and its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    /// Caption token ids (no bos; empty = unconditional).
    pub caption: Vec<u32>,
    /// The sample's seed.
    pub seed: u64,
}

/// Generate `n_tokens` unified ids for every request in one batch (B = requests, 2B rows with
/// guidance). Returns the unified ids per request.
pub fn generate_visual(
    lm: &mut dyn VisualLogits,
    layout: &T2iLayout,
    requests: &[ImageRequest],
    n_tokens: usize,
    cfg: &T2iSampling,
) -> Result<Vec<Vec<u32>>> {
    cfg.sampling.validate()?;
    cfg.guidance.validate()?;
    if requests.is_empty() || n_tokens == 0 {
        return Err(Error::Config(
            "generation needs at least one request and one token".into(),
        ));
    }
    let b = requests.len();
    let two = cfg.guidance.needs_uncond();
    let mut prompts: Vec<Vec<u32>> = requests
        .iter()
        .map(|r| layout.prompt(&r.caption))
        .collect::<Result<_>>()?;
    if two {
        prompts.extend(std::iter::repeat_n(layout.uncond_prompt(), b));
    }
    let device = lm.device();
    let (ids, mask) = left_pad(&prompts, 0)?;
    let padded = prompts.iter().any(|p| p.len() != prompts[0].len());
    let mask = mask.f_to_device(device)?;
    // Uniforms in (0, 1]: [n_tokens, B], one per sample per step from the sample's own RNG.
    let mut u = vec![0f64; n_tokens * b];
    for (j, r) in requests.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(r.seed);
        for t in 0..n_tokens {
            u[t * b + j] = 1.0 - rng.gen::<f64>();
        }
    }
    let u = Tensor::from_slice(&u)
        .f_view([n_tokens as i64, b as i64])?
        .f_to_device(device)?;
    let start = layout.vocab.visual_start() as i64;
    let mut logits = lm.prefill(
        &ids.f_to_device(device)?,
        if padded { Some(&mask) } else { None },
    )?;
    let mut picked = Vec::with_capacity(n_tokens);
    for t in 0..n_tokens {
        let l = if two {
            let c = logits.f_narrow(0, 0, b as i64)?;
            if cfg.guidance.guides(t) {
                guided_logits(
                    &c,
                    &logits.f_narrow(0, b as i64, b as i64)?,
                    cfg.guidance.scale,
                )?
            } else {
                c
            }
        } else {
            logits
        };
        let idx = cfg.sampling.pick(&l, &u.f_select(0, t as i64)?)?; // [B]
        if t + 1 < n_tokens {
            let tok = idx.f_add_scalar(start)?;
            let next = if two {
                Tensor::f_cat(&[&tok, &tok], 0)?
            } else {
                tok
            };
            logits = lm.step(&next)?;
        } else {
            logits = l;
        }
        picked.push(idx);
    }
    drop(logits);
    let all = Tensor::f_stack(&picked, 1)?.f_to_device(Device::Cpu)?; // [B, n_tokens]
    let flat: Vec<i64> = Vec::<i64>::try_from(all.f_reshape([-1])?)?;
    Ok(flat
        .chunks(n_tokens)
        .map(|row| row.iter().map(|&x| x as u32).collect())
        .collect())
}

/// [`generate_visual`] over `requests` in batches of at most `batch` images each, with the KV
/// cache of `model` (extended to `layout.vocab`).
pub fn generate_images(
    model: &LlamaModel,
    layout: &T2iLayout,
    requests: &[ImageRequest],
    n_tokens: usize,
    cfg: &T2iSampling,
    batch: usize,
) -> Result<Vec<Vec<u32>>> {
    if batch == 0 {
        return Err(Error::Config("generation batch must be >= 1".into()));
    }
    let mut out = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(batch) {
        let mut lm = CachedVisualLm::new(model, &layout.vocab, n_tokens)?;
        out.extend(generate_visual(&mut lm, layout, chunk, n_tokens, cfg)?);
    }
    Ok(out)
}
