//! The LLM's NVRTC kernels (`gemv.cu`, `fused.cu`) on the workspace's shared kernel helpers
//! (`semhitok_nn::cuda::kernel`), with this crate's error.

use crate::error::{Error, Result};
use semhitok_nn::cuda::driver::CudaError;
use semhitok_nn::cuda::kernel;
use std::ffi::c_void;
use tch::Tensor;

pub(super) use kernel::switched_on;

fn cerr(e: CudaError) -> Error {
    Error::Config(e.0)
}

/// Compile `source` for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub(super) fn compile(source: &str, file: &str, arch: u32) -> Result<(Vec<u8>, String)> {
    kernel::compile(source, file, arch).map_err(cerr)
}

/// The CUDA device of `ts` when all are contiguous, 16-byte aligned bf16 tensors there without
/// gradient.
pub(super) fn bf16_cuda_case(ts: &[&Tensor]) -> Option<i32> {
    kernel::bf16_cuda_case(ts)
}

/// [`kernel::launch`] with this crate's error.
///
/// # Safety
/// As [`kernel::launch`].
pub(super) unsafe fn launch(
    ordinal: i32,
    source: &'static str,
    file: &'static str,
    name: &'static str,
    grid: u32,
    block: u32,
    args: &mut [*mut c_void],
) -> Result<()> {
    // SAFETY: the caller's contract.
    unsafe { kernel::launch(ordinal, source, file, name, grid, block, args) }.map_err(cerr)
}
