//! The flat parameter / gradient / moment buffers of [`AdamW`](super::AdamW) and the bf16
//! working copy of the matrices (see `ARCHITECTURE.md`, semhitok-train invariants).

use super::Param;
use tch::{Kind, Tensor};

/// The flat buffers: parameter `i` occupies `[offset[i], offset[i] + numel)`. Layout, in four
/// groups: decayed parameters without a bf16 copy, decayed ones with, undecayed ones with,
/// undecayed ones without; so decay applies to `[0, n_decay)` and the bf16 copy covers one
/// contiguous range (empty without [`Bf16Copy`]: then the layout is decayed first, by name).
#[derive(Debug)]
pub(super) struct Flat {
    pub(super) p: Tensor,
    pub(super) m: Tensor,
    pub(super) v: Tensor,
    /// Gradient buffer, created at the first step (gradients do not exist before a backward).
    pub(super) g: Option<Tensor>,
    pub(super) offset: Vec<i64>,
    pub(super) n_decay: i64,
    pub(super) bf16: Option<Bf16Copy>,
}

/// bf16 working copies of the matrices autocast would cast (see [`bf16_members`]), in one flat
/// buffer refreshed by one kernel per forward, instead of autocast casting each matrix forward
/// (~170 kernels at ViT-B/ViT-B) and each gradient back in backward (as many again).
///
/// While [`AdamW::enter_bf16`] is in effect, each member variable's data is its bf16 view (the
/// modules hold the same variable, so they compute with it; autocast sees bf16 and casts
/// nothing). Its `.grad` is then its view of `g16`, a flat bf16 buffer of zeros, so autograd's
/// accumulation stores the bf16 gradient there (`0 + g` in bf16 is exact); [`AdamW::exit_bf16`]
/// adds `g16` into the f32 flat gradient buffer in one kernel ([`super::grad16`]), zeroes it, and
/// points the variables and their gradients back at the f32 masters and the f32 gradient views,
/// which the optimizer, checkpoints and the EMA always see. Values are those of autocast: the
/// same bf16 rounding of the weights, the same bf16 gradients summed in bf16 across uses, then
/// the same f32 additions. Without `g16` (`SEMHITOK_BF16_GRADS=0`, and while a data-parallel
/// reducer hooks the f32 gradients during backward) the `.grad` stays the f32 view and autograd's
/// mixed-dtype `grad += new_grad` converts per tensor (the same values, ~250 slower kernels).
#[derive(Debug)]
pub(super) struct Bf16Copy {
    /// The members' range of the flat buffers.
    pub(super) start: i64,
    pub(super) len: i64,
    /// `[len]` bf16.
    pub(super) p16: Tensor,
    /// Member parameter indices.
    pub(super) members: Vec<usize>,
    pub(super) active: bool,
    /// The bf16 gradient buffer `[len]` (zeros between backward passes) and, per member, its view
    /// of it and its view of the f32 gradient buffer; built at the first use.
    pub(super) grads: Option<Bf16Grads>,
    /// Whether the members' gradients go through `grads` while active.
    pub(super) use_grads: bool,
}

/// See [`Bf16Copy::grads`].
#[derive(Debug)]
pub(super) struct Bf16Grads {
    pub(super) g16: Tensor,
    pub(super) views16: Vec<Tensor>,
    pub(super) views32: Vec<Tensor>,
}

/// Which parameters get a bf16 working copy: those whose [`Role`](super::Role) says so, the
/// weights autocast runs in bf16 (matrices and convolution kernels) and the biases of the same
/// layers. Norm scales, position embeddings, codebooks and embeddings stay f32 (autocast runs
/// them in f32 or they are used outside autocast).
pub fn bf16_members(params: &[Param]) -> Vec<bool> {
    params.iter().map(|p| p.role.bf16_copy()).collect()
}

