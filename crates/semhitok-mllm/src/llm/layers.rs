//! The layers of the decoder: linear layers (stacked q/k/v and gate/up, LoRA adapters beside
//! them), RMSNorm, attention with the KV cache, the gated MLP and the decoder block.

use super::config::LlamaConfig;
use super::kv_cache::KvCache;
use super::quantized::matvec_row;
use super::rope;
use super::weights::WeightPath;
use crate::error::Result;
use crate::gguf::qmatvec::QMatrix;
use tch::Tensor;

/// A LoRA adapter on one (part of a) linear layer: `delta(x) = scale * (x A^T) B^T`.
#[derive(Debug)]
pub(super) struct Lora {
    /// lora_A: [r, in] (kaiming-uniform(a = sqrt 5) as PEFT: U(-1/sqrt(in), 1/sqrt(in))).
    pub(super) a: Tensor,
    /// lora_B: [out_part, r] (zero at init).
    pub(super) b: Tensor,
    /// alpha / r.
    pub(super) scale: f64,
}

impl Lora {
    /// [.., in] -> [.., out_part]
    fn delta(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear::<&Tensor>(&self.a, None)?
            .f_linear::<&Tensor>(&self.b, None)?
            .f_mul_scalar(self.scale)?)
    }
}

/// One HF linear module inside a (possibly stacked) [`Linear`]: its module path
/// (`model.layers.0.self_attn.k_proj`), its first output row in the stack and its row count.
#[derive(Debug, Clone)]
pub(super) struct Part {
    pub(super) name: String,
    pub(super) offset: i64,
    pub(super) rows: i64,
}

#[derive(Debug)]
pub(super) struct Linear {
    /// [out, in]; for a stack the parts' rows in order.
    pub(super) w: Tensor,
    /// [out].
    pub(super) b: Option<Tensor>,
    /// Module path of this layer as trained (a stack gets its own: `..self_attn.qkv_proj`).
    pub(super) name: String,
    /// The HF modules it computes (one unless stacked).
    pub(super) parts: Vec<Part>,
    /// One adapter per part when LoRA is on, empty otherwise.
    pub(super) lora: Vec<Lora>,
    /// The GGUF file's blocks of `w` for batch-1 CPU decoding (`llm::quantized`), if attached.
    pub(super) q: Option<QMatrix>,
}

impl Linear {
    pub(super) fn new(p: &WeightPath<'_>, out: i64, inp: i64, bias: bool) -> Result<Self> {
        Ok(Self {
            w: p.get("weight", &[out, inp])?,
            b: if bias {
                Some(p.get("bias", &[out])?)
            } else {
                None
            },
            name: p.prefix().to_string(),
            parts: vec![Part {
                name: p.prefix().to_string(),
                offset: 0,
                rows: out,
            }],
            lora: Vec::new(),
            q: None,
        })
    }
    /// [.., in] -> [.., out] (plus the LoRA deltas of the parts, concatenated, when present).
    /// One f32 CPU row without gradient goes through the attached GGUF blocks when present, one
    /// bf16 CUDA row through the decode GEMV (`llm::gemv`).
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some(q), true) = (&self.q, self.lora.is_empty()) {
            if let Some(y) = matvec_row(q, x, self.b.as_ref())? {
                return Ok(y);
            }
        }
        if self.lora.is_empty() && x.device().is_cuda() {
            if let Some(y) = super::gemv::gemv_row(x, &self.w, self.b.as_ref())? {
                return Ok(y);
            }
        }
        let y = x.f_linear(&self.w, self.b.as_ref())?;
        if self.lora.is_empty() {
            return Ok(y);
        }
        let mut d = self
            .lora
            .iter()
            .map(|l| l.delta(x))
            .collect::<Result<Vec<_>>>()?;
        let d = if d.len() == 1 {
            d.remove(0)
        } else {
            Tensor::f_cat(&d, -1)?
        };
        Ok(y.f_add(&d)?)
    }
    /// One linear layer computing `parts` side by side (outputs concatenated in order): one
    /// matmul instead of several per step (q/k/v, gate/up). The parts are consumed, so the
    /// stacked copy is the only copy of these weights (and, when trained, the leaf). `name`
    /// is the stack's module path.
    fn stack(parts: Vec<Linear>, name: String) -> Result<Self> {
        let ws: Vec<&Tensor> = parts.iter().map(|l| &l.w).collect();
        let w = Tensor::f_cat(&ws, 0)?;
        let b = if parts.iter().all(|l| l.b.is_some()) {
            let bs: Vec<&Tensor> = parts.iter().filter_map(|l| l.b.as_ref()).collect();
            Some(Tensor::f_cat(&bs, 0)?)
        } else if parts.iter().any(|l| l.b.is_some()) {
            // Some parts without bias: zeros for them.
            let bs: Vec<Tensor> = parts
                .iter()
                .map(|l| match &l.b {
                    Some(b) => Ok(b.shallow_clone()),
                    None => Tensor::f_zeros([l.w.size()[0]], (l.w.kind(), l.w.device())),
                })
                .collect::<std::result::Result<_, tch::TchError>>()?;
            Some(Tensor::f_cat(&bs, 0)?)
        } else {
            None
        };
        let mut offset = 0;
        let mut ps = Vec::with_capacity(parts.len());
        for l in &parts {
            let rows = l.w.size()[0];
            ps.push(Part {
                name: l.name.clone(),
                offset,
                rows,
            });
            offset += rows;
        }
        Ok(Self {
            w,
            b,
            name,
            parts: ps,
            lora: Vec::new(),
            q: None,
        })
    }
}

