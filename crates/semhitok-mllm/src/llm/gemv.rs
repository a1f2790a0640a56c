//! One bf16 row through a linear layer on CUDA (`gemv.cu`, NVRTC): the batch-1 decode products,
//! which cuBLAS runs at 74 % of the H200's HBM bandwidth (docs/benchmarks/llm.md). Launched on
//! LibTorch's current stream, so it is ordered with LibTorch's work and captured by the CUDA-graph
//! decode step. `SEMHITOK_CUDA_GEMV=0` keeps cuBLAS (for before/after comparisons).

use crate::error::Result;
use semhitok_nn::cuda::kernel::{self, arg, bf16_cuda_case, launch, Switch};
use std::ffi::c_void;
use tch::{Kind, Tensor};

const SOURCE: &str = include_str!("gemv.cu");

/// Whether the kernel is switched on (`SEMHITOK_CUDA_GEMV=0` turns it off).
pub fn enabled() -> bool {
    static SWITCH: Switch = Switch::new("SEMHITOK_CUDA_GEMV", true);
    SWITCH.enabled()
}

/// Compile the kernel for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub fn compile(arch: u32) -> Result<(Vec<u8>, String)> {
    Ok(kernel::compile(SOURCE, "gemv.cu", arch)?)
}

/// `x W^T (+ b)` for x of one bf16 row on CUDA (any leading shape of product 1), w [n, k] bf16
/// contiguous, b [n] bf16; `None` when the case is not this kernel's (other kinds or devices,
/// gradients, k % 8 != 0, misaligned views, switched off), so the caller takes cuBLAS.
pub fn gemv_row(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    let s = w.size();
    // (The kind first: a contiguous copy of an x that is not this kernel's case would be waste.)
    if !enabled()
        || !x.device().is_cuda()
        || x.kind() != Kind::BFloat16
        || s.len() != 2
        || x.numel() as i64 != s[1]
        || s[1] % 8 != 0
        || b.is_some_and(|b| b.kind() != Kind::BFloat16 || b.requires_grad() || !b.is_contiguous())
    {
        return Ok(None);
    }
    let x = x.f_contiguous()?;
    let Some(ordinal) = bf16_cuda_case(&[&x, w]) else {
        return Ok(None);
    };
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
        arg(&mut pw),
        arg(&mut px),
        arg(&mut pb),
        arg(&mut py),
        arg(&mut nn),
        arg(&mut k8),
    ];
    let blocks = ((n + 7) / 8) as u32;
    // SAFETY: (const uint4* w, const uint4* x, const unsigned short* bias, unsigned short* y,
    // int n, int k8) as gemv_bf16 declares; w [n, k] and x [k] contiguous bf16, 16-byte aligned
    // (checked), bias [n] bf16 or null, y [n] bf16 freshly allocated on the same device.
    unsafe {
        launch(
            ordinal,
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
