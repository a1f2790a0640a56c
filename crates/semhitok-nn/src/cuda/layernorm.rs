//! The frozen teacher's residual add + layer norm as one NVRTC kernel (`layernorm.cu`) for a
//! bf16 residual stream on CUDA, and its switch `SEMHITOK_FUSED_TEACHER=0`.

use super::driver::CudaError;
use super::kernel::{arg, bf16_cuda_case, cuda_case, launch, Switch};
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Kind, Tensor};

const SOURCE: &str = concat!(include_str!("bf16.cuh"), include_str!("layernorm.cu"));
/// Widest row the kernel holds in registers (128 threads x 8 values x `MAXV`).
const MAX_H: i64 = 128 * 8 * 4;

/// `SEMHITOK_FUSED_TEACHER=0` turns the kernel off.
static SWITCH: Switch = Switch::new("SEMHITOK_FUSED_TEACHER", true);
/// Kernels launched in this process (tests check the kernel ran, not LibTorch's ops).
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// How many fused add + layer norm kernels this process has launched.
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Whether the fused teacher steps are on (`SEMHITOK_FUSED_TEACHER=0` turns them off, as does
/// [`set_enabled`]).
pub fn enabled() -> bool {
    SWITCH.enabled()
}

/// Switch the fused teacher steps on or off for the process (before/after comparisons in one
/// run).
pub fn set_enabled(on: bool) {
    SWITCH.set(on);
}

/// Compile the kernel for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub fn compile(arch: u32) -> Result<(Vec<u8>, String), CudaError> {
    super::kernel::compile(SOURCE, "layernorm.cu", arch)
}

/// Fused `s = x + d` (or `s = x` without `d`) and `layer_norm(s) * gamma + beta` over the last
/// dimension H, for x, d [.., H] bf16 and gamma, beta [H] f32 on one CUDA device: `(s if
/// keep_sum and d is given, normed)`, both bf16. `None` when not the kernel's case (switched
/// off, other kinds or devices, not contiguous, a gradient needed, H not a multiple of 8 or above
/// 4096); the caller then runs LibTorch's ops.
pub fn add_layer_norm(
    x: &Tensor,
    d: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    keep_sum: bool,
) -> Result<Option<(Option<Tensor>, Tensor)>, CudaError> {
    let h = gamma.size().first().copied().unwrap_or(0);
    if !enabled()
        || h == 0
        || h % 8 != 0
        || h > MAX_H
        || gamma.size() != beta.size()
        || x.size().last() != Some(&h)
        || d.is_some_and(|d| d.size() != x.size())
    {
        return Ok(None);
    }
    let mut bf: Vec<&Tensor> = vec![x];
    bf.extend(d);
    let (Some(o), Some(og)) = (bf16_cuda_case(&bf), cuda_case(&[gamma, beta], Kind::Float)) else {
        return Ok(None);
    };
    if o != og {
        return Ok(None);
    }
    let wrap = |e: tch::TchError| CudaError(format!("layernorm.cu: {e}"));
    let y = Tensor::f_empty(x.size().as_slice(), (Kind::BFloat16, x.device())).map_err(wrap)?;
    let xo = match (d, keep_sum) {
        (Some(_), true) => {
            Some(Tensor::f_empty(x.size().as_slice(), (Kind::BFloat16, x.device())).map_err(wrap)?)
        }
        _ => None,
    };
    let rows = (x.numel() as i64 / h) as u32;
    if rows == 0 {
        return Ok(Some((xo, y)));
    }
    let null = std::ptr::null_mut::<c_void>();
    let (mut px, mut pd, mut pg, mut pb, mut pxo, mut py) = (
        x.data_ptr(),
        d.map_or(null, Tensor::data_ptr),
        gamma.data_ptr(),
        beta.data_ptr(),
        xo.as_ref().map_or(null, Tensor::data_ptr),
        y.data_ptr(),
    );
    let (mut h8, mut e) = ((h / 8) as i32, eps as f32);
    let mut args: [*mut c_void; 8] = [
        arg(&mut px),
        arg(&mut pd),
        arg(&mut pg),
        arg(&mut pb),
        arg(&mut pxo),
        arg(&mut py),
        arg(&mut h8),
        arg(&mut e),
    ];
    // SAFETY: (const uint4* x, d, const float4* gamma, beta, uint4* xo, y, int h8, float eps) as
    // add_layernorm_bf16 declares; x, d [rows, H] contiguous aligned bf16 and gamma, beta [H]
    // contiguous aligned f32 on device `o` (checked); xo, y fresh [rows, H] bf16 or null.
    unsafe {
        launch(
            o,
            SOURCE,
            "layernorm.cu",
            "add_layernorm_bf16",
            rows,
            128,
            &mut args,
        )?
    };
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    Ok(Some((xo, y)))
}
