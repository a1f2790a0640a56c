//! Autoregressive text-to-image sampling over the extended vocabulary.
//!
//! Sampling happens on the CPU from the model's last-position logits with a seeded ChaCha RNG,
//! so results are identical on CPU and CUDA and reproducible from the seed.

use crate::cfg::guided_logits;
use crate::error::{Error, Result};
use crate::vocab::VisualVocab;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// Any causal LM over the extended vocabulary.
pub trait NextTokenModel {
    /// tokens: [B, L] int64 -> logits for the next token: [B, V] with V = vocab.total().
    fn next_logits(&mut self, tokens: &Tensor) -> Result<Tensor>;
}

/// Sampling settings (LlamaGen's defaults: top-k 0 = off, top-p 1 = off, temperature 1, CFG 4).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Softmax temperature (> 0).
    pub temperature: f64,
    /// Keep the k most likely visual tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of visual tokens whose probability reaches p (1.0 = all).
    pub top_p: f64,
    /// Classifier-free guidance scale (1.0 = no guidance, and the unconditional pass is skipped).
    pub cfg_scale: f64,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            cfg_scale: 4.0,
            seed: 0,
        }
    }
}

/// Draw one visual token from `logits` ([V] over the whole extended vocabulary), considering
/// only the visual range. Returns the unified id.
pub fn sample_visual(
    logits: &[f32],
    vocab: &VisualVocab,
    cfg: &SamplingConfig,
    rng: &mut ChaCha8Rng,
) -> Result<u32> {
    if logits.len() != vocab.total() as usize {
        return Err(Error::Shape {
            what: "logits",
            expected: format!("[{}]", vocab.total()),
            got: vec![logits.len() as i64],
        });
    }
    if cfg.temperature <= 0.0 || !(0.0..=1.0).contains(&cfg.top_p) || cfg.top_p == 0.0 {
        return Err(Error::Config(format!(
            "temperature must be > 0 and top_p in (0, 1]: {cfg:?}"
        )));
    }
    let r = vocab.visual_range();
    let vis = &logits[r.start as usize..r.end as usize];
    let mut order: Vec<u32> = (0..vis.len() as u32).collect();
    // Descending by logit; ties broken by the lower id so the result never depends on sort stability.
    order.sort_unstable_by(|&a, &b| vis[b as usize].total_cmp(&vis[a as usize]).then(a.cmp(&b)));
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k);
    }
    let max = vis[order[0] as usize] as f64;
    if !max.is_finite() {
        return Err(Error::Config(format!(
            "visual logits are not finite (max {max})"
        )));
    }
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((vis[i as usize] as f64 - max) / cfg.temperature).exp())
        .collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if cfg.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= cfg.top_p
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
    }
    let mut u: f64 = rng.gen();
    for (p, &id) in probs.iter().zip(&order) {
        if u < *p {
            return Ok(id);
        }
        u -= p;
    }
    Ok(*order.last().expect("non-empty: K*m >= 1"))
}

/// Generate `n_tokens` visual tokens after `prompt ++ <boi>`; with `cfg_scale != 1` also runs
/// `uncond_prompt ++ <boi>` and samples from the guided logits. Returns unified ids (then
/// `SemHiTok::decode` turns them into an image). No KV cache: each step re-runs the prefix.
pub fn generate(
    model: &mut dyn NextTokenModel,
    vocab: &VisualVocab,
    prompt: &[u32],
    uncond_prompt: &[u32],
    n_tokens: usize,
    cfg: &SamplingConfig,
) -> Result<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let guided = cfg.cfg_scale != 1.0;
    let mut cond: Vec<i64> = prompt
        .iter()
        .map(|&t| t as i64)
        .chain([vocab.boi() as i64])
        .collect();
    let mut uncond: Vec<i64> = uncond_prompt
        .iter()
        .map(|&t| t as i64)
        .chain([vocab.boi() as i64])
        .collect();
    let mut out = Vec::with_capacity(n_tokens);
    for _ in 0..n_tokens {
        let lc = model.next_logits(&Tensor::from_slice(&cond).unsqueeze(0))?;
        let logits = if guided {
            let lu = model.next_logits(&Tensor::from_slice(&uncond).unsqueeze(0))?;
            guided_logits(&lc, &lu, cfg.cfg_scale)?
        } else {
            lc
        };
        let v: Vec<f32> = Vec::<f32>::try_from(
            logits
                .f_to_kind(Kind::Float)?
                .f_to_device(tch::Device::Cpu)?
                .f_reshape([-1])?,
        )?;
        let u = sample_visual(&v, vocab, cfg, &mut rng)?;
        let tok = vocab.token_of(u)? as i64;
        cond.push(tok);
        uncond.push(tok);
        out.push(u);
    }
    Ok(out)
}
