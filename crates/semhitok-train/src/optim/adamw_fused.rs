//! AdamW (and the gradient clip before it) over the flat f32 buffers as one NVRTC kernel on CUDA
//! (`adamw_fused.cu`): the same arithmetic as [`super::adamw`]'s LibTorch ops, rounding for
//! rounding. `SEMHITOK_FUSED_ADAMW=0` keeps LibTorch's ops.

use semhitok_nn::cuda::kernel::{arg, cuda_case, launch, Latch, Switch};
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Kind, Tensor};

const SOURCE: &str = include_str!("adamw_fused.cu");

/// Set once the kernel failed to compile or launch.
static BROKEN: Latch = Latch::new();
/// `SEMHITOK_FUSED_ADAMW=0` turns the fused step off.
static SWITCH: Switch = Switch::new("SEMHITOK_FUSED_ADAMW", true);
/// Fused steps launched in this process (tests check the kernel ran, not the fallback).
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// How many fused steps this process has launched.
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Compile the kernel for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub fn compile(arch: u32) -> Result<(Vec<u8>, String), semhitok_nn::cuda::driver::CudaError> {
    semhitok_nn::cuda::kernel::compile(SOURCE, "adamw_fused.cu", arch)
}

/// Whether the fused step is switched on (`SEMHITOK_FUSED_ADAMW=0` turns it off, as does
/// [`set_enabled`]) and has not failed.
pub fn enabled() -> bool {
    SWITCH.enabled() && !BROKEN.tripped()
}

/// Switch the fused step on or off for the process (before/after comparisons in one run).
pub fn set_enabled(on: bool) {
    SWITCH.set(on);
}

/// The scalars of one step, as the LibTorch path computes them (in f64, cast once).
pub(super) struct StepScalars {
    /// Gradient scale of the clip, if it clips.
    pub clip: Option<f64>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `1 - lr * weight_decay`.
    pub decay: f64,
    /// `1 - beta2^t`.
    pub bc2: f64,
    /// `-lr / (1 - beta1^t)`.
    pub step: f64,
}

/// One fused step over p, g, m, v [n] f32 (contiguous, one CUDA device), decay on `[0, n_decay)`.
/// `false` (nothing done) when not the kernel's case or when it failed; the caller then runs the
/// LibTorch ops.
pub(super) fn step(
    (p, m, v, g): (&Tensor, &Tensor, &Tensor, &Tensor),
    n_decay: i64,
    s: &StepScalars,
) -> bool {
    if !enabled() {
        return false;
    }
    let n = p.numel() as i64;
    let Some(o) = cuda_case(&[p, m, v, g], Kind::Float) else {
        return false;
    };
    if [m, v, g].iter().any(|t| t.numel() as i64 != n) || n == 0 {
        return false;
    }
    let (mut pp, mut pg, mut pm, mut pv) = (p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr());
    let (mut len, mut nd) = (n, n_decay.clamp(0, n));
    let mut clip = s.clip.unwrap_or(1.0) as f32;
    let mut has_clip = i32::from(s.clip.is_some());
    let mut w1 = (1.0 - s.beta1) as f32;
    let mut w2 = (1.0 - s.beta2) as f32;
    let mut decay = s.decay as f32;
    let mut inv_bc2 = (1.0 / s.bc2) as f32;
    let mut eps = s.eps as f32;
    let mut st = s.step as f32;
    let mut args: [*mut c_void; 14] = [
        arg(&mut pp),
        arg(&mut pg),
        arg(&mut pm),
        arg(&mut pv),
        arg(&mut len),
        arg(&mut nd),
        arg(&mut clip),
        arg(&mut has_clip),
        arg(&mut w1),
        arg(&mut w2),
        arg(&mut decay),
        arg(&mut inv_bc2),
        arg(&mut eps),
        arg(&mut st),
    ];
    let blocks = ((n + 1023) / 1024) as u32;
    // SAFETY: the parameter list of adamw_flat (4 float pointers, long long n, n_decay, float
    // clip, int has_clip, 6 floats), in order; p, g, m, v [n] contiguous f32 on device `o`
    // (checked), alive for the launch (stream-ordered allocator).
    let r = unsafe {
        launch(
            o,
            SOURCE,
            "adamw_fused.cu",
            "adamw_flat",
            blocks,
            256,
            &mut args,
        )
    };
    match r {
        Ok(()) => {
            LAUNCHES.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(e) => {
            BROKEN.trip("adamw_fused.cu", &e);
            false
        }
    }
}
