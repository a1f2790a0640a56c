//! Text generation with the KV cache: on-device sampling (greedy, temperature, top-k, top-p,
//! repetition penalty), eos and stop strings, streaming, batched prompts with left padding.
//!
//! The logits never leave the device: each step copies only the sampled ids ([B] int64) to the
//! host (for eos, stop strings and streaming). Sampling draws from LibTorch's generator, seeded
//! with `GenerationConfig::seed` at the start, so a run is reproducible on one device.
//! (Visual tokens with CFG are sampled by [`crate::t2i`], reproducibly across devices.)

use crate::error::{Error, Result};
use crate::llm::{Input, KvCache, LlamaModel, LogitsAt, StaticDecoder, StepRun};
use crate::tokenizer::TextTokenizer;
use std::time::Instant;
use tch::{Kind, Tensor};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// argmax.
    Greedy,
    /// Softmax sampling of `logits / temperature`, optionally restricted to the `top_k` most
    /// likely tokens and to the smallest set whose probability reaches `top_p`.
    Sample {
        /// > 0.
        temperature: f64,
        /// 0 = off.
        top_k: i64,
        /// In (0, 1]; 1 = off.
        top_p: f64,
    },
}

/// How the decode steps after the prefill run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeMode {
    /// [`LlamaModel::forward`] per token: attention over the filled slots only.
    #[default]
    Dynamic,
    /// [`LlamaModel::forward_static`] per token, ops issued one by one (the reference for
    /// `CudaGraph`; greedy tokens equal `Dynamic`'s).
    Static,
    /// The static step captured once as a CUDA graph and replayed per token (CUDA only).
    CudaGraph,
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Token choice.
    pub sampling: Sampling,
    /// transformers' `repetition_penalty`: logits of tokens already in the sequence (prompt
    /// included) are divided by it when positive, multiplied when negative; 1 = off.
    pub repetition_penalty: f64,
    /// At most this many new tokens per row.
    pub max_new_tokens: usize,
    /// A row stops after emitting any of these.
    pub eos: Vec<u32>,
    /// A row stops when its decoded text contains any of these (the text is cut before it).
    pub stop_strings: Vec<String>,
    /// Seed of LibTorch's generator (sampling only).
    pub seed: i64,
    /// Read the sampled ids on the host every this many steps (1 = every step). Larger values
    /// let a GPU run ahead of the host (no sync per token); rows that end in between still get
    /// exactly the tokens up to their eos / stop string, the extra steps are wasted work.
    pub sync_every: usize,
    /// How decode steps run. `Static` and `CudaGraph` sample from host-drawn uniforms (seeded by
    /// `seed`, inverse CDF) instead of LibTorch's generator, so their sampled (non-greedy)
    /// tokens differ from `Dynamic`'s for the same seed; greedy tokens are the same.
    pub decode: DecodeMode,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            sampling: Sampling::Greedy,
            repetition_penalty: 1.0,
            max_new_tokens: 256,
            eos: vec![],
            stop_strings: vec![],
            seed: 0,
            sync_every: 1,
            decode: DecodeMode::Dynamic,
        }
    }
}

impl GenerationConfig {
    fn validate(&self) -> Result<()> {
        if let Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } = self.sampling
        {
            if !(temperature > 0.0 && temperature.is_finite())
                || top_k < 0
                || !(top_p > 0.0 && top_p <= 1.0)
            {
                return Err(Error::Config(format!(
                    "sampling needs temperature > 0, top_k >= 0 and top_p in (0, 1]: {:?}",
                    self.sampling
                )));
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::Config(format!(
                "repetition_penalty {} must be finite and > 0",
                self.repetition_penalty
            )));
        }
        Ok(())
    }
}

/// Picks next tokens from logits on their device.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    penalty: f64,
    /// [B, V] bool: tokens seen so far (only with a repetition penalty).
    seen: Option<Tensor>,
}

impl Sampler {
    /// A sampler for `batch` rows over `vocab` tokens; `history` [B, L] int64 (the prompts) marks
    /// tokens for the repetition penalty (padding should be masked out by the caller's choice of
    /// pad id; transformers penalises the pad id too).
    pub fn new(cfg: &GenerationConfig, history: &Tensor, vocab: i64) -> Result<Self> {
        cfg.validate()?;
        let seen = if cfg.repetition_penalty != 1.0 {
            let b = history.size()[0];
            let s = Tensor::f_zeros([b, vocab], (Kind::Bool, history.device()))?;
            let ones = Tensor::f_ones(history.size(), (Kind::Bool, history.device()))?;
            Some(s.f_scatter(1, history, &ones)?)
        } else {
            None
        };
        Ok(Self {
            sampling: cfg.sampling,
            penalty: cfg.repetition_penalty,
            seen,
        })
    }