#[derive(Debug)]
pub(super) struct RmsNorm {
    /// [D].
    pub(super) w: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(super) fn new(p: &WeightPath<'_>, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            w: p.get_scale("weight", &[dim])?,
            eps,
        })
    }
    /// [.., D] -> [.., D]: `w * x / sqrt(mean(x^2) + eps)` through LibTorch's `rms_norm`
    /// (statistics in f32 as `LlamaRMSNorm`; for bf16 inputs the product with `w` is rounded
    /// once where transformers rounds twice).
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.w.size()[0];
        Ok(x.f_rms_norm([d], Some(&self.w), self.eps)?)
    }
    /// (x + delta, norm(x + delta)) (without a delta: (x, norm(x))): the residual add and this
    /// norm, one kernel on CUDA in bf16 (`llm::fused`), else LibTorch's add and rms_norm.
    pub(super) fn add_forward(
        &self,
        x: &Tensor,
        delta: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let Some(delta) = delta else {
            return Ok((x.shallow_clone(), self.forward(x)?));
        };
        if let Some(r) = super::fused::add_rmsnorm(x, delta, &self.w, self.eps)? {
            return Ok(r);
        }
        let x = x.f_add(delta)?;
        let y = self.forward(&x)?;
        Ok((x, y))
    }
}

#[derive(Debug)]
pub(super) struct Attention {
    /// q_proj, k_proj, v_proj stacked: [(Hq + 2 Hkv) * D, H] (trained as `self_attn.qkv_proj`).
    pub(super) qkv: Linear,
    pub(super) o: Linear,
    pub(super) heads: i64,
    pub(super) kv_heads: i64,
    pub(super) head_dim: i64,
}

