//! AdamW as `torch.optim.AdamW` (non-fused), over one flat buffer when it can.

use super::flat::Flat;
use super::Param;
use crate::config::OptimConfig;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// AdamW over a fixed list of parameters.
///
/// When every parameter is a dense tensor of one kind on one device (always, for the models
/// here), the parameters, their gradients and both moments live in four flat buffers, and each
/// parameter (and, from the first step on, its `.grad`) is a view into its slice (re-pointed with
/// `Tensor::set_`, so every module holding the variable sees the same storage). A step is then
/// ~10 element-wise kernels over the flat buffers instead of ~10 per parameter tensor, gradient
/// zeroing and the global norm are one kernel each, and LibTorch's autograd accumulates straight
/// into the flat gradient buffer. The per-tensor path remains for mixed parameter lists and for
/// a step where some parameter got no gradient (it is skipped, as `torch.optim` skips `grad=None`).
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    /// Views of `flat.m` / `flat.v` per parameter (or standalone tensors without `flat`).
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    flat: Option<Flat>,
    /// Number of `step` calls.
    pub t: u64,
    /// Updates each parameter received (its bias correction uses it; a parameter without a
    /// gradient at a step is skipped and not counted, as in `torch.optim.AdamW`).
    steps: Vec<u64>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// A clip scale [`Self::clip_to`] left for the fused step to apply (CUDA flat buffers only);
    /// every other reader of the gradients through this type applies it first.
    pending_clip: Option<f64>,
}

impl AdamW {
    /// `params` sorted by name by the caller (determinism of the update order and of the file).
    /// The parameters' storage moves into the optimizer's flat buffer (values unchanged).
    pub fn new(params: Vec<Param>, cfg: &OptimConfig) -> Self {
        Self::build(params, cfg, false)
    }

    /// [`AdamW::new`] plus a flat bf16 working copy of the matrices for bf16-autocast training
    /// (see [`AdamW::enter_bf16`]); without a flat buffer or without members, same as `new`.
    pub fn with_bf16_copy(params: Vec<Param>, cfg: &OptimConfig) -> Self {
        Self::build(params, cfg, true)
    }

    fn build(mut params: Vec<Param>, cfg: &OptimConfig, bf16_copy: bool) -> Self {
        let n = params.len();
        let flat = Flat::new(&mut params, bf16_copy);
        let (m, v) = match &flat {
            Some(f) => (
                params
                    .iter()
                    .enumerate()
                    .map(|(i, p)| f.view(&f.m, i, &p.var))
                    .collect(),
                params
                    .iter()
                    .enumerate()
                    .map(|(i, p)| f.view(&f.v, i, &p.var))
                    .collect(),
            ),
            None => (
                params.iter().map(|p| p.var.zeros_like()).collect(),
                params.iter().map(|p| p.var.zeros_like()).collect(),
            ),
        };
        Self {
            params,
            m,
            v,
            flat,
            t: 0,
            steps: vec![0; n],
            beta1: cfg.betas[0],
            beta2: cfg.betas[1],
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            pending_clip: None,
        }
    }

    /// The parameters, in update order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The flat parameter buffer (every parameter is a view into it), when there is one.
    pub fn flat_params(&self) -> Option<&Tensor> {
        self.flat.as_ref().map(|f| &f.p)
    }

    /// Per-parameter views (in [`Self::params`] order) into `buf`, a buffer laid out like
    /// [`Self::flat_params`]; `None` without a flat buffer or when `buf` has another length.
    pub fn views_into(&self, buf: &Tensor) -> Option<Vec<Tensor>> {
        let f = self.flat.as_ref()?;
        (buf.size() == f.p.size()).then(|| {
            self.params
                .iter()
                .enumerate()
                .map(|(i, p)| f.view(buf, i, &p.var))
                .collect()
        })
    }

    /// Make the modules compute with the bf16 working copy until [`Self::exit_bf16`]: refresh it
    /// from the f32 masters (one kernel) and point each member variable at its bf16 view. Call it
    /// right before a forward whose backward follows; returns whether it is in effect (false
    /// without a copy). The gradients must live in the flat gradient buffer first: at the first
    /// call, a parameter without a gradient gets a zero one (so, unlike a plain first step, it is
    /// updated by weight decay and the moments' decay; `zero_grad` zeroes, it never unsets).
    pub fn enter_bf16(&mut self) -> Result<bool, tch::TchError> {
        if self.bf16_members() == 0 {
            return Ok(false);
        }
        if self.flat_grad().is_none() {
            self.define_grads()?;
            self.bind_flat_grads();
            if self.flat_grad().is_none() {
                return Ok(false);
            }
        }
        match self.flat.as_mut() {
            Some(f) => f.point_members(&self.params, true),
            None => Ok(false),
        }
    }

