//! The Llama-family causal decoder (Llama 2/3, Vicuna, SmolLM2, Qwen2/2.5).
//!
//! Reference: transformers `models/llama/modeling_llama.py` and `models/qwen2/modeling_qwen2.py`
//! (`LlamaRMSNorm`, `LlamaRotaryEmbedding`, `LlamaAttention` with SDPA, `LlamaMLP`,
//! `LlamaDecoderLayer`, `LlamaForCausalLM`). Weight names are HF's, composed as the modules nest:
//! `model.embed_tokens.weight`, `model.layers.{i}.{input_layernorm,post_attention_layernorm}.weight`,
//! `model.layers.{i}.self_attn.{q,k,v,o}_proj.{weight,bias}`, `model.layers.{i}.mlp.{gate,up,down}_proj.weight`,
//! `model.norm.weight`, `lm_head.weight` (absent when tied).
//!
//! Fusions: q/k/v and gate/up projections are stacked into one matrix each at load time (fewer,
//! larger matmuls per decode step); the HF tensors are the source and are not kept separately.
//! The stacks are the only copy, so full fine-tuning trains them as stacks (`self_attn.qkv_proj`,
//! `mlp.gate_up_proj`, rows in HF order) and export un-stacks them (`llm::train`, `llm::export`).
//! LoRA adapters sit beside the stacks, one per HF module (PEFT semantics).
//!
//! The model is immutable while decoding (`forward(&self, ..)`, no autograd); all state lives in
//! the caller's [`KvCache`]. Training goes through [`LlamaModel::forward_train`] (autograd, no
//! cache); only [`LlamaModel::train_params`], `extend_vocab` and `load_trained` mutate it.

