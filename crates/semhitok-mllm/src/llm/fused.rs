//! Fused decoder steps for bf16 on CUDA (`fused.cu`, NVRTC): the residual add with the RMSNorm
//! that follows it, and SiLU(gate) x up. Each replaces two LibTorch kernels (and a round trip of
//! the activations through memory) with the same roundings; used by the decode steps and the
//! prefill. `SEMHITOK_CUDA_FUSED=0` keeps LibTorch's kernels.

use crate::error::Result;
use semhitok_nn::cuda::kernel::{self, arg, bf16_cuda_case, launch, Switch};
use std::ffi::c_void;
use tch::{Kind, Tensor};

/// `fused.cu` after semhitok-nn's bf16 helpers.
static SOURCE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{}{}", kernel::BF16_CUH, include_str!("fused.cu")));

/// Whether the kernels are switched on (`SEMHITOK_CUDA_FUSED=0` turns them off).
pub fn enabled() -> bool {
    static SWITCH: Switch = Switch::new("SEMHITOK_CUDA_FUSED", true);
    SWITCH.enabled()
}

/// Compile the kernels for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub fn compile(arch: u32) -> Result<(Vec<u8>, String)> {
    Ok(kernel::compile(&SOURCE, "fused.cu", arch)?)
}

/// The CUDA device of `ts` when the kernels are on and `ts` are their kind of tensors.
fn cuda_case(ts: &[&Tensor]) -> Option<i32> {
    if !enabled() {
        return None;
    }
    bf16_cuda_case(ts)
}

/// `(x + d, rms_norm(x + d) * w)` for x, d [.., H], w [H]: `None` when not the kernels' case
/// (then the caller runs LibTorch's add and rms_norm).
pub fn add_rmsnorm(
    x: &Tensor,
    d: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<Option<(Tensor, Tensor)>> {
    let h = w.size().first().copied().unwrap_or(0);
    if x.size() != d.size() || x.size().last() != Some(&h) || h % 8 != 0 || h == 0 {
        return Ok(None);
    }
    let Some(o) = cuda_case(&[x, d, w]) else {
        return Ok(None);
    };
    let rows = (x.numel() as i64 / h) as u32;
    let xo = Tensor::f_empty(x.size().as_slice(), (Kind::BFloat16, x.device()))?;
    let y = Tensor::f_empty(x.size().as_slice(), (Kind::BFloat16, x.device()))?;
    if rows == 0 {
        return Ok(Some((xo, y)));
    }
    let (mut px, mut pd, mut pw, mut pxo, mut py) = (
        x.data_ptr(),
        d.data_ptr(),
        w.data_ptr(),
        xo.data_ptr(),
        y.data_ptr(),
    );
    let (mut h8, mut e) = ((h / 8) as i32, eps as f32);
    let mut args: [*mut c_void; 7] = [
        arg(&mut px),
        arg(&mut pd),
        arg(&mut pw),
        arg(&mut pxo),
        arg(&mut py),
        arg(&mut h8),
        arg(&mut e),
    ];
    // SAFETY: (const uint4* x, d, w, uint4* xo, y, int h8, float eps) as add_rmsnorm_bf16
    // declares; x, d [rows, H] and w [H] contiguous, aligned bf16 (checked), xo, y fresh [rows, H].
    unsafe {
        launch(
            o,
            SOURCE.as_str(),
            "fused.cu",
            "add_rmsnorm_bf16",
            rows,
            256,
            &mut args,
        )?
    };
    Ok(Some((xo, y)))
}

/// `silu(gu[.., :f]) * gu[.., f:]` for gu [.., 2f]: `None` when not the kernel's case.
pub fn silu_mul(gu: &Tensor, f: i64) -> Result<Option<Tensor>> {
    if gu.size().last() != Some(&(2 * f)) || f % 8 != 0 || f == 0 {
        return Ok(None);
    }
    let Some(o) = cuda_case(&[gu]) else {
        return Ok(None);
    };
    let mut shape = gu.size();
    if let Some(l) = shape.last_mut() {
        *l = f;
    }
    let out = Tensor::f_empty(shape.as_slice(), (Kind::BFloat16, gu.device()))?;
    let total8 = out.numel() as i64 / 8;
    if total8 == 0 {
        return Ok(Some(out));
    }
    let (mut pg, mut po) = (gu.data_ptr(), out.data_ptr());
    let (mut f8, mut t8) = ((f / 8) as i32, total8);
    let mut args: [*mut c_void; 4] = [arg(&mut pg), arg(&mut po), arg(&mut f8), arg(&mut t8)];
    let blocks = ((total8 + 255) / 256) as u32;
    // SAFETY: (const uint4* gu, uint4* out, int f8, long long total8) as silu_mul_bf16
    // declares; gu [rows, 2f] contiguous aligned bf16 (checked), out fresh [rows, f].
    unsafe {
        launch(
            o,
            SOURCE.as_str(),
            "fused.cu",
            "silu_mul_bf16",
            blocks,
            256,
            &mut args,
        )?
    };
    Ok(Some(out))
}
