//! Parameter roles: what an optimizer does with a trained tensor (weight decay, a bf16 working
//! copy), declared where the layer creates it instead of guessed from its name.
//!
//! A role is recorded beside the VarStore path as the variable's tch group
//! ([`tch::nn::Path::set_group`], through [`Role::on`]): the constructors of [`crate::layers`]
//! create a matrix and its bias under [`Role::Matrix`] / [`Role::MatrixBias`], norms, position
//! embeddings and codebooks under [`Role::Plain`]. [`roles`] reads them back by VarStore name.
//! tch's default group, 0, is [`Role::Plain`]: a variable created without a declaration is never
//! decayed and stays f32, the safe side (a missed declaration costs speed, never a wrong update).
//! `set_group` is called nowhere but [`Role::on`] (checked by a source scan in
//! `xtask/tests/layering.rs`), so every group a VarStore holds is one of [`Role`]'s.
//!
//! Tensors that no VarStore creates (the LLM's, loaded from safetensors) declare their role
//! where their model assembles them (semhitok-mllm `LmParam::role`).

use std::collections::BTreeMap;
use tch::nn;
use tch::Tensor;

/// What the optimizer does with a trained tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// No weight decay, kept in f32: norm scales and shifts, position embeddings, class tokens,
    /// codebooks, token embeddings and output heads (one row per token), BatchNorm affines.
    Plain,
    /// A weight matrix or convolution kernel: weight decay, and a bf16 working copy under bf16
    /// autocast (autocast computes the layer in bf16).
    Matrix,
    /// The bias of a [`Role::Matrix`] layer: no weight decay, in the bf16 copy with its matrix.
    MatrixBias,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Plain, Role::Matrix, Role::MatrixBias];

    /// Whether weight decay applies.
    pub fn decays(self) -> bool {
        self == Role::Matrix
    }

    /// Whether the tensor belongs in the bf16 working copy of bf16-autocast training.
    pub fn bf16_copy(self) -> bool {
        matches!(self, Role::Matrix | Role::MatrixBias)
    }

    /// The tch variable group that records the role.
    pub fn group(self) -> usize {
        match self {
            Role::Plain => 0,
            Role::Matrix => 1,
            Role::MatrixBias => 2,
        }
    }

    /// The role a tch variable group records (see the module docs: only [`Role::on`] sets
    /// groups, so every group is one of these; any other reads as [`Role::Plain`]).
    pub fn of_group(group: usize) -> Role {
        Role::ALL
            .into_iter()
            .find(|r| r.group() == group)
            .unwrap_or(Role::Plain)
    }

    /// `p` with this role: the variables created under the returned path carry it.
    pub fn on<'a>(self, p: &nn::Path<'a>) -> nn::Path<'a> {
        p.set_group(self.group())
    }
}

/// The role of every trainable variable of `vs` (frozen ones included), by VarStore name.
/// Buffers created as not trainable (`*_no_train`: EMA codebooks, BatchNorm running statistics)
/// have none.
pub fn roles(vs: &nn::VarStore) -> BTreeMap<String, Role> {
    let vars = vs
        .variables_
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let same = |a: &Tensor, b: &Tensor| {
        a.data_ptr() == b.data_ptr() && a.size() == b.size() && a.stride() == b.stride()
    };
    vars.named_variables
        .iter()
        .filter_map(|(name, t)| {
            vars.trainable_variables
                .iter()
                .find(|v| same(&v.tensor, t))
                .map(|v| (name.clone(), Role::of_group(v.group)))
        })
        .collect()
}

/// The trainable variables of `vs` (those with `requires_grad`) with their roles, by name.
pub fn trainable(vs: &nn::VarStore) -> Vec<(String, Tensor, Role)> {
    let roles = roles(vs);
    let mut v: Vec<(String, Tensor, Role)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(name, t)| {
            let role = roles.get(&name).copied().unwrap_or(Role::Plain);
            (name, t, role)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