use super::config::LlamaConfig;
use super::kv_cache::KvCache;
use super::layers::{Attention, Block, Mlp, RmsNorm};
use super::rope;
use super::weights::Weights;
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// What the decoder reads: token ids or ready-made input embeddings (LLaVA splices projected
/// image features into the text embeddings).
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// [B, L] int64 token ids.
    Ids(&'a Tensor),
    /// [B, L, hidden_size] embeddings in the model's kind.
    Embeds(&'a Tensor),
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsAt {
    /// Every position: [B, L, V].
    All,
    /// Only the last position: [B, 1, V] (generation; saves the [L, V] head matmul).
    Last,
}

/// `LlamaForCausalLM` / `Qwen2ForCausalLM`: decoding with a [`KvCache`] ([`Self::forward`],
/// no autograd) and training ([`Self::forward_train`], see `llm::train` for which tensors are
/// trained).
#[derive(Debug)]
pub struct LlamaModel {
    pub(super) cfg: LlamaConfig,
    /// [V, H].
    pub(super) embed: Tensor,
    pub(super) blocks: Vec<Block>,
    pub(super) norm: RmsNorm,
    /// [V, H]; `None`: tied to `embed`.
    pub(super) lm_head: Option<Tensor>,
    /// The GGUF file's blocks of the head (`llm::quantized`), if attached.
    pub(super) lm_head_q: Option<crate::gguf::qmatvec::QMatrix>,
    pub(super) inv_freq: Tensor,
    pub(super) kind: Kind,
    pub(super) device: Device,
}

impl LlamaModel {
    /// Build from `w` (names by path composition from the root: `model.*`, `lm_head.weight`).
    /// Strict: a missing or mis-shaped tensor and any unused tensor are errors. A tied model's
    /// file may also hold `lm_head.weight` (some exporters save it); it is then ignored.
    pub fn new(cfg: &LlamaConfig, w: &Weights) -> Result<Self> {
        cfg.validate(w.origin())?;
        let root = w.root();
        let m = root.pp("model");
        let embed = m
            .pp("embed_tokens")
            .get("weight", &[cfg.vocab_size, cfg.hidden_size])?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for i in 0..cfg.num_hidden_layers {
            let p = m.pp("layers").pp(i);
            blocks.push(Block {
                attn_norm: RmsNorm::new(
                    &p.pp("input_layernorm"),
                    cfg.hidden_size,
                    cfg.rms_norm_eps,
                )?,
                attn: Attention::new(&p.pp("self_attn"), cfg)?,
                mlp_norm: RmsNorm::new(
                    &p.pp("post_attention_layernorm"),
                    cfg.hidden_size,
                    cfg.rms_norm_eps,
                )?,
                mlp: Mlp::new(&p.pp("mlp"), cfg)?,
            });
        }
        let norm = RmsNorm::new(&m.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(
                root.pp("lm_head")
                    .get("weight", &[cfg.vocab_size, cfg.hidden_size])?,
            )
        };
        let tied = cfg.tie_word_embeddings;
        w.finish(&|k| (tied && k == "lm_head.weight") || k.ends_with("rotary_emb.inv_freq"))?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm,
            lm_head,
            lm_head_q: None,
            inv_freq: rope::inv_freq(cfg, w.device())?,
            kind: w.kind(),
            device: w.device(),
        })
    }

    /// The resolved config (vocab_size grows with [`Self::extend_vocab`]).
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    /// Kind of the weights and activations.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// Device of the weights.
    pub fn device(&self) -> Device {
        self.device
    }
    /// Token embedding [V, H].
    pub fn embed_weight(&self) -> &Tensor {
        &self.embed
    }
    /// Output head [V, H] (the embedding when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// A zeroed cache sized for this model.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> Result<KvCache> {
        KvCache::new(&self.cfg, batch, capacity, self.kind, self.device)
    }

    /// ids [B, L] int64 -> [B, L, H] embeddings (what [`Input::Embeds`] takes).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        if ids.kind() != Kind::Int64 || ids.dim() != 2 {
            return Err(Error::Shape {
                what: "input ids (int64)",
                expected: "[B, L]".into(),
                got: ids.size(),
            });
        }
        Ok(Tensor::f_embedding(
            &self.embed,
            &ids.f_to_device(self.device)?,
            -1,
            false,
            false,
        )?)
    }

    /// One step over `L` new tokens per row, appended to `cache`.
    /// `mask`: [B, L] (nonzero = real token, 0 = left padding) or `None` (all real).
    /// Returns logits [B, L, V] (`LogitsAt::All`) or [B, 1, V] (`LogitsAt::Last`), in f32.
    pub fn forward(
        &self,
        input: Input<'_>,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        at: LogitsAt,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(input, mask, cache)?;
        let h = match at {
            LogitsAt::All => h,
            LogitsAt::Last => h.f_narrow(1, h.size()[1] - 1, 1)?,
        };
        Ok(self.head(&h)?.f_to_kind(Kind::Float)?)
    }

    /// Like [`Self::forward`] but returns the final-norm hidden states [B, L, H].
    pub fn forward_hidden(
        &self,
        input: Input<'_>,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let x = self.input_embeds(input)?;
        let (b, l) = (x.size()[0], x.size()[1]);
        if b != cache.batch() {
            return Err(Error::Shape {
                what: "batch (KV cache rows)",
                expected: format!("[{}, ..]", cache.batch()),
                got: x.size(),
            });
        }
        let (positions, attn_mask, causal) = cache.advance(l, mask)?;
        let (cos, sin) = rope::cos_sin(&self.inv_freq, &positions, self.kind)?;
        // Each residual add is done together with the norm that reads its result
        // (`RmsNorm::add_forward`): the MLP's output is added by the next layer's input norm.
        let mut x = x;
        let mut pending: Option<Tensor> = None;
        for (i, blk) in self.blocks.iter().enumerate() {
            let (nx, h) = blk.attn_norm.add_forward(&x, pending.take().as_ref())?;
            x = nx;
            let a = blk.attn.forward(
                &h,
                &cos,
                &sin,
                attn_mask.as_ref(),
                causal,
                Some((&mut *cache, i)),
            )?;
            let (nx, h2) = blk.mlp_norm.add_forward(&x, Some(&a))?;
            x = nx;
            pending = Some(blk.mlp.forward(&h2)?);
        }
        Ok(self.norm.add_forward(&x, pending.as_ref())?.1)
    }

    /// [`Input`] -> [B, L, H] embeddings in the model's kind on its device (differentiable
    /// for [`Input::Embeds`]); L >= 1.
    fn input_embeds(&self, input: Input<'_>) -> Result<Tensor> {
        let x = match input {
            Input::Ids(ids) => self.embed(ids)?,
            Input::Embeds(e) => {
                let s = e.size();
                if s.len() != 3 || s[2] != self.cfg.hidden_size {
                    return Err(Error::Shape {
                        what: "input embeddings",
                        expected: format!("[B, L, {}]", self.cfg.hidden_size),
                        got: s,
                    });
                }
                e.f_to_device(self.device)?.f_to_kind(self.kind)?
            }
        };
        if x.size()[1] < 1 {
            return Err(Error::Shape {
                what: "input",
                expected: "[B, L >= 1, ..]".into(),
                got: x.size(),
            });
        }
        Ok(x)
    }

    /// Training forward: autograd on (whatever [`Self::train_params`] made trainable, and an
    /// [`Input::Embeds`] leaf), no KV cache, causal attention (exact for the real tokens under
    /// right padding: padding only ever follows them).
    ///
    /// `input`: [B, L] ids or [B, L, H] embeddings; `attention_mask`: [B, L] bool (or any
    /// kind, nonzero = real token), right padding only (a real token after a padding one is an
    /// error). Positions are 0..L in every row. Returns logits [B, L, V] in the model's kind
    /// ([`crate::loss::causal_lm_loss`] upcasts to f32); at padding positions they are
    /// well-defined but meaningless. For the same real tokens they equal [`Self::forward`]'s.
    pub fn forward_train(&self, input: Input<'_>, attention_mask: &Tensor) -> Result<Tensor> {
        let h = self.forward_train_hidden(input, attention_mask)?;
        Ok(h.f_linear::<&Tensor>(self.lm_head_weight(), None)?)
    }

    /// Like [`Self::forward_train`] but returns the final-norm hidden states [B, L, H].
    pub fn forward_train_hidden(
        &self,
        input: Input<'_>,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let x = self.input_embeds(input)?;
        let (b, l) = (x.size()[0], x.size()[1]);
        if attention_mask.size() != [b, l] {
            return Err(Error::Shape {
                what: "attention_mask",
                expected: format!("[{b}, {l}] (the input's [B, L])"),
                got: attention_mask.size(),
            });
        }
        // One read-back: a real token after a padding one (left padding) is refused.
        if l > 1 {
            let m = attention_mask.f_to_device(self.device)?.f_ne(0)?; // [B, L] bool
            let left_pad = m
                .f_narrow(1, 1, l - 1)?
                .f_logical_and(&m.f_narrow(1, 0, l - 1)?.f_logical_not()?)?
                .f_any()?;
            if bool::try_from(left_pad)? {
                return Err(Error::Config(
                    "forward_train: attention_mask has a real token after padding \
                     (training takes right padding only)"
                        .into(),
                ));
            }
        }
        let positions = Tensor::f_arange(l, (Kind::Int64, self.device))?.f_unsqueeze(0)?; // [1, L]
        let (cos, sin) = rope::cos_sin(&self.inv_freq, &positions, self.kind)?;
        // Plain causal attention is exact under right padding: a real query only sees earlier
        // slots, all real. A padding query sees the real keys and the padding before it and
        // itself (never an empty row, so no NaN); its output is one of the meaningless padding
        // logits. No mask tensor, so SDPA can take the flash kernel.
        let mut x = x;
        for blk in &self.blocks {
            let a = blk
                .attn
                .forward(&blk.attn_norm.forward(&x)?, &cos, &sin, None, true, None)?;
            x = x.f_add(&a)?;
            let m = blk.mlp.forward(&blk.mlp_norm.forward(&x)?)?;
            x = x.f_add(&m)?;
        }
        self.norm.forward(&x)
    }

    /// Grow the vocabulary by `n_new` rows (e.g. `<boi>`, `<eoi>` and the visual ids of
    /// [`crate::vocab::VisualVocab`]) in the embedding and the output head.
    ///
    /// Rule (transformers' `resize_token_embeddings(mean_resizing=True)` with a chosen scale):
    /// each new row is drawn from N(mu, s * Sigma), mu and Sigma the mean and covariance
    /// (`(E - mu)^T (E - mu) / V`, f64) of the old rows; `cov_scale = s` (transformers uses
    /// 1e-9, i.e. practically the mean; 1.0 draws rows as spread as the old ones). When
    /// s * Sigma is not positive definite, new rows equal mu. A tied head is untied first (it
    /// keeps its old rows and gets the embedding's new rows); an untied head's new rows are
    /// drawn from its own mean and covariance. Seeded: the same `seed` gives the same rows.
    pub fn extend_vocab(&mut self, n_new: i64, cov_scale: f64, seed: u64) -> Result<()> {
        if n_new < 1 || !(cov_scale >= 0.0 && cov_scale.is_finite()) {
            return Err(Error::Config(format!(
                "extend_vocab needs n_new >= 1 and a finite cov_scale >= 0, got {n_new}, {cov_scale}"
            )));
        }
        let _guard = tch::no_grad_guard();
        self.drop_gguf_blocks();
        let new_embed = grow_rows(&self.embed, n_new, cov_scale, seed)?;
        let new_head = match &self.lm_head {
            None => new_embed.f_detach_copy()?,
            Some(h) => grow_rows(h, n_new, cov_scale, seed ^ 0x5eed)?,
        };
        self.embed = new_embed;
        self.lm_head = Some(new_head);
        self.cfg.vocab_size += n_new;
        self.cfg.tie_word_embeddings = false;
        Ok(())
    }
}

