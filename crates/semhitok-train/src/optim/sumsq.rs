//! The squared l2 norm of a flat f32 buffer (the optimizer's gradient and parameter buffers) as
//! a 0-d f64 tensor on its device, without a host sync: two NVRTC kernels (`sumsq.cu`) on CUDA
//! instead of LibTorch's square, fp64 copy and fp64 sum (2.85 ms per batch-32 `pre` step on the
//! H200 for its two calls, in Nsight Compute; 0.31 ms with the kernels). The same fp32 squares
//! summed in fp64, in another (fixed) order: within 1e-12 relative of LibTorch and bit-identical
//! from run to run on the H200 (CUDA test `fused_norms_match_libtorch_on_cuda`). On by default;
//! `SEMHITOK_FUSED_NORMS=0` restores LibTorch's ops.

use semhitok_nn::cuda::kernel::{arg, cuda_case, launch, Latch, Switch};
use std::ffi::c_void;
use tch::{Kind, Tensor};

const SOURCE: &str = include_str!("sumsq.cu");
const FILE: &str = "sumsq.cu";
/// Blocks of the first pass (fixed: the sum's order does not depend on the device).
const SUMSQ_BLOCKS: i64 = 1024;

/// Set once a kernel failed to compile or launch.
static BROKEN: Latch = Latch::new();
/// `SEMHITOK_FUSED_NORMS=0` turns them off.
static SWITCH: Switch = Switch::new("SEMHITOK_FUSED_NORMS", true);

/// Whether the kernels are on (the default; `SEMHITOK_FUSED_NORMS=0` or [`set_enabled`] turn
/// them off).
pub fn enabled() -> bool {
    SWITCH.enabled()
}

/// Switch the kernels on or off for the process.
pub fn set_enabled(on: bool) {
    SWITCH.set(on);
}

/// Compile the kernels for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub fn compile(arch: u32) -> Result<(Vec<u8>, String), semhitok_nn::cuda::driver::CudaError> {
    semhitok_nn::cuda::kernel::compile(SOURCE, FILE, arch)
}

/// `sum(x * x)` over a 1-d contiguous f32 tensor, each square rounded in f32, summed in f64: a
/// 0-d f64 tensor on x's device. The kernels on CUDA when on, else `x.square().sum(kDouble)`.
pub fn sum_sq_f64(x: &Tensor) -> Tensor {
    let _g = tch::no_grad_guard();
    let n = x.numel() as i64;
    let case = cuda_case(&[x], Kind::Float).filter(|_| enabled() && !BROKEN.tripped() && n > 0);
    if let Some(o) = case {
        match launch_both(o, x, n) {
            Ok(t) => return t,
            Err(e) => BROKEN.trip(FILE, &e),
        }
    }
    x.square().sum(Kind::Double)
}

fn launch_both(o: i32, x: &Tensor, n: i64) -> Result<Tensor, semhitok_nn::cuda::driver::CudaError> {
    let terr = |e: tch::TchError| semhitok_nn::cuda::driver::CudaError(e.to_string());
    let dev = x.device();
    let part = Tensor::f_empty([SUMSQ_BLOCKS], (Kind::Double, dev)).map_err(terr)?;
    let out = Tensor::f_empty([], (Kind::Double, dev)).map_err(terr)?;
    let (mut px, mut len, mut pp) = (x.data_ptr(), n, part.data_ptr());
    let mut args: [*mut c_void; 3] = [arg(&mut px), arg(&mut len), arg(&mut pp)];
    // SAFETY: (const float4* x, long long n, double* part) as sumsq_partial declares; x [n]
    // contiguous, 16-byte aligned f32 on device `o` (cuda_case), part fresh [SUMSQ_BLOCKS] f64.
    unsafe {
        launch(
            o,
            SOURCE,
            FILE,
            "sumsq_partial",
            SUMSQ_BLOCKS as u32,
            256,
            &mut args,
        )
    }?;
    let (mut g, mut po) = (SUMSQ_BLOCKS as i32, out.data_ptr());
    let mut args: [*mut c_void; 3] = [arg(&mut pp), arg(&mut g), arg(&mut po)];
    // SAFETY: (const double* part, int g, double* out) as sumsq_final declares; part written
    // above, out fresh 0-d f64.
    unsafe { launch(o, SOURCE, FILE, "sumsq_final", 1, 256, &mut args) }?;
    Ok(out)
}