    /// The processed logits (penalty, temperature, top-k, top-p) for [B, V] f32 `logits`.
    pub fn process(&self, logits: &Tensor) -> Result<Tensor> {
        let mut l = logits.f_to_kind(Kind::Float)?;
        if let Some(seen) = &self.seen {
            let pen = l
                .f_mul_scalar(self.penalty)?
                .f_where_self(&l.f_lt(0.0)?, &l.f_div_scalar(self.penalty)?)?;
            l = pen.f_where_self(seen, &l)?;
        }
        if let Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } = self.sampling
        {
            l = l.f_div_scalar(temperature)?;
            let v = l.size()[1];
            if top_k > 0 && top_k < v {
                let (vals, _) = l.f_topk(top_k, -1, true, true)?;
                let kth = vals.f_narrow(1, top_k - 1, 1)?;
                l = l.f_masked_fill(&l.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?;
            }
            if top_p < 1.0 {
                let (sorted, idx) = l.f_sort(-1, true)?;
                let probs = sorted.f_softmax(-1, Kind::Float)?;
                let before = probs.f_cumsum(-1, Kind::Float)?.f_sub(&probs)?;
                // Drop a token when the tokens ranked above it already reach top_p (the first
                // token always stays).
                let drop_sorted = before.f_ge(top_p)?;
                let drop = drop_sorted.f_scatter(1, &idx, &drop_sorted)?;
                l = l.f_masked_fill(&drop, f64::NEG_INFINITY)?;
            }
        }
        Ok(l)
    }

    /// Next ids [B] int64 for logits [B, V] (stays on the device).
    pub fn sample(&mut self, logits: &Tensor) -> Result<Tensor> {
        self.sample_from(logits, None)
    }

    /// Like [`Self::sample`] but drawing with the given uniforms `u` [B, 1] f32 in [0, 1)
    /// (inverse CDF: the first token whose cumulative probability exceeds `u`) instead of
    /// LibTorch's generator: no host sync and no generator state, so it can be CUDA-graph
    /// captured with `u` a fixed buffer the host refills. Greedy ignores `u`.
    pub fn sample_with(&mut self, logits: &Tensor, u: &Tensor) -> Result<Tensor> {
        self.sample_from(logits, Some(u))
    }

    fn sample_from(&mut self, logits: &Tensor, u: Option<&Tensor>) -> Result<Tensor> {
        let l = self.process(logits)?;
        let ids = match (self.sampling, u) {
            (Sampling::Greedy, _) => l.f_argmax(-1, false)?,
            (Sampling::Sample { .. }, None) => l
                .f_softmax(-1, Kind::Float)?
                .f_multinomial(1, false)?
                .f_squeeze_dim(1)?,
            (Sampling::Sample { .. }, Some(u)) => {
                let v = l.size()[1];
                let cdf = l.f_softmax(-1, Kind::Float)?.f_cumsum(-1, Kind::Float)?;
                cdf.f_le_tensor(u)?
                    .f_sum_dim_intlist(-1, false, Kind::Int64)?
                    .f_clamp_max(v - 1)?
            }
        };
        if let Some(seen) = &mut self.seen {
            let ones = Tensor::f_ones([ids.size()[0], 1], (Kind::Bool, ids.device()))?;
            let _ = seen.f_scatter_(1, &ids.f_unsqueeze(1)?, &ones)?;
        }
        Ok(ids)
    }
}

/// What a generation produced, with its timing.
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    /// New tokens per row (eos included when it ended the row; not the tokens after it).
    pub tokens: Vec<Vec<u32>>,
    /// Prompt tokens per row (without padding).
    pub prompt_tokens: Vec<usize>,
    /// Seconds of the prompt pass (prefill) including the first sampled token.
    pub prefill_secs: f64,
    /// Seconds of the remaining decode steps.
    pub decode_secs: f64,
    /// Decode steps (forward passes) run after the prefill.
    pub decode_steps: usize,
}

