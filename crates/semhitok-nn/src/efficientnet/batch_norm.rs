//! BatchNorm2d over VarStore variables with PyTorch's names (EfficientNet, the PatchGAN).

use crate::error::Result;
use crate::role::Role;
use tch::nn;
use tch::Tensor;

/// BatchNorm2d with PyTorch's state-dict names (`weight`, `bias`, `running_mean`, `running_var`,
/// `num_batches_tracked`) so checkpoints load strictly.
#[derive(Debug)]
pub(crate) struct BatchNorm2d {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) running_mean: Tensor,
    pub(super) running_var: Tensor,
    num_batches_tracked: Tensor,
    pub(super) eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// `weight_init`: PyTorch uses ones; taming's `weights_init` draws N(1, 0.02).
    pub(crate) fn new(
        vs: nn::Path<'_>,
        c: i64,
        eps: f64,
        momentum: f64,
        weight_init: nn::Init,
    ) -> Self {
        // The affine scale and shift: plain f32, never decayed.
        let vs = Role::Plain.on(&vs);
        Self {
            num_batches_tracked: vs.zeros_no_train("num_batches_tracked", &[]),
            weight: vs.var("weight", &[c], weight_init),
            bias: vs.zeros("bias", &[c]),
            running_mean: vs.zeros_no_train("running_mean", &[c]),
            running_var: vs.ones_no_train("running_var", &[c]),
            eps,
            momentum,
        }
    }

    /// xs: [B, C, H, W] -> [B, C, H, W]; `train` uses batch statistics and updates the running ones.
    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            let _count =
                tch::no_grad(|| self.num_batches_tracked.shallow_clone().f_add_scalar_(1.0))?;
        }
        Ok(xs.f_batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.momentum,
            self.eps,
            false,
        )?)
    }
}
