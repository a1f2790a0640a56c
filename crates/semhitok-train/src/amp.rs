//! bf16 autocast on CUDA: semhitok-nn's [`set_cuda_autocast_bf16`] (the autocast FFI lives in
//! one place, `semhitok_nn::amp`).

pub use semhitok_nn::amp::set_cuda_autocast_bf16;
