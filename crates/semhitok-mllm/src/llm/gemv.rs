//! One bf16 row through a linear layer on CUDA (`gemv.cu`, NVRTC): the batch-1 decode products,
//! which cuBLAS runs at 74 % of the H200's HBM bandwidth (docs/benchmarks/llm.md). Launched on
//! LibTorch's current stream, so it is ordered with LibTorch's work and captured by the CUDA-graph
//! decode step. `SEMHITOK_CUDA_GEMV=0` keeps cuBLAS (for before/after comparisons).

use crate::error::{Error, Result};
use semhitok_nn::cuda::driver::driver;
use semhitok_nn::cuda::nearest::function;
use std::ffi::c_void;
use tch::{Device, Kind, Tensor};

const SOURCE: &str = include_str!("gemv.cu");

/// Launches entry `name` of `source` (compiled once per process and device) with `grid` blocks of
/// `block` threads on LibTorch's current stream of device `ordinal`: ordered with LibTorch's
/// work, and captured by a running CUDA-graph capture. The tensors behind `args` stay valid
/// until the kernel ran as long as they are alive at the call (the caching allocator reuses
/// memory only in stream order).
///
/// # Safety
/// `args` must point to values of exactly the kernel's parameter types, in order, and every
/// device pointer among them must be valid for what the kernel reads and writes.
pub(super) unsafe fn launch(
    ordinal: i32,
    source: &'static str,
    file: &'static str,
    name: &'static str,
    grid: u32,
    block: u32,
    args: &mut [*mut c_void],
) -> Result<()> {
    let cerr = |e: semhitok_nn::cuda::driver::CudaError| Error::Config(format!("{file}: {e}"));
    let f = function(ordinal, source, file, name, "", 0).map_err(cerr)?;
    let stream = semhitok_sys::current_cuda_stream(ordinal);
    // SAFETY: the caller's contract; `stream` is LibTorch's current stream on the device.
    unsafe {
        driver()
            .map_err(cerr)?
            .launch_on(f, (grid, 1, 1), (block, 1, 1), args, stream)
            .map_err(cerr)
    }
}

/// Whether the kernel is switched on (`SEMHITOK_CUDA_GEMV=0` turns it off).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SEMHITOK_CUDA_GEMV").map_or(true, |v| v != "0"))
}

/// Compile the kernel for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub fn compile(arch: u32) -> Result<(Vec<u8>, String)> {
    semhitok_nn::cuda::driver::nvrtc()
        .and_then(|n| n.compile(SOURCE, "gemv.cu", arch, &[], &["--ptxas-options=-v"]))
        .map_err(|e| Error::Config(format!("gemv.cu: {e}")))
}

/// `x W^T (+ b)` for x of one bf16 row on CUDA (any leading shape of product 1), w [n, k] bf16
/// contiguous, b [n] bf16; `None` when the case is not this kernel's (other kinds or devices,
/// gradients, k % 8 != 0, misaligned views, switched off), so the caller takes cuBLAS.
pub fn gemv_row(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    let Device::Cuda(ordinal) = x.device() else {
        return Ok(None);
    };
    let s = w.size();
    if !enabled()
        || x.kind() != Kind::BFloat16
        || w.kind() != Kind::BFloat16
        || s.len() != 2
        || x.numel() as i64 != s[1]
        || s[1] % 8 != 0
        || x.requires_grad()
        || w.requires_grad()
        || !w.is_contiguous()
        || b.is_some_and(|b| b.kind() != Kind::BFloat16 || b.requires_grad() || !b.is_contiguous())
    {
        return Ok(None);
    }
    let x = x.f_contiguous()?;
    if (x.data_ptr() as usize) % 16 != 0 || (w.data_ptr() as usize) % 16 != 0 {
        return Ok(None);
    }
    let (n, k) = (s[0], s[1]);
    let mut shape = x.size();
    if let Some(l) = shape.last_mut() {
        *l = n;
    }
    let y = Tensor::f_empty(shape.as_slice(), (Kind::BFloat16, x.device()))?;
    let (mut pw, mut px, mut py) = (w.data_ptr(), x.data_ptr(), y.data_ptr());
    let mut pb = b.map_or(std::ptr::null_mut(), |b| b.data_ptr());
    let (mut nn, mut k8) = (n as i32, (k / 8) as i32);
    let mut args: [*mut c_void; 6] = [
        &mut pw as *mut _ as *mut c_void,
        &mut px as *mut _ as *mut c_void,
        &mut pb as *mut _ as *mut c_void,
        &mut py as *mut _ as *mut c_void,
        &mut nn as *mut _ as *mut c_void,
        &mut k8 as *mut _ as *mut c_void,
    ];
    let blocks = ((n + 7) / 8) as u32;
    // SAFETY: (const uint4* w, const uint4* x, const unsigned short* bias, unsigned short* y,
    // int n, int k8) as gemv_bf16 declares; w [n, k] and x [k] contiguous bf16, 16-byte aligned
    // (checked), bias [n] bf16 or null, y [n] bf16 freshly allocated on the same device.
    unsafe {
        launch(
            ordinal as i32,
            SOURCE,
            "gemv.cu",
            "gemv_bf16",
            blocks,
            256,
            &mut args,
        )?
    };
    Ok(Some(y))
}
