//! LLaVA: the Fashion-MNIST LLaVA-format set, training, answering, export.

mod fmnist;
pub(crate) mod training;
