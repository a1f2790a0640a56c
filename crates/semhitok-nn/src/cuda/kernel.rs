//! What every elementwise NVRTC kernel of the workspace shares (this crate's fused teacher
//! steps, semhitok-train's gradient conversion, semhitok-mllm's decode GEMV and fused steps):
//! the compile check, the launch on LibTorch's current stream, the on/off switches and the
//! tensor conditions of the bf16 case.

use super::driver::{driver, nvrtc, CudaError};
use super::nearest::function;
use std::ffi::c_void;
use tch::{Device, Kind, Tensor};

/// Compile `source` for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub fn compile(source: &str, file: &str, arch: u32) -> Result<(Vec<u8>, String), CudaError> {
    nvrtc()
        .and_then(|n| n.compile(source, file, arch, &[], &["--ptxas-options=-v"]))
        .map_err(|e| CudaError(format!("{file}: {e}")))
}

/// Whether environment variable `var` leaves a kernel on (anything but `0`, or unset).
pub fn switched_on(var: &str) -> bool {
    std::env::var(var).map_or(true, |v| v != "0")
}

/// The CUDA device of `ts` when all are contiguous, 16-byte aligned tensors of `kind` there
/// without gradient.
pub fn cuda_case(ts: &[&Tensor], kind: Kind) -> Option<i32> {
    let Device::Cuda(o) = ts.first()?.device() else {
        return None;
    };
    ts.iter()
        .all(|t| {
            t.device() == Device::Cuda(o)
                && t.kind() == kind
                && t.is_contiguous()
                && !t.requires_grad()
                && (t.data_ptr() as usize) % 16 == 0
        })
        .then_some(o as i32)
}

/// [`cuda_case`] for bf16 tensors.
pub fn bf16_cuda_case(ts: &[&Tensor]) -> Option<i32> {
    cuda_case(ts, Kind::BFloat16)
}

/// Launches entry `name` of `source` (compiled once per process and device) with `grid` blocks of
/// `block` threads on LibTorch's current stream of device `ordinal`: ordered with LibTorch's
/// work, and captured by a running CUDA-graph capture. The tensors behind `args` stay valid
/// until the kernel ran as long as they are alive at the call (the caching allocator reuses
/// memory only in stream order).
///
/// # Safety
/// `args` must point to values of exactly the kernel's parameter types, in order, and every
/// device pointer among them must be valid for what the kernel reads and writes.
pub unsafe fn launch(
    ordinal: i32,
    source: &'static str,
    file: &'static str,
    name: &'static str,
    grid: u32,
    block: u32,
    args: &mut [*mut c_void],
) -> Result<(), CudaError> {
    // SAFETY: the caller's contract.
    unsafe { launch_grid(ordinal, source, file, name, (grid, 1, 1), block, args) }
}

/// [`launch`] with a 3-d grid.
///
/// # Safety
/// As [`launch`].
pub unsafe fn launch_grid(
    ordinal: i32,
    source: &'static str,
    file: &'static str,
    name: &'static str,
    grid: (u32, u32, u32),
    block: u32,
    args: &mut [*mut c_void],
) -> Result<(), CudaError> {
    let cerr = |e: CudaError| CudaError(format!("{file}: {e}"));
    let f = function(ordinal, source, file, name, "", 0).map_err(cerr)?;
    let stream = semhitok_sys::current_cuda_stream(ordinal);
    // SAFETY: the caller's contract; `stream` is LibTorch's current stream on the device.
    unsafe {
        driver()
            .map_err(cerr)?
            .launch_on(f, grid, (block, 1, 1), args, stream)
            .map_err(cerr)
    }
}
