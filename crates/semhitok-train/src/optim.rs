//! AdamW with savable state, warmup + cosine schedule, gradient clipping and an EMA of weights.
//!
//! tch's `nn::Optimizer` keeps its moments inside LibTorch with no way to read them back, so a
//! checkpoint could not hold them and `--resume` could not be exact. This AdamW keeps `m`, `v`
//! and the step count as plain named tensors, and follows `torch.optim.AdamW` (decoupled weight
//! decay, bias-corrected moments, `eps` added after the square root) operation for operation.

use crate::config::OptimConfig;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// One named parameter the optimizer updates.
#[derive(Debug)]
pub struct Param {
    /// Full VarStore name (also the key of its moments in a checkpoint).
    pub name: String,
    /// The variable (shares storage with the VarStore's).
    pub var: Tensor,
    /// Weight decay applies (false for biases, norms, embeddings of positions).
    pub decay: bool,
}

/// AdamW over a fixed list of parameters.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Number of updates done (bias correction uses it).
    pub t: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Whether a parameter name gets weight decay: matrices and conv kernels do; biases, norm
/// scales, position embeddings, class tokens and codebooks do not (the usual ViT/VQGAN recipe).
pub fn decays(name: &str, t: &Tensor) -> bool {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    t.dim() >= 2
        && !leaf.contains("bias")
        && !name.contains("norm")
        && !name.contains("pos_emb")
        && !name.contains("position")
        && !name.contains("cls_token")
        && !name.contains("codebook")
        && !name.contains("embedding")
}

impl AdamW {
    /// `params` sorted by name by the caller (determinism of the update order and of the file).
    pub fn new(params: Vec<Param>, cfg: &OptimConfig) -> Self {
        let m = params.iter().map(|p| p.var.zeros_like()).collect();
        let v = params.iter().map(|p| p.var.zeros_like()).collect();
        Self {
            params,
            m,
            v,
            t: 0,
            beta1: cfg.betas[0],
            beta2: cfg.betas[1],
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        }
    }

    /// The parameters, in update order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Set every gradient to zero (gradients are accumulated by backward).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.var.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// Global L2 norm of the gradients (parameters without a gradient count as zero).
    pub fn grad_norm(&self) -> f64 {
        // Summed on the device, read back once: one host sync per step instead of one per tensor.
        // Same f64 additions in the same order as a host-side sum, so CPU results are unchanged.
        let _g = tch::no_grad_guard();
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
        total.map_or(0.0, |t| t.double_value(&[])).sqrt()
    }

    /// Scale gradients so their global norm is at most `max_norm` (like
    /// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            let _g = tch::no_grad_guard();
            for p in &self.params {
                let mut g = p.var.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        norm
    }

    /// One AdamW update at learning rate `lr`. With `lr == 0` no parameter changes (bit for bit):
    /// the decay factor is exactly 1 and the update is scaled by exactly 0.
    pub fn step(&mut self, lr: f64) {
        let _g = tch::no_grad_guard();
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, p) in self.params.iter_mut().enumerate() {
            let g = p.var.grad();
            if !g.defined() {
                continue;
            }
            let g = g.to_kind(self.m[i].kind());
            let _ = self.m[i].g_mul_scalar_(self.beta1);
            let _ = self.m[i].g_add_(&(&g * (1.0 - self.beta1)));
            let _ = self.v[i].g_mul_scalar_(self.beta2);
            let _ = self.v[i].g_add_(&(&g * &g * (1.0 - self.beta2)));
            if p.decay && self.weight_decay > 0.0 {
                let _ = p.var.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let denom = (&self.v[i] / bc2).sqrt() + self.eps;
            let upd = (&self.m[i] / &denom) * (lr / bc1);
            let _ = p.var.g_sub_(&upd);
        }
    }

    /// The optimizer state as named tensors under `prefix` (`{prefix}.m.{name}`, `{prefix}.v.{name}`).
    pub fn state_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            out.push((format!("{prefix}.m.{}", p.name), self.m[i].shallow_clone()));
            out.push((format!("{prefix}.v.{}", p.name), self.v[i].shallow_clone()));
        }
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
        Ok(())
    }
}

/// Learning rate at optimizer step `step` (0-based): linear warmup from 0 over `warmup` steps,
/// then cosine from `base` down to `base * min_ratio` at `total` steps.
pub fn lr_at(step: u64, base: f64, warmup: u64, total: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    base * (min_ratio + (1.0 - min_ratio) * cos)
}

/// Exponential moving average of a set of weights: `ema = decay * ema + (1 - decay) * w`.
#[derive(Debug)]
pub struct Ema {
    pub decay: f64,
    /// (name, shadow copy, live variable)
    pub entries: Vec<(String, Tensor, Tensor)>,
}

impl Ema {
    /// Shadow copies of `vars` (name, live variable).
    pub fn new(decay: f64, vars: Vec<(String, Tensor)>) -> Self {
        let _g = tch::no_grad_guard();
        let entries = vars
            .into_iter()
            .map(|(n, v)| {
                let shadow = v.detach().copy();
                (n, shadow, v)
            })
            .collect();
        Self { decay, entries }
    }

    /// Blend the live weights into the shadow copies.
    pub fn update(&mut self) {
        let _g = tch::no_grad_guard();
        for (_, shadow, live) in &mut self.entries {
            let _ = shadow.g_mul_scalar_(self.decay);
            let _ = shadow.g_add_(&(live.detach() * (1.0 - self.decay)));
        }
    }

    /// Named shadow tensors (keys `ema.{name}`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|(n, s, _)| (format!("ema.{n}"), s.shallow_clone()))
            .collect()
    }

    /// Restore shadow tensors saved by [`Ema::state_tensors`].
    pub fn load_state(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        let _g = tch::no_grad_guard();
        for (n, s, _) in &mut self.entries {
            let key = format!("ema.{n}");
            let src = tensors
                .get(&key)
                .ok_or_else(|| format!("missing EMA tensor `{key}`"))?;
            s.copy_(src);
        }
        Ok(())
    }
}