/// w: [V, H] -> [V + n, H], new rows ~ N(mean, s * cov) of the old rows (see `extend_vocab`).
fn grow_rows(w: &Tensor, n: i64, s: f64, seed: u64) -> Result<Tensor> {
    let (v, h) = (w.size()[0], w.size()[1]);
    let wf = w.f_to_kind(Kind::Double)?;
    let mean = wf.f_mean_dim(0, true, Kind::Double)?; // [1, H]
    let c = wf.f_sub(&mean)?;
    let cov = c
        .f_transpose(0, 1)?
        .f_matmul(&c)?
        .f_div_scalar(v as f64)?
        .f_mul_scalar(s)?;
    let (l, info) = cov.f_linalg_cholesky_ex(false, false)?;
    let pd = s > 0.0 && i64::try_from(info)? == 0;
    // Seeded on the CPU so the rows do not depend on the device.
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let z: Vec<f64> = (0..n * h)
        .map(|_| {
            // Box-Muller from two uniforms.
            let u1: f64 = rand::Rng::gen_range(&mut rng, f64::EPSILON..1.0);
            let u2: f64 = rand::Rng::gen(&mut rng);
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect();
    let z = Tensor::from_slice(&z)
        .f_view([n, h])?
        .f_to_device(w.device())?;
    let rows = if pd {
        mean.f_add(&z.f_matmul(&l.f_transpose(0, 1)?)?)?
    } else {
        mean.f_expand([n, h], false)?.f_contiguous()?
    };
    Ok(Tensor::f_cat(&[&wf, &rows], 0)?.f_to_kind(w.kind())?)
}
