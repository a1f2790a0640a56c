//! The decoding state: preallocated keys/values per layer, the slot index, and which slots hold
//! real tokens (left padding). Owned by the caller; the model itself never changes while decoding.

use super::config::LlamaConfig;
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Keys and values of every layer for `batch` sequences of up to `capacity` slots.
///
/// Slot `t` of row `b` holds the token fed at step `t`; `valid[b, t]` says whether it is a real
/// token (false for left padding). Positions (RoPE) count real tokens only, as transformers'
/// `generate` does (`position_ids = attention_mask.cumsum(-1) - 1`).
#[derive(Debug)]
pub struct KvCache {
    /// Per layer: [B, kv_heads, capacity, head_dim].
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// [B, capacity] bool.
    valid: Tensor,
    /// [B] int64: real tokens seen so far per row.
    seen: Tensor,
    len: i64,
    capacity: i64,
    batch: i64,
    padded: bool,
}

impl KvCache {
    /// Zeroed cache for `batch` rows and `capacity` slots in `kind` on `device`.
    pub fn new(
        cfg: &LlamaConfig,
        batch: i64,
        capacity: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        if batch < 1 || capacity < 1 {
            return Err(Error::Config(format!(
                "KV cache needs batch >= 1 and capacity >= 1, got {batch} x {capacity}"
            )));
        }
        let shape = [batch, cfg.num_key_value_heads, capacity, cfg.head_dim];
        let mut k = Vec::with_capacity(cfg.num_hidden_layers as usize);
        let mut v = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for _ in 0..cfg.num_hidden_layers {
            k.push(Tensor::f_zeros(shape, (kind, device))?);
            v.push(Tensor::f_zeros(shape, (kind, device))?);
        }
        Ok(Self {
            k,
            v,
            valid: Tensor::f_zeros([batch, capacity], (Kind::Bool, device))?,
            seen: Tensor::f_zeros([batch], (Kind::Int64, device))?,
            len: 0,
            capacity,
            batch,
            padded: false,
        })
    }

