//! The GGUF file's own Q4_1 / Q8_0 blocks beside a model loaded from it, for batch-1 decoding on
//! the CPU ([`crate::gguf::qmatvec`]): each linear layer (and the output head) whose every part
//! is stored in such blocks gets a [`QMatrix`] of those blocks, Q/K rows un-permuted as the f32
//! weights are. A layer's forward uses it for a single f32 CPU row without gradients and no LoRA
//! adapter; everything else (prefill, batches, training, CUDA) runs the f32 weights.
//!
//! Invariant: the blocks are the file's weights, so they are valid only while the f32 weights
//! are too. Everything that changes weights drops them: [`LlamaModel::extend_vocab`],
//! `train_params` with a spec that trains the base weights or adds adapters, `load_trained`.

use super::layers::Linear;
use super::model::LlamaModel;
use super::Arch;
use crate::error::{Error, Result};
use crate::gguf::load::{hf_name, unpermute_rows};
use crate::gguf::qmatvec::{QMatrix, QRows};
use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// What [`LlamaModel::attach_gguf_blocks`] attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attached {
    /// Linear layers (stacks count once) and the head.
    pub layers: usize,
    /// Bytes of blocks one decode step reads.
    pub bytes: usize,
}

impl LlamaModel {
    /// Attach the blocks of `f` (the file this model was loaded from: shapes are checked) to
    /// every linear layer and the head stored as Q4_1 / Q8_0. Other types (F32, K-quants) keep
    /// the f32 path.
    pub fn attach_gguf_blocks(&mut self, f: &GgufFile) -> Result<Attached> {
        let by_hf: HashMap<String, &TensorInfo> = f
            .tensors
            .iter()
            .filter_map(|t| hf_name(&t.name).map(|n| (n, t)))
            .collect();
        let (arch, hq, hkv) = (
            self.cfg.arch,
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
        );
        let rows_of = |name: &str| -> Result<Option<QRows>> {
            let Some(t) = by_hf.get(name) else {
                return Ok(None);
            };
            if !matches!(t.ty, GgmlType::Q4_1 | GgmlType::Q8_0) {
                return Ok(None);
            }
            let s = t.shape();
            if s.len() != 2 {
                return Ok(None);
            }
            let q = QRows::new(
                t.ty,
                s[0] as usize,
                s[1] as usize,
                f.tensor_bytes(t)?.to_vec(),
            )?;
            let heads = match arch {
                Arch::Llama if name.ends_with("self_attn.q_proj.weight") => Some(hq),
                Arch::Llama if name.ends_with("self_attn.k_proj.weight") => Some(hkv),
                _ => None,
            };
            Ok(Some(match heads {
                Some(h) => q.permuted(&unpermute_perm(s[0], h)?)?,
                None => q,
            }))
        };
        let mut out = Attached::default();
        let attach = |l: &mut Linear, out: &mut Attached| -> Result<()> {
            let mut parts = Vec::with_capacity(l.parts.len());
            for p in &l.parts {
                match rows_of(&format!("{}.weight", p.name))? {
                    Some(r) if r.rows() as i64 == p.rows => parts.push(r),
                    _ => return Ok(()),
                }
            }
            let q = QMatrix::stack(parts)?;
            check_shape(&l.w, &q, &l.name, f)?;
            out.layers += 1;
            out.bytes += q.bytes();
            l.q = Some(q);
            Ok(())
        };
        for b in &mut self.blocks {
            attach(&mut b.attn.qkv, &mut out)?;
            attach(&mut b.attn.o, &mut out)?;
            attach(&mut b.mlp.gate_up, &mut out)?;
            attach(&mut b.mlp.down, &mut out)?;
        }
        let head = if self.lm_head.is_none() {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        if let Some(q) = rows_of(head)? {
            let q = QMatrix::stack(vec![q])?;
            check_shape(self.lm_head_weight(), &q, head, f)?;
            out.layers += 1;
            out.bytes += q.bytes();
            self.lm_head_q = Some(q);
        }
        Ok(out)
    }

    /// Drop the attached blocks (the f32 weights are about to change).
    pub(super) fn drop_gguf_blocks(&mut self) {
        self.lm_head_q = None;
        for b in &mut self.blocks {
            for l in [
                &mut b.attn.qkv,
                &mut b.attn.o,
                &mut b.mlp.gate_up,
                &mut b.mlp.down,
            ] {
                l.q = None;
            }
        }
    }

    /// Whether any layer has blocks attached.
    pub fn has_gguf_blocks(&self) -> bool {
        self.lm_head_q.is_some() || self.blocks.iter().any(|b| b.attn.qkv.q.is_some())
    }

    /// The output head: h [.., H] -> logits [.., V] (the blocks for one f32 CPU row, the decode
    /// GEMV for one bf16 CUDA row).
    pub(super) fn head(&self, h: &Tensor) -> Result<Tensor> {
        if let Some(q) = &self.lm_head_q {
            if let Some(y) = matvec_row(q, h, None)? {
                return Ok(y);
            }
        }
        if h.device().is_cuda() {
            if let Some(y) = super::gemv::gemv_row(h, self.lm_head_weight(), None)? {
                return Ok(y);
            }
        }
        Ok(h.f_linear::<&Tensor>(self.lm_head_weight(), None)?)
    }
}

/// `unpermute_rows`'s row order as indices: row i of the HF layout is row `perm[i]` of GGUF's.
fn unpermute_perm(rows: i64, n_head: i64) -> Result<Vec<usize>> {
    let idx = Tensor::f_arange(rows, (Kind::Int64, Device::Cpu))?.f_view([rows, 1])?;
    let p: Vec<i64> = Vec::try_from(unpermute_rows(&idx, n_head)?.f_view([-1])?)?;
    Ok(p.into_iter().map(|i| i as usize).collect())
}

fn check_shape(w: &Tensor, q: &QMatrix, name: &str, f: &GgufFile) -> Result<()> {
    let s = w.size();
    if s != [q.rows() as i64, q.cols() as i64] {
        return Err(Error::Gguf {
            path: f.path.clone(),
            msg: format!(
                "{name}: the model's weight is {s:?} but the file's blocks are [{}, {}] (not the file this model was loaded from?)",
                q.rows(),
                q.cols()
            ),
        });
    }
    Ok(())
}

/// `y = x W^T (+ b)` through `q` when `x` is one f32 CPU row without gradient (any leading
/// shape of product 1); `None` otherwise.
pub(super) fn matvec_row(q: &QMatrix, x: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    if x.device() != Device::Cpu
        || x.kind() != Kind::Float
        || x.requires_grad()
        || x.numel() != q.cols()
    {
        return Ok(None);
    }
    let xs: Vec<f32> = Vec::try_from(x.f_contiguous()?.f_view([-1])?)?;
    let mut y = vec![0f32; q.rows()];
    q.matvec(&xs, &mut y)?;
    let mut shape = x.size();
    if let Some(last) = shape.last_mut() {
        *last = q.rows() as i64;
    }
    let y = Tensor::from_slice(&y).f_view(shape.as_slice())?;
    Ok(Some(match b {
        Some(b) => y.f_add(b)?,
        None => y,
    }))
}