impl Flat {
    /// Move the parameters into one flat buffer (values unchanged) and create zeroed moments;
    /// with `bf16_copy`, also lay out a bf16 working copy of the [`bf16_members`].
    pub(super) fn new(params: &mut [Param], bf16_copy: bool) -> Option<Self> {
        let first = params.first()?;
        let (kind, device) = (first.var.kind(), first.var.device());
        if params
            .iter()
            .any(|p| p.var.kind() != kind || p.var.device() != device || !p.var.is_contiguous())
        {
            return None;
        }
        let _g = tch::no_grad_guard();
        let member = if bf16_copy {
            bf16_members(params)
        } else {
            vec![false; params.len()]
        };
        let group = |i: usize| match (params[i].decays(), member[i]) {
            (true, false) => 0,
            (true, true) => 1,
            (false, true) => 2,
            (false, false) => 3,
        };
        let mut order: Vec<usize> = (0..params.len()).collect();
        order.sort_by_key(|&i| group(i)); // stable: by name within a group
        let mut offset = vec![0i64; params.len()];
        let (mut n, mut n_decay) = (0i64, 0i64);
        let (mut start, mut end) = (None, 0i64);
        for &i in &order {
            offset[i] = n;
            if member[i] {
                start.get_or_insert(n);
            }
            n += params[i].var.numel() as i64;
            if params[i].decays() {
                n_decay = n;
            }
            if member[i] {
                end = n;
            }
        }
        let p = Tensor::zeros([n], (kind, device));
        for (i, prm) in params.iter_mut().enumerate() {
            let numel = prm.var.numel() as i64;
            let mut dst = p.narrow(0, offset[i], numel);
            dst.copy_(&prm.var.reshape([numel]));
            let (size, stride) = (prm.var.size(), prm.var.stride());
            let _ = prm
                .var
                .set_source_tensor_storage_offset_(&p, offset[i], size, stride);
        }
        let bf16 = start.map(|start| Bf16Copy {
            start,
            len: end - start,
            p16: Tensor::zeros([end - start], (Kind::BFloat16, device)),
            members: (0..params.len()).filter(|&i| member[i]).collect(),
            active: false,
            grads: None,
            use_grads: super::grad16::enabled(),
        });
        Some(Self {
            m: Tensor::zeros([n], (kind, device)),
            v: Tensor::zeros([n], (kind, device)),
            p,
            g: None,
            offset,
            n_decay,
            bf16,
        })
    }

    /// Point the bf16-copy members' variables at their views of the copy (`to_copy`, refreshing
    /// it from the f32 masters first) or of the f32 masters; a no-op when already there. Returns
    /// whether the variables are on the copy now (false without one).
    pub(super) fn point_members(
        &mut self,
        params: &[Param],
        to_copy: bool,
    ) -> Result<bool, tch::TchError> {
        let Some(c) = &self.bf16 else {
            return Ok(false);
        };
        if c.active == to_copy {
            return Ok(to_copy);
        }
        let _g = tch::no_grad_guard();
        if to_copy {
            c.p16
                .shallow_clone()
                .f_copy_(&self.p.f_narrow(0, c.start, c.len)?)?;
        }
        self.build_bf16_grads(params)?;
        let c = self.bf16.as_ref().ok_or_else(no_copy)?;
        let grads = c.grads.as_ref().filter(|_| c.use_grads);
        for (k, &i) in c.members.iter().enumerate() {
            let mut var = params[i].var.shallow_clone(); // same variable the modules hold
            let view = if to_copy {
                c.p16
                    .f_narrow(0, self.offset[i] - c.start, var.numel() as i64)?
                    .f_view(var.size().as_slice())?
            } else {
                self.view(&self.p, i, &var)
            };
            var.f_set_data(&view)?;
            // The gradient follows the data's dtype (set after it: the dtypes must match).
            if let Some(g) = grads {
                let gv = if to_copy {
                    &g.views16[k]
                } else {
                    &g.views32[k]
                };
                semhitok_sys::set_grad(&var, Some(gv))
                    .map_err(|e| tch::TchError::Kind(format!("{}: {e}", params[i].name)))?;
            }
        }
        if let (Some(g), false, Some(flat_g)) = (grads, to_copy, &self.g) {
            super::grad16::add_and_clear(&flat_g.f_narrow(0, c.start, c.len)?, &g.g16)?;
        }
        if let Some(c) = self.bf16.as_mut() {
            c.active = to_copy;
        }
        Ok(to_copy)
    }

