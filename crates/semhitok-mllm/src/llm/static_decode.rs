//! The static-shape decode step and its CUDA-graph runner.
//!
//! [`LlamaModel::forward_static`] is one decode step whose every tensor has a fixed shape and
//! address from step to step: the input ids come from a buffer, the slot to write is a device
//! tensor, keys/values go in with `index_copy_` at that slot, and attention runs over the full
//! preallocated cache length under a mask of the real filled slots (exact: the slots not yet
//! written are masked, so their softmax weight is exactly 0). No host value changes between
//! steps, so the step can be captured once as a CUDA graph ([`semhitok_sys::CudaGraph`]) and
//! replayed per token: one launch instead of ~20 per layer.
//!
//! [`StaticDecoder`] owns the buffers (ids [B, 1], slot [1], the sampled ids [B]) and runs the
//! steps: eagerly, or (CUDA) the first step eagerly as the warm-up, then a capture of the step
//! (model + the caller's sampler, which must be capturable too: no host reads) and replays.

use super::kv_cache::KvCache;
use super::model::LlamaModel;
use super::rope;
use crate::error::{Error, Result};
use semhitok_sys::CudaGraph;
use tch::{Device, Kind, Tensor};

impl LlamaModel {
    /// One static-shape decode step: ids [B, 1] int64 (device), `slot` [1] int64 (device, the
    /// cache slot this token goes to; the caller advances it). Returns logits [B, V] in f32.
    /// Only decode after a prefill (the cache must not be empty); the same logits as
    /// [`Self::forward`] with one new token (to rounding of the longer reduction).
    pub fn forward_static(
        &self,
        ids: &Tensor,
        slot: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let b = cache.batch();
        if ids.size() != [b, 1] || slot.size() != [1] {
            return Err(Error::Shape {
                what: "static decode ids [B, 1] (slot [1])",
                expected: format!("[{b}, 1]"),
                got: ids.size(),
            });
        }
        let x = Tensor::f_embedding(&self.embed, ids, -1, false, false)?; // [B, 1, H]
        let pos = cache.static_advance(slot)?; // [B, 1]
        let mask = cache.static_mask()?; // [B, 1, 1, C]
        let (cos, sin) = rope::cos_sin(&self.inv_freq, &pos, self.kind)?;
        // Residual adds fused with the norm that follows them, as in `forward_hidden`.
        let mut x = x;
        let mut pending: Option<Tensor> = None;
        for (i, blk) in self.blocks.iter().enumerate() {
            let a = &blk.attn;
            let (nx, h) = blk.attn_norm.add_forward(&x, pending.take().as_ref())?;
            x = nx;
            let qkv = a.qkv.forward(&h)?; // [B, 1, (Hq + 2 Hkv) D]
            let nq = a.heads * a.head_dim;
            let (q, k, v) = a.rotated_qkv(&qkv, &cos, &sin)?;
            let (k, v) = cache.static_update(i, slot, &k, &v)?; // [B, Hkv, C, D]
            let y = Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&mask),
                0.0,
                false,
                None::<f64>,
                a.heads != a.kv_heads,
            )?; // [B, Hq, 1, D]
            let y = y.f_transpose(1, 2)?.f_reshape([b, 1, nq])?;
            let (nx, h2) = blk.mlp_norm.add_forward(&x, Some(&a.o.forward(&y)?))?;
            x = nx;
            pending = Some(blk.mlp.forward(&h2)?);
        }
        let h = self
            .norm
            .add_forward(&x, pending.as_ref())?
            .1
            .f_select(1, 0)?; // [B, H]
        Ok(self.head(&h)?.f_to_kind(Kind::Float)?)
    }
}

/// How [`StaticDecoder`] runs a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepRun {
    /// Issue the step's ops one by one.
    Eager,
    /// Capture the step as a CUDA graph after one eager warm-up step, then replay it.
    CudaGraph,
}

/// Buffers and (optionally) the CUDA graph of the static decode step (see the module docs).
#[derive(Debug)]
pub struct StaticDecoder {
    /// [B, 1] int64: the ids the next step feeds (each step writes its sampled ids here).
    ids: Tensor,
    /// [1] int64: the slot the next step writes.
    slot: Tensor,
    /// [B] int64: the ids sampled by the last step.
    next: Tensor,
    run: StepRun,
    graph: Option<CudaGraph>,
    steps: usize,
}

impl StaticDecoder {
    /// Buffers for decoding after a prefill into `cache`, whose next input is `first` [B] int64.
    pub fn new(cache: &KvCache, first: &Tensor, run: StepRun) -> Result<Self> {
        let device = first.device();
        if run == StepRun::CudaGraph
            && !(matches!(device, Device::Cuda(_)) && CudaGraph::available())
        {
            return Err(Error::Config(format!(
                "CUDA-graph decoding needs a CUDA device and a semhitok-sys built with the CUDA \
                 headers (device {device:?}, graphs available: {})",
                CudaGraph::available()
            )));
        }
        let ids = first
            .f_reshape([-1, 1])?
            .f_to_kind(Kind::Int64)?
            .f_contiguous()?
            .f_detach_copy()?;
        Ok(Self {
            ids,
            slot: Tensor::f_full([1], cache.len(), (Kind::Int64, device))?,
            next: Tensor::f_zeros([cache.batch()], (Kind::Int64, device))?,
            run,
            graph: None,
            steps: 0,
        })
    }

    /// Run one step: feed the buffered ids, sample with `sample` (logits [B, V] f32 -> ids [B]
    /// int64; under [`StepRun::CudaGraph`] it is captured once, so it must read its inputs from
    /// fixed tensors and never sync with the host) and return the sampled ids [B] (a fresh copy).
    pub fn step(
        &mut self,
        model: &LlamaModel,
        cache: &mut KvCache,
        sample: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let Self {
            ids, slot, next, ..
        } = self;
        let mut body = || -> Result<()> {
            let logits = model.forward_static(ids, slot, cache)?;
            let n = sample(&logits)?;
            let _ = next.f_copy_(&n)?;
            let _ = ids.f_copy_(&n.f_unsqueeze(1)?)?;
            let _ = slot.f_add_scalar_(1)?;
            Ok(())
        };
        match (&self.graph, self.run, self.steps) {
            (Some(g), _, _) => g.replay()?,
            (None, StepRun::CudaGraph, s) if s >= 1 => {
                let Device::Cuda(d) = model.device() else {
                    unreachable!("checked in new")
                };
                let (g, ()) = CudaGraph::capture(d, body)?;
                g.replay()?;
                self.graph = Some(g);
            }
            _ => body()?,
        }
        cache.commit_static_step()?;
        self.steps += 1;
        Ok(self.next.f_detach_copy()?)
    }
}