/// Left-pad `prompts` into ids [B, Lmax] and mask [B, Lmax] (1 = real), `pad` in the padding.
pub fn left_pad(prompts: &[Vec<u32>], pad: u32) -> Result<(Tensor, Tensor)> {
    let lmax = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::Config(
            "every prompt needs at least one token".into(),
        ));
    }
    let b = prompts.len();
    let mut ids = vec![pad as i64; b * lmax];
    let mut mask = vec![0i64; b * lmax];
    for (r, p) in prompts.iter().enumerate() {
        let off = r * lmax + lmax - p.len();
        for (i, &t) in p.iter().enumerate() {
            ids[off + i] = t as i64;
            mask[off + i] = 1;
        }
    }
    let shape = [b as i64, lmax as i64];
    Ok((
        Tensor::from_slice(&ids).f_view(shape)?,
        Tensor::from_slice(&mask).f_view(shape)?,
    ))
}

/// Generate for each prompt (batched, left-padded with `pad`). `on_step(step, ids)` sees the
/// ids of each step (one per row, including rows already finished, which repeat `pad`) and
/// returns whether to go on. Stop strings need `tokenizer`.
pub fn generate(
    model: &LlamaModel,
    prompts: &[Vec<u32>],
    pad: u32,
    cfg: &GenerationConfig,
    tokenizer: Option<&TextTokenizer>,
    on_step: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> Result<GenerationOutput> {
    cfg.validate()?;
    if !cfg.stop_strings.is_empty() && tokenizer.is_none() {
        return Err(Error::Config("stop strings need a tokenizer".into()));
    }
    let device = model.device();
    let (ids, mask) = left_pad(prompts, pad)?;
    let (ids, mask) = (ids.f_to_device(device)?, mask.f_to_device(device)?);
    let (b, lmax) = (ids.size()[0], ids.size()[1]);
    let has_pad = prompts.iter().any(|p| p.len() as i64 != lmax);
    let mut cache: KvCache = model.new_cache(b, lmax + cfg.max_new_tokens as i64)?;
    if let Sampling::Sample { .. } = cfg.sampling {
        tch::manual_seed(cfg.seed);
    }
    let mut sampler = Sampler::new(cfg, &ids, model.config().vocab_size)?;
    let static_run = match cfg.decode {
        DecodeMode::Dynamic => None,
        DecodeMode::Static => Some(StepRun::Eager),
        DecodeMode::CudaGraph => Some(StepRun::CudaGraph),
    };
    // Static decoding: uniforms [B, 1] and finished rows [B] live in fixed buffers the host
    // refills, so a captured step reads them.
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(cfg.seed as u64);
    let sampled = matches!(cfg.sampling, Sampling::Sample { .. });
    let uniforms = Tensor::f_zeros([b, 1], (Kind::Float, device))?;
    let mut refill = |u: &Tensor| -> Result<()> {
        if sampled {
            let h: Vec<f32> = (0..b).map(|_| rand::Rng::gen::<f32>(&mut rng)).collect();
            let _ = u
                .shallow_clone()
                .f_copy_(&Tensor::from_slice(&h).f_view([b, 1])?)?;
        }
        Ok(())
    };
    let done_buf = Tensor::f_zeros([b], (Kind::Bool, device))?;
    let mut decoder: Option<StaticDecoder> = None;
    let n = prompts.len();
    let mut out: Vec<Vec<u32>> = vec![vec![]; n];
    let mut done = vec![false; n];
    let t0 = Instant::now();
    let mut logits = model.forward(
        Input::Ids(&ids),
        if has_pad { Some(&mask) } else { None },
        &mut cache,
        LogitsAt::Last,
    )?;
    let mut prefill_secs = 0.0;
    let mut t1 = Instant::now();
    let mut steps = 0;
    let pad_t = Tensor::f_full([b], pad as i64, (Kind::Int64, device))?;
    let mut done_dev: Option<Tensor> = None;
    // Ids sampled on the device but not yet read on the host (at most `sync_every`).
    let mut pending: Vec<Tensor> = Vec::new();
    let every = cfg.sync_every.max(1);
    'steps: for step in 0..cfg.max_new_tokens {
        let next = match decoder.as_mut() {
            // Static steps sample inside the step (below); `logits` is unused then.
            Some(d) => {
                refill(&uniforms)?;
                let mut sample = |l: &Tensor| -> Result<Tensor> {
                    let n = sampler.sample_with(l, &uniforms)?;
                    Ok(pad_t.f_where_self(&done_buf, &n)?)
                };
                d.step(model, &mut cache, &mut sample)?
            }
            None => {
                let mut next = if static_run.is_some() {
                    refill(&uniforms)?;
                    sampler.sample_with(&logits.f_select(1, 0)?, &uniforms)?
                } else {
                    sampler.sample(&logits.f_select(1, 0)?)?
                };
                if let Some(dm) = &done_dev {
                    next = pad_t.f_where_self(dm, &next)?;
                }
                next
            }
        };
        pending.push(next.shallow_clone());
        let last = step + 1 == cfg.max_new_tokens;
        // The first token is always read at once (time to first token); later ones every
        // `every` steps, so the device can run ahead of the host in between.
        if step == 0 || pending.len() >= every || last {
            let block = Tensor::f_stack(&pending, 1)?.f_to_device(tch::Device::Cpu)?; // [B, k]
            let k = pending.len();
            pending.clear();
            let block: Vec<i64> = Vec::<i64>::try_from(block.f_reshape([-1])?)?;
            if step == 0 {
                prefill_secs = t0.elapsed().as_secs_f64();
                t1 = Instant::now();
            }
            for j in 0..k {
                let host: Vec<u32> = (0..n)
                    .map(|r| {
                        if done[r] {
                            pad
                        } else {
                            block[r * k + j] as u32
                        }
                    })
                    .collect();
                for r in 0..n {
                    if done[r] {
                        continue;
                    }
                    out[r].push(host[r]);
                    if cfg.eos.contains(&host[r]) {
                        done[r] = true;
                    } else if let (Some(tk), false) = (tokenizer, cfg.stop_strings.is_empty()) {
                        let text = tk.decode_skip_special(&out[r])?;
                        if cfg.stop_strings.iter().any(|s| text.contains(s.as_str())) {
                            done[r] = true;
                        }
                    }
                }
                let go_on = on_step(step + 1 - k + j, &host);
                if !go_on || done.iter().all(|&d| d) {
                    break 'steps;
                }
            }
            if done.iter().any(|&d| d) {
                let dm = Tensor::from_slice(&done).f_to_device(device)?;
                let _ = done_buf.shallow_clone().f_copy_(&dm)?;
                done_dev = Some(dm);
            }
        }
        if last {
            break;
        }
        if let Some(run) = static_run {
            if decoder.is_none() {
                decoder = Some(StaticDecoder::new(&cache, &next, run)?);
            }
            steps += 1;
            continue;
        }
        logits = model.forward(
            Input::Ids(&next.f_unsqueeze(1)?),
            None,
            &mut cache,
            LogitsAt::Last,
        )?;
        steps += 1;
    }
    Ok(GenerationOutput {
        tokens: out,
        prompt_tokens: prompts.iter().map(Vec::len).collect(),
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
        decode_steps: steps,
    })
}

