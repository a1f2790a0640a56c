//! What of [`LlamaModel`] is trained, under which names, and restoring trained tensors.
//!
//! - [`TrainSpec::Frozen`]: nothing (LLaVA stage 1 trains the projector through the frozen LLM:
//!   gradients still reach an [`super::Input::Embeds`] leaf).
//! - [`TrainSpec::Full`]: every weight. The fused q/k/v and gate/up stacks are the leaves, named
//!   `model.layers.{i}.self_attn.qkv_proj.{weight,bias}` (rows q, k, v) and
//!   `model.layers.{i}.mlp.gate_up_proj.{weight,bias}` (rows gate, up); every other name is the
//!   HF one. [`LlamaModel::hf_state_dict`] un-stacks to HF names.
//! - [`TrainSpec::Lora`]: PEFT's LoRA (`lora_dropout = 0`, `bias = "none"`) on q, k, v, o, gate,
//!   up and down of every layer: `lora_A [r, in]` ~ kaiming-uniform(a = sqrt 5) =
//!   U(-1/sqrt(in), 1/sqrt(in)) drawn from LibTorch's generator (seed it with `tch::manual_seed`),
//!   `lora_B [out, r]` = 0, output `W x + b + (alpha / r) B A x`; on a stack each part gets its
//!   own adapter and the deltas are concatenated. PEFT names:
//!   `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`. Base weights frozen.
//!
//! Roles ([`LmParam::role`], declared here where the trained tensors are assembled):
//! [`Role::Matrix`] (weight decay, bf16 copy) for the projection matrices of the blocks (q/k/v,
//! o, gate/up, down) and for LoRA A/B; [`Role::MatrixBias`] for their biases; [`Role::Plain`]
//! (no decay, f32) for RMSNorm scales, the token embedding and the output head (embedding-like:
//! one row per token; new vocabulary rows must not be pulled to 0).
//!
//! Trainable tensors are in the model's kind (load an f32 model to train with f32 masters).

use super::layers::{Linear, Lora};
use super::model::LlamaModel;
use crate::error::{Error, Result};
use semhitok_nn::role::Role;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// PEFT's prefix of adapter names (`PeftModel.base_model.model` = the `LlamaForCausalLM`).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Which tensors of the LLM are trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainSpec {
    /// None (gradients still flow through to the input embeddings).
    Frozen,
    /// Every weight.
    Full,
    /// LoRA adapters of rank `r`, scaled by `alpha / r`, on every attention and MLP projection.
    Lora {
        /// Rank (>= 1).
        r: i64,
        /// Scale numerator (> 0).
        alpha: f64,
    },
}

/// One trainable tensor.
#[derive(Debug)]
pub struct LmParam {
    /// HF name (stacks: `..qkv_proj.weight`, `..gate_up_proj.weight`) or PEFT name (LoRA).
    pub name: String,
    /// The leaf itself (requires_grad; shares storage with the model).
    pub var: Tensor,
    /// What the optimizer does with it (module docs).
    pub role: Role,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Weights {
        origin: "trained tensors".into(),
        msg: msg.into(),
    }
}

impl Linear {
    /// (name, tensor, role) of the base weights as trained.
    fn base(&self, out: &mut Vec<(String, Tensor, Role)>) {
        out.push((
            format!("{}.weight", self.name),
            self.w.shallow_clone(),
            Role::Matrix,
        ));
        if let Some(b) = &self.b {
            out.push((
                format!("{}.bias", self.name),
                b.shallow_clone(),
                Role::MatrixBias,
            ));
        }
    }
    fn lora_named(&self, out: &mut Vec<(String, Tensor)>) {
        for (p, l) in self.parts.iter().zip(&self.lora) {
            out.push((
                format!("{PEFT_PREFIX}{}.lora_A.weight", p.name),
                l.a.shallow_clone(),
            ));
            out.push((
                format!("{PEFT_PREFIX}{}.lora_B.weight", p.name),
                l.b.shallow_clone(),
            ));
        }
    }
    /// HF tensors of the parts (views into the stack unless merged). `merge`: add the LoRA delta.
    fn hf(&self, merge: bool, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        for (i, p) in self.parts.iter().enumerate() {
            let mut w = self.w.f_narrow(0, p.offset, p.rows)?;
            if merge {
                if let Some(l) = self.lora.get(i) {
                    w = w.f_add(&l.b.f_matmul(&l.a)?.f_mul_scalar(l.scale)?)?;
                }
            }
            out.push((format!("{}.weight", p.name), w));
            if let Some(b) = &self.b {
                out.push((format!("{}.bias", p.name), b.f_narrow(0, p.offset, p.rows)?));
            }
        }
        Ok(())
    }
    /// Adds adapters (or checks the existing ones have the same shape and scale).
    fn add_lora(&mut self, r: i64, scale: f64) -> Result<()> {
        let inp = self.w.size()[1];
        if !self.lora.is_empty() {
            let same = self
                .lora
                .iter()
                .all(|l| l.a.size()[0] == r && l.scale == scale);
            return if same {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{}: LoRA adapters of another rank or scale are already attached",
                    self.name
                )))
            };
        }
        let _guard = tch::no_grad_guard();
        let bound = 1.0 / (inp as f64).sqrt();
        for p in &self.parts {
            let mut a = Tensor::f_empty([r, inp], (self.w.kind(), self.w.device()))?;
            let _ = a.f_uniform_(-bound, bound)?;
            let b = Tensor::f_zeros([p.rows, r], (self.w.kind(), self.w.device()))?;
            self.lora.push(Lora { a, b, scale });
        }
        Ok(())
    }
    fn linears_mut(blocks: &mut [super::layers::Block]) -> Vec<&mut Linear> {
        let mut v = Vec::new();
        for b in blocks {
            v.push(&mut b.attn.qkv);
            v.push(&mut b.attn.o);
            v.push(&mut b.mlp.gate_up);
            v.push(&mut b.mlp.down);
        }
        v
    }
}

