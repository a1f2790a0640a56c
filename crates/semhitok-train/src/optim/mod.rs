//! The trainer's optimizer state: AdamW with savable state over one flat buffer (`adamw`, with
//! the flat layout and its bf16 working copy in `flat`, the bf16 gradients' move into the f32
//! buffer in `grad16`, the one-kernel CUDA step in `adamw_fused`, the squared norms of the flat buffers in `sumsq`),
//! the warmup + cosine schedule
//! (`schedule`) and the EMA of weights (`ema`).
//!
//! tch's `nn::Optimizer` keeps its moments inside LibTorch with no way to read them back, so a
//! checkpoint could not hold them and `--resume` could not be exact. This AdamW keeps `m`, `v`
//! and the step count as plain named tensors, and follows `torch.optim.AdamW` (decoupled weight
//! decay, bias-corrected moments, `eps` added after the square root) operation for operation.

mod adamw;
pub mod adamw_fused;
mod ema;
mod flat;
pub mod grad16;
mod schedule;
pub mod sumsq;

pub use adamw::AdamW;
pub use ema::Ema;
pub use flat::bf16_members;
pub use schedule::lr_at;

pub use semhitok_nn::role::Role;
use tch::Tensor;

/// One named parameter the optimizer updates.
#[derive(Debug)]
pub struct Param {
    /// Full VarStore name (also the key of its moments in a checkpoint).
    pub name: String,
    /// The variable (shares storage with the VarStore's).
    pub var: Tensor,
    /// What the optimizer does with it (weight decay, bf16 working copy), declared where the
    /// layer created it ([`semhitok_nn::role`]).
    pub role: Role,
}

impl Param {
    /// Whether weight decay applies (matrices and kernels; never biases, norms, position
    /// embeddings, codebooks or token embeddings).
    pub fn decays(&self) -> bool {
        self.role.decays()
    }
}