/// Cut `text` before the first stop string it contains.
pub fn cut_at_stop<'a>(text: &'a str, stops: &[String]) -> &'a str {
    let cut = stops
        .iter()
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    &text[..cut]
}

/// Incremental detokenizer for streaming: feed ids, get the text that became final (a
/// multi-byte character split over tokens is held back until complete).
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    printed: usize,
}

impl TextStream {
    /// Append `id`; returns newly completed text (may be empty).
    pub fn push(&mut self, tk: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tk.decode_skip_special(&self.ids)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let Some(new) = text.get(self.printed..).map(str::to_string) else {
            return Ok(String::new());
        };
        self.printed = text.len();
        Ok(new)
    }
}

/// Streams text while hiding stop strings: text that could be the start of a stop string is
/// held back until it is known not to be one.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    acc: String,
    shown: usize,
    stopped: bool,
}

impl StopFilter {
    /// Filter for `stops` (empty: pass everything through).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }
    /// Add `piece`; returns the text that is now safe to show. After a stop string appeared,
    /// returns the text before it once and then nothing.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.acc.push_str(piece);
        let safe = match self
            .stops
            .iter()
            .filter_map(|s| self.acc.find(s.as_str()))
            .min()
        {
            Some(cut) => {
                self.stopped = true;
                cut
            }
            None => {
                let hold = self
                    .stops
                    .iter()
                    .map(|s| {
                        (1..s.len().min(self.acc.len()) + 1)
                            .rev()
                            .find(|&k| s.is_char_boundary(k) && self.acc.ends_with(&s[..k]))
                            .unwrap_or(0)
                    })
                    .max()
                    .unwrap_or(0);
                self.acc.len() - hold
            }
        };
        let out = self.acc[self.shown..safe.max(self.shown)].to_string();
        self.shown = safe.max(self.shown);
        out
    }
    /// Whether a stop string was seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
    /// The held-back rest at the end of generation (empty after a stop).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let out = self.acc[self.shown..].to_string();
        self.shown = self.acc.len();
        out
    }
}
