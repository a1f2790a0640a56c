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
/// nothing); its `.grad` stays the f32 view of the flat gradient buffer, and autograd's
/// accumulation `grad += new_grad` converts the bf16 gradient to f32 in that same kernel. Values
/// are those of autocast: the same bf16 rounding of the weights, the same bf16 gradients summed
/// in bf16 across uses and then converted. [`AdamW::exit_bf16`] points the variables back at the
/// f32 masters, which the optimizer, checkpoints and the EMA always see.
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
        for &i in &c.members {
            let mut var = params[i].var.shallow_clone(); // same variable the modules hold
            let view = if to_copy {
                c.p16
                    .f_narrow(0, self.offset[i] - c.start, var.numel() as i64)?
                    .f_view(var.size().as_slice())?
            } else {
                self.view(&self.p, i, &var)
            };
            var.f_set_data(&view)?;
        }
        if let Some(c) = self.bf16.as_mut() {
            c.active = to_copy;
        }
        Ok(to_copy)
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