    /// Whether the bf16 members' gradients are stored in bf16 during backward and added into the
    /// f32 flat gradient buffer in one kernel at [`Self::exit_bf16`] (`on`, the default unless
    /// `SEMHITOK_BF16_GRADS=0`), or accumulated by autograd straight into their f32 views (what a
    /// data-parallel reducer hooking those views during backward needs). Same values either way.
    /// Call it outside `enter_bf16` / `exit_bf16`.
    pub fn set_bf16_grads(&mut self, on: bool) {
        if let Some(f) = self.flat.as_mut() {
            f.set_bf16_grads(on && super::grad16::enabled());
        }
    }

    /// Point the member variables back at their f32 masters (after backward; a no-op unless
    /// [`Self::enter_bf16`] is in effect), their gradients at their f32 views, after adding this
    /// backward's bf16 gradients there (see [`Self::set_bf16_grads`]).
    pub fn exit_bf16(&mut self) -> Result<(), tch::TchError> {
        if let Some(f) = self.flat.as_mut() {
            f.point_members(&self.params, false)?;
        }
        Ok(())
    }

    /// Give every parameter without a gradient a zero one (one backward of `0 * sum(p.sum())`;
    /// existing gradients are unchanged).
    fn define_grads(&self) -> Result<(), tch::TchError> {
        if self.params.iter().all(|p| p.var.grad().defined()) {
            return Ok(());
        }
        tch::with_grad(|| -> Result<(), tch::TchError> {
            let sums = self
                .params
                .iter()
                .map(|p| p.var.f_sum(Kind::Float))
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::f_stack(&sums, 0)?
                .f_sum(Kind::Float)?
                .f_mul_scalar(0.0)?
                .f_backward()
        })
    }

    /// Number of parameters with a bf16 working copy (0 without one).
    pub fn bf16_members(&self) -> usize {
        self.flat
            .as_ref()
            .and_then(|f| f.bf16.as_ref())
            .map_or(0, |c| c.members.len())
    }

    /// Whether a [`Self::step`] now would run on the flat buffers (all gradients bound, every
    /// parameter at the same step count).
    pub fn flat_active(&self) -> bool {
        self.flat_grad().is_some() && self.uniform_steps()
    }

    /// Every parameter has received the same number of updates (one bias correction for all).
    fn uniform_steps(&self) -> bool {
        self.steps.windows(2).all(|w| w[0] == w[1])
    }

    /// Re-point the gradients into the flat gradient buffer unless they are there already (first
    /// step, or something re-allocated them); a no-op without a flat buffer or while some
    /// parameter has no gradient.
    fn bind_flat_grads(&mut self) {
        if let Some(f) = self.flat.as_mut() {
            if !f.grads_bound(&self.params) {
                f.bind_grads(&self.params);
            }
        }
    }

    /// The flat gradient buffer, when every gradient is currently a view into it.
    fn flat_grad(&self) -> Option<&Tensor> {
        let f = self.flat.as_ref()?;
        if f.grads_bound(&self.params) {
            f.g.as_ref()
        } else {
            None
        }
    }