    /// Build the bf16 gradient buffer and views unless built, switched off, or before the f32
    /// gradient buffer exists.
    fn build_bf16_grads(&mut self, params: &[Param]) -> Result<(), tch::TchError> {
        let (Some(c), Some(g)) = (self.bf16.as_ref(), self.g.as_ref()) else {
            return Ok(());
        };
        if c.use_grads && c.grads.is_none() {
            let g16 = Tensor::f_zeros([c.len], (Kind::BFloat16, g.device()))?;
            let mut views16 = Vec::with_capacity(c.members.len());
            let mut views32 = Vec::with_capacity(c.members.len());
            for &i in &c.members {
                let var = &params[i].var;
                views16.push(alias(&g16, self.offset[i] - c.start, var)?);
                views32.push(alias(g, self.offset[i], var)?);
            }
            let grads = Bf16Grads {
                g16,
                views16,
                views32,
            };
            if let Some(c) = self.bf16.as_mut() {
                c.grads = Some(grads);
            }
        }
        Ok(())
    }

    /// Route the members' gradients through the bf16 buffer while active (`on`), or keep them
    /// on the f32 views (a no-op without a copy; takes effect at the next [`Self::point_members`]
    /// to the copy, so call it only while not active).
    pub(super) fn set_bf16_grads(&mut self, on: bool) {
        if let Some(c) = self.bf16.as_mut() {
            c.use_grads = on;
        }
    }

    pub(super) fn view(&self, buf: &Tensor, i: usize, like: &Tensor) -> Tensor {
        buf.narrow(0, self.offset[i], like.numel() as i64)
            .view(like.size().as_slice())
    }

    /// Whether every parameter's gradient is the view of `g` it was bound to (autograd
    /// accumulates in place into an existing gradient, so this holds unless someone replaced
    /// or dropped a gradient).
    pub(super) fn grads_bound(&self, params: &[Param]) -> bool {
        let Some(g) = &self.g else { return false };
        let base = g.data_ptr() as usize;
        let elt = g.kind().elt_size_in_bytes();
        params.iter().enumerate().all(|(i, p)| {
            let gr = p.var.grad();
            gr.defined() && gr.data_ptr() as usize == base + self.offset[i] as usize * elt
        })
    }

    /// Copy every gradient into the flat gradient buffer and re-point it there; `false` (nothing
    /// changed) when some parameter has no gradient.
    pub(super) fn bind_grads(&mut self, params: &[Param]) -> bool {
        let grads: Vec<Tensor> = params.iter().map(|p| p.var.grad()).collect();
        if grads.iter().any(|g| !g.defined()) {
            return false;
        }
        let _g = tch::no_grad_guard();
        let g = self.g.get_or_insert_with(|| self.p.zeros_like());
        for (i, mut gr) in grads.into_iter().enumerate() {
            let numel = gr.numel() as i64;
            let mut dst = g.narrow(0, self.offset[i], numel);
            dst.copy_(&gr.reshape([numel]));
            let size = gr.size();
            let stride = params[i].var.stride();
            let _ = gr.set_source_tensor_storage_offset_(g, self.offset[i], size, stride);
        }
        true
    }
}

fn no_copy() -> tch::TchError {
    tch::TchError::Kind("bf16 working copy: none".into())
}

/// A tensor with `like`'s shape and strides (a parameter: contiguous) over `buf` from element
/// `offset`, made with `set_` as [`Flat::bind_grads`] re-points gradients, rather than as a
/// view: a gradient must not be an autograd view (`detach_` refuses views, and the next
/// optimizer built over the same variables zeroes their old gradients with it).
fn alias(buf: &Tensor, offset: i64, like: &Tensor) -> Result<Tensor, tch::TchError> {
    let _g = tch::no_grad_guard();
    let (size, stride) = (like.size(), like.stride());
    let mut t = Tensor::f_empty([0], (buf.kind(), buf.device()))?;
    let _ =
        t.f_set_source_tensor_storage_offset_(buf, offset, size.as_slice(), stride.as_slice())?;
    Ok(t)
}