    /// Slots filled so far (the next step writes at this index).
    pub fn len(&self) -> i64 {
        self.len
    }
    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Slots available in total.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }
    /// Rows.
    pub fn batch(&self) -> i64 {
        self.batch
    }
    /// Forget everything (keeps the memory).
    pub fn reset(&mut self) -> Result<()> {
        self.len = 0;
        self.padded = false;
        let _ = self.valid.f_zero_()?;
        let _ = self.seen.f_zero_()?;
        Ok(())
    }

    /// Register `l` new slots for every row. `mask`: [B, l] (nonzero = real token) or `None`
    /// (all real). Returns `(positions [B, l] int64, attention mask or None)`; the attention
    /// mask is [B, 1, l, len + l] bool (true = may attend), `None` when plain causal attention
    /// over all slots is exact (no padding so far and either a single new token or an empty cache).
    pub(crate) fn advance(
        &mut self,
        l: i64,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>, bool)> {
        if self.len + l > self.capacity {
            return Err(Error::Config(format!(
                "KV cache full: {} slots used + {l} new > capacity {}",
                self.len, self.capacity
            )));
        }
        let device = self.valid.device();
        let new_valid = match mask {
            Some(m) => {
                if m.size() != [self.batch, l] {
                    return Err(Error::Shape {
                        what: "attention mask",
                        expected: format!("[{}, {l}]", self.batch),
                        got: m.size(),
                    });
                }
                m.f_to_device(device)?.f_ne(0)?
            }
            None => Tensor::f_ones([self.batch, l], (Kind::Bool, device))?,
        };
        let any_pad = mask.is_some() && bool::try_from(new_valid.f_logical_not()?.f_any()?)?;
        self.padded |= any_pad;
        self.valid.f_narrow(1, self.len, l)?.f_copy_(&new_valid)?;
        let cum = new_valid.f_to_kind(Kind::Int64)?.f_cumsum(1, Kind::Int64)?;
        let positions = cum
            .f_add(&self.seen.f_unsqueeze(1)?)?
            .f_sub_scalar(1)?
            .f_clamp_min(0)?;
        self.seen = self.seen.f_add(&cum.f_select(1, l - 1)?)?;
        let start = self.len;
        self.len += l;
        // Causal over slots, restricted to real keys; every query may see its own slot so a
        // padding row never has all keys masked (that would give NaN, and NaN * 0 reaches real
        // rows through the values).
        let (mask, causal) = if !self.padded && (start == 0 || l == 1) {
            (None, start == 0 && l > 1)
        } else {
            let q =
                Tensor::f_arange_start(start, start + l, (Kind::Int64, device))?.f_unsqueeze(1)?;
            let k = Tensor::f_arange(self.len, (Kind::Int64, device))?.f_unsqueeze(0)?;
            let causal = k.f_le_tensor(&q)?; // [l, len]
            let own = k.f_eq_tensor(&q)?;
            let keys = self.valid.f_narrow(1, 0, self.len)?.f_unsqueeze(1)?; // [B, 1, len]
            let m = causal
                .f_unsqueeze(0)?
                .f_logical_and(&keys)?
                .f_logical_or(&own.f_unsqueeze(0)?)?
                .f_unsqueeze(1)?; // [B, 1, l, len]
            (Some(m), false)
        };
        Ok((positions, mask, causal))
    }

    /// Write layer `i`'s new keys/values ([B, kv_heads, l, head_dim]) at the slots just
    /// registered and return views of all filled slots ([B, kv_heads, len, head_dim]).
    pub(crate) fn update(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let l = k.size()[2];
        let start = self.len - l;
        self.k[layer].f_narrow(2, start, l)?.f_copy_(k)?;
        self.v[layer].f_narrow(2, start, l)?.f_copy_(v)?;
        Ok((
            self.k[layer].f_narrow(2, 0, self.len)?,
            self.v[layer].f_narrow(2, 0, self.len)?,
        ))
    }

    /// Static-shape decode step (`LlamaModel::forward_static`): mark slot `slot` ([1] int64,
    /// on the device) real in every row and return the rows' positions [B, 1] (real tokens seen
    /// so far), advancing them in place. Touches no host state (graph-capturable); the host's
    /// slot count follows with [`Self::commit_static_step`].
    pub(crate) fn static_advance(&mut self, slot: &Tensor) -> Result<Tensor> {
        let _ = self.valid.f_index_fill_(1, slot, 1)?;
        let pos = self.seen.f_unsqueeze(1)?.f_detach_copy()?; // [B, 1]
        let _ = self.seen.f_add_scalar_(1)?;
        Ok(pos)
    }

    /// Which slots each query may attend in a static step: [B, 1, 1, capacity] bool (the real
    /// filled slots; slots not yet written are false, so the mask is exact over the full length).
    pub(crate) fn static_mask(&self) -> Result<Tensor> {
        Ok(self.valid.f_unsqueeze(1)?.f_unsqueeze(1)?)
    }

    /// Write layer `layer`'s new keys/values ([B, kv_heads, 1, head_dim]) at slot `slot`
    /// ([1] int64, device) and return the full preallocated keys/values [B, kv_heads, capacity, D].
    pub(crate) fn static_update(
        &mut self,
        layer: usize,
        slot: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let _ = self.k[layer].f_index_copy_(2, slot, k)?;
        let _ = self.v[layer].f_index_copy_(2, slot, v)?;
        Ok((self.k[layer].shallow_clone(), self.v[layer].shallow_clone()))
    }

    /// Record on the host that a static step filled the next slot (errors when full).
    pub(crate) fn commit_static_step(&mut self) -> Result<()> {
        if self.len + 1 > self.capacity {
            return Err(Error::Config(format!(
                "KV cache full: {} slots used + 1 new > capacity {}",
                self.len, self.capacity
            )));
        }
        self.len += 1;
        Ok(())
    }
}