    /// The gradients as the tensors a data-parallel all-reduce averages in place: the flat
    /// gradient buffer when every gradient lives in it (one tensor, bound first if needed), else
    /// each defined per-parameter gradient. They share storage with the gradients the next
    /// [`Self::grad_norm_sq`], [`Self::clip_to`] and [`Self::step`] read.
    pub fn grads_for_reduce(&mut self) -> Vec<Tensor> {
        self.apply_pending_clip();
        self.bind_flat_grads();
        if let Some(g) = self.flat_grad() {
            return vec![g.shallow_clone()];
        }
        self.params
            .iter()
            .map(|p| p.var.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// Set every gradient to zero (gradients are accumulated by backward).
    pub fn zero_grad(&mut self) {
        self.pending_clip = None;
        let _g = tch::no_grad_guard();
        if let Some(g) = self.flat_grad() {
            let _ = g.shallow_clone().zero_();
            return;
        }
        for p in &mut self.params {
            let mut g = p.var.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// Global L2 norm of the gradients (parameters without a gradient count as zero).
    pub fn grad_norm(&mut self) -> f64 {
        self.grad_norm_sq().double_value(&[]).sqrt()
    }

    /// The squared global gradient norm as a 0-d f64 tensor on the parameters' device (no host
    /// sync: the trainer reads it back together with the losses).
    pub fn grad_norm_sq(&mut self) -> Tensor {
        self.apply_pending_clip();
        let _g = tch::no_grad_guard();
        self.bind_flat_grads();
        if let Some(g) = self.flat_grad() {
            return super::sumsq::sum_sq_f64(g);
        }
        let mut total: Option<Tensor> = None;
        for p in &self.params {
            let g = p.var.grad();
            if g.defined() {
                let s = g.to_kind(Kind::Double).square().sum(Kind::Double);
                total = Some(match total {
                    None => s,
                    Some(t) => t + s,
                });
            }
        }
        total.unwrap_or_else(|| Tensor::zeros([], (Kind::Double, tch::Device::Cpu)))
    }

    /// The squared global l2 norm of the parameters as a 0-d f64 tensor on their device (no host
    /// sync), for the weight-growth guard.
    pub fn param_norm_sq(&self) -> Tensor {
        let _g = tch::no_grad_guard();
        if let Some(f) = self.flat.as_ref() {
            return super::sumsq::sum_sq_f64(&f.p);
        }
        let mut total: Option<Tensor> = None;
        for p in &self.params {
            let s = p.var.to_kind(Kind::Double).square().sum(Kind::Double);
            total = Some(match total {
                None => s,
                Some(t) => t + s,
            });
        }
        total.unwrap_or_else(|| Tensor::zeros([], (Kind::Double, tch::Device::Cpu)))
    }

    /// Scale gradients so their global norm `norm` (from [`Self::grad_norm_sq`]) is at most
    /// `max_norm`, as `torch.nn.utils.clip_grad_norm_` does (`max_norm / (norm + 1e-6)`).
    ///
    /// On CUDA flat buffers with the fused step on ([`super::adamw_fused`]) the multiply is left
    /// to the next [`Self::step`], which does it inside its one kernel; this type's other readers
    /// of the gradients ([`Self::grad_norm_sq`], [`Self::grads_for_reduce`]) apply it first, but
    /// a gradient read straight from a variable in between is the unclipped one.
    pub fn clip_to(&mut self, norm: f64, max_norm: f64) {
        if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            let fused = self.flat_grad().is_some_and(|g| g.device().is_cuda())
                && super::adamw_fused::enabled();
            if fused {
                self.apply_pending_clip();
                self.pending_clip = Some(scale);
                return;
            }
            self.scale_grads(scale);
        }
    }

    /// Apply a clip [`Self::clip_to`] left pending.
    fn apply_pending_clip(&mut self) {
        if let Some(scale) = self.pending_clip.take() {
            self.scale_grads(scale);
        }
    }

    /// Multiply every gradient by `scale`.
    fn scale_grads(&mut self, scale: f64) {
        let _g = tch::no_grad_guard();
        if let Some(g) = self.flat_grad() {
            let _ = g.shallow_clone().g_mul_scalar_(scale);
            return;
        }
        for p in &self.params {
            let mut g = p.var.grad();
            if g.defined() {
                let _ = g.g_mul_scalar_(scale);
            }
        }
    }

    /// [`Self::grad_norm`] then [`Self::clip_to`]; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        self.clip_to(norm, max_norm);
        norm
    }

    /// One AdamW update at learning rate `lr`. With `lr == 0` no parameter changes (bit for bit):
    /// the decay factor is exactly 1 and the update is scaled by exactly 0.
    pub fn step(&mut self, lr: f64) {
        let _g = tch::no_grad_guard();
        self.t += 1;
        self.bind_flat_grads();
        let hp = (self.beta1, self.beta2, self.eps, self.weight_decay);
        let (b1, b2) = (self.beta1, self.beta2);
        let bc = move |t: u64| (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        if self.uniform_steps() && self.flat_grad().is_some() {
            let t = self.steps.first().copied().unwrap_or(0) + 1;
            self.flat_step(lr, bc(t));
            self.steps.iter_mut().for_each(|s| *s = t);
            return;
        }
        self.apply_pending_clip();
        for (i, p) in self.params.iter_mut().enumerate() {
            let g = p.var.grad();
            if !g.defined() {
                continue;
            }
            self.steps[i] += 1;
            let g = g.to_kind(self.m[i].kind()).reshape([-1]);
            let n_decay = if p.decays() { p.var.numel() as i64 } else { 0 };
            let (mut var, mut m, mut v) =
                (p.var.view([-1]), self.m[i].view([-1]), self.v[i].view([-1]));
            adamw_update(
                (&mut var, &mut m, &mut v, &g),
                n_decay,
                lr,
                hp,
                bc(self.steps[i]),
            );
        }
    }

    /// One update over the flat buffers (every gradient bound, one bias correction `bc`): the
    /// fused kernel with the pending clip folded in, else the clip and LibTorch's ops.
    fn flat_step(&mut self, lr: f64, (bc1, bc2): (f64, f64)) {
        let fused = match (self.flat.as_ref(), self.flat_grad()) {
            (Some(f), Some(g)) => {
                let scalars = super::adamw_fused::StepScalars {
                    clip: self.pending_clip,
                    beta1: self.beta1,
                    beta2: self.beta2,
                    eps: self.eps,
                    decay: 1.0 - lr * self.weight_decay,
                    bc2,
                    step: -lr / bc1,
                };
                let n_decay = if self.weight_decay > 0.0 {
                    f.n_decay
                } else {
                    0
                };
                super::adamw_fused::step((&f.p, &f.m, &f.v, g), n_decay, &scalars)
            }
            _ => return,
        };
        if fused {
            self.pending_clip = None;
            return;
        }
        self.apply_pending_clip();
        if let (Some(f), Some(g)) = (self.flat.as_ref(), self.flat_grad()) {
            let hp = (self.beta1, self.beta2, self.eps, self.weight_decay);
            let (mut p, mut m, mut v) = (
                f.p.shallow_clone(),
                f.m.shallow_clone(),
                f.v.shallow_clone(),
            );
            adamw_update((&mut p, &mut m, &mut v, g), f.n_decay, lr, hp, (bc1, bc2));
        }
    }

    /// The optimizer state as named tensors under `prefix` (`{prefix}.m.{name}`, `{prefix}.v.{name}`).
    pub fn state_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            out.push((format!("{prefix}.m.{}", p.name), self.m[i].shallow_clone()));
            out.push((format!("{prefix}.v.{}", p.name), self.v[i].shallow_clone()));
        }
        let steps: Vec<i64> = self.steps.iter().map(|&s| s as i64).collect();
        out.push((format!("{prefix}.steps"), Tensor::from_slice(&steps)));
        out
    }

    /// Restore moments saved by [`AdamW::state_tensors`]; every parameter must be present.
    pub fn load_state(
        &mut self,
        prefix: &str,
        t: u64,
        tensors: &BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        let _g = tch::no_grad_guard();
        for (i, p) in self.params.iter().enumerate() {
            for (which, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{which}.{}", p.name);
                let src = tensors
                    .get(&key)
                    .ok_or_else(|| format!("missing optimizer tensor `{key}`"))?;
                if src.size() != dst.size() {
                    return Err(format!(
                        "optimizer tensor `{key}`: shape {:?}, expected {:?}",
                        src.size(),
                        dst.size()
                    ));
                }
                dst.copy_(src);
            }
        }
        self.t = t;
        // Per-parameter update counts (checkpoints without them: every parameter saw `t`).
        let key = format!("{prefix}.steps");
        self.steps = match tensors.get(&key) {
            None => vec![t; self.params.len()],
            Some(s) => {
                let v = Vec::<i64>::try_from(s.to_kind(Kind::Int64).reshape([-1]))
                    .map_err(|e| format!("optimizer tensor `{key}`: {e}"))?;
                if v.len() != self.params.len() {
                    return Err(format!(
                        "optimizer tensor `{key}`: {} counts for {} parameters",
                        v.len(),
                        self.params.len()
                    ));
                }
                v.into_iter().map(|s| s.max(0) as u64).collect()
            }
        };
        Ok(())
    }
}

/// The AdamW update of `torch.optim.AdamW` (non-fused) on 1-D buffers `(p, m, v, g)`, where
/// weight decay applies to `p[..n_decay]`:
/// `m = lerp(m, g, 1 - b1)`, `v = lerp(v, g^2, 1 - b2)`, `p *= 1 - lr wd`,
/// `p -= lr / bc1 * m / (sqrt(v / bc2) + eps)`.
fn adamw_update(
    (p, m, v, g): (&mut Tensor, &mut Tensor, &mut Tensor, &Tensor),
    n_decay: i64,
    lr: f64,
    (beta1, beta2, eps, wd): (f64, f64, f64, f64),
    (bc1, bc2): (f64, f64),
) {
    let _ = m.lerp_(g, 1.0 - beta1);
    let _ = v.lerp_(&g.square(), 1.0 - beta2);
    if wd > 0.0 && n_decay > 0 {
        let _ = p.narrow(0, 0, n_decay).g_mul_scalar_(1.0 - lr * wd);
    }
    let mut denom = v.g_mul_scalar(1.0 / bc2);
    let _ = denom.sqrt_().g_add_scalar_(eps);
    let _ = p.addcdiv_(&m.g_mul_scalar(-lr / bc1), &denom);
}