impl Attention {
    pub(super) fn new(p: &WeightPath<'_>, cfg: &LlamaConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let q = cfg.num_attention_heads * cfg.head_dim;
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        Ok(Self {
            qkv: Linear::stack(
                vec![
                    Linear::new(&p.pp("q_proj"), q, h, cfg.qkv_bias)?,
                    Linear::new(&p.pp("k_proj"), kv, h, cfg.qkv_bias)?,
                    Linear::new(&p.pp("v_proj"), kv, h, cfg.qkv_bias)?,
                ],
                p.pp("qkv_proj").prefix().to_string(),
            )?,
            o: Linear::new(&p.pp("o_proj"), h, q, cfg.o_bias)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// qkv: [B, L, (Hq + 2 Hkv) D] (the stacked projection) -> (q [B, Hq, L, D], k [B, Hkv, L, D],
    /// v [B, Hkv, L, D]), q and k rotated (cos/sin of [`rope::cos_sin`]). Queries and keys are
    /// rotated together as one [B, L, Hq + Hkv, D] tensor (four kernels per layer where two
    /// separate rotations took ten: the batch-1 decode step is bound by such small kernels).
    pub(super) fn rotated_qkv(
        &self,
        qkv: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l) = (qkv.size()[0], qkv.size()[1]);
        let (hq, hkv, d) = (self.heads, self.kv_heads, self.head_dim);
        let qk = qkv
            .f_narrow(2, 0, (hq + hkv) * d)?
            .f_view([b, l, hq + hkv, d])?;
        let qk = rope::apply(&qk, cos, sin)?; // [B, L, Hq + Hkv, D]
        let q = qk.f_narrow(2, 0, hq)?.f_transpose(1, 2)?;
        let k = qk.f_narrow(2, hq, hkv)?.f_transpose(1, 2)?;
        let v = qkv
            .f_narrow(2, (hq + hkv) * d, hkv * d)?
            .f_view([b, l, hkv, d])?
            .f_transpose(1, 2)?;
        Ok((q, k, v))
    }

    /// x: [B, L, H] -> [B, L, H]. With a cache (`Some((cache, layer))`), keys/values of the new
    /// tokens go into slot range `[len - L, len)` and attention covers every filled slot under
    /// `mask` ([B, 1, L, len] bool) or plain causal / full attention when `mask` is `None`.
    /// Without a cache (training), attention covers the L new tokens under `mask`
    /// ([B, 1, L, L] bool) or plain causal attention.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, l) = (x.size()[0], x.size()[1]);
        let qkv = self.qkv.forward(x)?; // [B, L, (Hq + 2 Hkv) * D]
        let (q, k, v) = self.rotated_qkv(&qkv, cos, sin)?;
        let (k, v, gqa) = match cache {
            Some((cache, layer)) => {
                let (k, v) = cache.update(layer, &k, &v)?; // [B, Hkv, len, D]
                (k, v, self.heads != self.kv_heads)
            }
            // Training: keys/values repeated to [B, Hq, L, D] (HF's `repeat_kv`) so that every
            // SDPA backend (flash, memory-efficient) takes the call, forward and backward.
            None if self.heads != self.kv_heads => {
                let rep = self.heads / self.kv_heads;
                (
                    k.f_repeat_interleave_self_int(rep, Some(1), None)?,
                    v.f_repeat_interleave_self_int(rep, Some(1), None)?,
                    false,
                )
            }
            None => (k, v, false),
        };
        let y = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask,
            0.0,
            causal,
            None::<f64>,
            gqa,
        )?; // [B, Hq, L, D]
        let y = y
            .f_transpose(1, 2)?
            .f_reshape([b, l, self.heads * self.head_dim])?;
        self.o.forward(&y)
    }
}

#[derive(Debug)]
pub(super) struct Mlp {
    /// gate_proj, up_proj stacked: [2 F, H] (trained as `mlp.gate_up_proj`).
    pub(super) gate_up: Linear,
    pub(super) down: Linear,
    pub(super) inner: i64,
}

impl Mlp {
    pub(super) fn new(p: &WeightPath<'_>, cfg: &LlamaConfig) -> Result<Self> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_up: Linear::stack(
                vec![
                    Linear::new(&p.pp("gate_proj"), f, h, cfg.mlp_bias)?,
                    Linear::new(&p.pp("up_proj"), f, h, cfg.mlp_bias)?,
                ],
                p.pp("gate_up_proj").prefix().to_string(),
            )?,
            down: Linear::new(&p.pp("down_proj"), h, f, cfg.mlp_bias)?,
            inner: f,
        })
    }
    /// [.., H] -> [.., H]: down(silu(gate(x)) * up(x)).
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gu = self.gate_up.forward(x)?; // [.., 2F]
        if let Some(h) = super::fused::silu_mul(&gu, self.inner)? {
            return self.down.forward(&h);
        }
        let d = gu.dim() as i64 - 1;
        let g = gu.f_narrow(d, 0, self.inner)?.f_silu()?;
        self.down
            .forward(&g.f_mul(&gu.f_narrow(d, self.inner, self.inner)?)?)
    }
}

#[derive(Debug)]
pub(super) struct Block {
    pub(super) attn_norm: RmsNorm,
    pub(super) attn: Attention,
    pub(super) mlp_norm: RmsNorm,
    pub(super) mlp: Mlp,
}
