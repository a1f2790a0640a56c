//! Run-time-compiled CUDA kernels (NVRTC) for what LibTorch has no fused op for.
//!
//! [`driver`] loads NVRTC and the CUDA driver with `dlopen`; [`nearest`] is the fused
//! nearest-code search behind [`crate::quantizer::nearest_l2`] on CUDA (kernels v2, v3, the
//! tensor-core `tc` and `tc256`, and the default `tc1`: tensor-core scores, exact fp32 ids); [`sghc`] is SGHC's gathered sub-codebook search;
//! [`layernorm`] the frozen teacher's fused residual add + layer norm; [`vit_norm`] the trained
//! ViTs' layer norm (and the residual add before it) with its backward as one autograd node; [`linear`] the trained linear layers' node that writes
//! its weight and bias gradients straight into their bf16 gradient buffers; [`linear_gelu`] the same
//! for `fc1` + GELU, with the GELU backward and the bias sum in one pass; [`kernel`] the launch and
//! case helpers every elementwise kernel of the workspace shares. Kernels are compiled on
//! first use for the device's compute capability and cached for the process.

pub mod driver;
pub mod kernel;
pub mod layernorm;
pub mod linear;
pub mod linear_gelu;
pub mod nearest;
pub mod sghc;
pub mod vit_norm;
