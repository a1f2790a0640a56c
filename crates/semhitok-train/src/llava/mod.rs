//! LLaVA-1.5 on SemHiTok features: the Fashion-MNIST LLaVA-format set ([`fmnist`]).

pub mod fmnist;
pub mod model;