impl LlamaModel {
    fn linears(&self) -> Vec<&Linear> {
        let mut v = Vec::new();
        for b in &self.blocks {
            v.extend([&b.attn.qkv, &b.attn.o, &b.mlp.gate_up, &b.mlp.down]);
        }
        v
    }

    /// Base weights as trained under [`TrainSpec::Full`]: (name, tensor, role), module order.
    fn base_named(&self) -> Vec<(String, Tensor, Role)> {
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed.shallow_clone(),
            Role::Plain,
        )];
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}");
            v.push((
                format!("{p}.input_layernorm.weight"),
                b.attn_norm.w.shallow_clone(),
                Role::Plain,
            ));
            b.attn.qkv.base(&mut v);
            b.attn.o.base(&mut v);
            v.push((
                format!("{p}.post_attention_layernorm.weight"),
                b.mlp_norm.w.shallow_clone(),
                Role::Plain,
            ));
            b.mlp.gate_up.base(&mut v);
            b.mlp.down.base(&mut v);
        }
        v.push((
            "model.norm.weight".to_string(),
            self.norm.w.shallow_clone(),
            Role::Plain,
        ));
        if let Some(h) = &self.lm_head {
            v.push(("lm_head.weight".to_string(), h.shallow_clone(), Role::Plain));
        }
        v
    }

    /// LoRA tensors (PEFT names), empty without adapters.
    fn lora_named(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        for l in self.linears() {
            l.lora_named(&mut v);
        }
        v
    }

    /// Whether LoRA adapters are attached (they then take part in every forward).
    pub fn has_lora(&self) -> bool {
        self.linears().iter().any(|l| !l.lora.is_empty())
    }

    /// Make the tensors of `spec` trainable (requires_grad leaves) and everything else frozen;
    /// returns the trainable ones with their names and roles (module docs).
    /// `Lora` attaches adapters on the first call (a second call with the same r and alpha
    /// reuses them); once attached they stay in the forward (frozen under `Frozen`), and
    /// `Full` is refused (export merged with [`Self::save_hf_dir`] and reload instead).
    /// Call after [`Self::extend_vocab`]: it replaces the embedding and head tensors.
    pub fn train_params(&mut self, spec: &TrainSpec) -> Result<Vec<LmParam>> {
        if *spec != TrainSpec::Frozen {
            self.drop_gguf_blocks();
        }
        let base = self.base_named();
        for (_, t, _) in &base {
            let _ = t.set_requires_grad(false);
        }
        for (_, t) in self.lora_named() {
            let _ = t.set_requires_grad(false);
        }
        match *spec {
            TrainSpec::Frozen => Ok(Vec::new()),
            TrainSpec::Full => {
                if self.has_lora() {
                    return Err(Error::Config(
                        "train_params(Full) on a model with LoRA adapters: export it merged \
                         (save_hf_dir) and load that folder to train all weights"
                            .into(),
                    ));
                }
                Ok(base
                    .into_iter()
                    .map(|(name, t, role)| LmParam {
                        name,
                        var: t.set_requires_grad(true),
                        role,
                    })
                    .collect())
            }
            TrainSpec::Lora { r, alpha } => {
                if r < 1 || !(alpha > 0.0 && alpha.is_finite()) {
                    return Err(Error::Config(format!(
                        "LoRA needs r >= 1 and a finite alpha > 0, got r = {r}, alpha = {alpha}"
                    )));
                }
                let scale = alpha / r as f64;
                for l in Linear::linears_mut(&mut self.blocks) {
                    l.add_lora(r, scale)?;
                }
                Ok(self
                    .lora_named()
                    .into_iter()
                    .map(|(name, t)| LmParam {
                        name,
                        var: t.set_requires_grad(true),
                        role: Role::Matrix,
                    })
                    .collect())
            }
        }
    }

    /// The weights in HF names (q/k/v and gate/up un-stacked; `lm_head.weight` only when
    /// untied), detached. With LoRA adapters: `merge_lora` folds `(alpha / r) B A` into each
    /// weight (a plain HF model); otherwise the base weights are followed by the adapters in
    /// PEFT names. Tensors stay on the model's device in its kind (views where possible).
    pub fn hf_state_dict(&self, merge_lora: bool) -> Result<Vec<(String, Tensor)>> {
        let _guard = tch::no_grad_guard();
        let mut v = vec![("model.embed_tokens.weight".to_string(), self.embed.detach())];
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}");
            v.push((
                format!("{p}.input_layernorm.weight"),
                b.attn_norm.w.detach(),
            ));
            b.attn.qkv.hf(merge_lora, &mut v)?;
            b.attn.o.hf(merge_lora, &mut v)?;
            v.push((
                format!("{p}.post_attention_layernorm.weight"),
                b.mlp_norm.w.detach(),
            ));
            b.mlp.gate_up.hf(merge_lora, &mut v)?;
            b.mlp.down.hf(merge_lora, &mut v)?;
        }
        v.push(("model.norm.weight".to_string(), self.norm.w.detach()));
        if let Some(h) = &self.lm_head {
            v.push(("lm_head.weight".to_string(), h.detach()));
        }
        let mut v: Vec<(String, Tensor)> = v.into_iter().map(|(k, t)| (k, t.detach())).collect();
        if !merge_lora {
            v.extend(self.lora_named().into_iter().map(|(k, t)| (k, t.detach())));
        }
        Ok(v)
    }

    /// Every name [`Self::load_trained`] accepts -> the tensor (or stack rows) it writes.
    fn writable(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut m: BTreeMap<String, Tensor> = BTreeMap::new();
        for (k, t, _) in self.base_named() {
            m.insert(k, t);
        }
        for (k, t) in self.lora_named() {
            m.insert(k, t);
        }
        for l in self.linears() {
            if l.parts.len() > 1 {
                for p in &l.parts {
                    m.insert(
                        format!("{}.weight", p.name),
                        l.w.f_narrow(0, p.offset, p.rows)?,
                    );
                    if let Some(b) = &l.b {
                        m.insert(format!("{}.bias", p.name), b.f_narrow(0, p.offset, p.rows)?);
                    }
                }
            }
        }
        Ok(m)
    }

    /// Copy trained tensors into the model in place (the trainable leaves stay the same
    /// tensors, so an optimizer holding them is unaffected). Names: those of
    /// [`Self::train_params`] (stack names, LoRA's PEFT names) and those of
    /// [`Self::hf_state_dict`] (HF names; q/k/v, gate/up go to their rows of the stack).
    /// Values are converted to the model's kind and device. Strict: an unknown name (LoRA
    /// names need `train_params(Lora)` first; a grown vocabulary needs `extend_vocab` first)
    /// or a shape mismatch is an error naming the tensor; nothing is written then.
    pub fn load_trained(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.drop_gguf_blocks();
        let targets = self.writable()?;
        for (k, t) in tensors {
            let Some(dst) = targets.get(k) else {
                let hint = if k.contains(".lora_") {
                    " (attach adapters with train_params(Lora { r, alpha }) first)"
                } else {
                    ""
                };
                return Err(err(format!(
                    "tensor {k} is not a tensor of this model{hint}"
                )));
            };
            if t.size() != dst.size() {
                return Err(err(format!(
                    "tensor {k} has shape {:?}, the model has {:?}",
                    t.size(),
                    dst.size()
                )));
            }
            if !matches!(
                t.kind(),
                Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
            ) {
                return Err(err(format!(
                    "tensor {k} has kind {:?}, expected a float",
                    t.kind()
                )));
            }
        }
        for (k, t) in tensors {
            let mut dst = targets[k].shallow_clone();
            dst.f_copy_(&t.f_to_device(self.device)?.f_to_kind(self.kind)?)?;
        }
        Ok(())
    }
}
