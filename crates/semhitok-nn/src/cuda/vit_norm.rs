//! The trained ViTs' layer norm under bf16 autocast as one autograd node
//! ([`semhitok_sys::apply_custom`]) with NVRTC kernels for its forward and backward
//! (`vit_norm.cu`): the fp32 residual stream in, the bf16 operand of the next GEMM out; LibTorch's
//! `native_layer_norm` (+ cast) and `native_layer_norm_backward` where the kernels do not apply.
//! Off unless `SEMHITOK_FUSED_VIT_NORM=1` (or [`set_enabled`]): its CUDA kernels have not run on
//! a GPU yet (CUDA test `vit_norm_matches_libtorch_on_cuda` is ready for that).

use super::driver::CudaError;
use super::kernel::{arg, dense_on_one_cuda, launch, launch_grid, Switch};
use semhitok_sys::{apply_custom, CustomFunction};
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Device, Kind, Tensor};

const SOURCE: &str = concat!(include_str!("bf16.cuh"), include_str!("vit_norm.cu"));
const FILE: &str = "vit_norm.cu";
/// Widest row the kernels hold in registers (128 threads x 8 values x `MAXV`).
const MAX_H: i64 = 128 * 8 * 2;
/// Rows per column-partial chunk of the weight gradients.
const ROWS_PER: i64 = 32;

/// Off unless `SEMHITOK_FUSED_VIT_NORM=1`.
static SWITCH: Switch = Switch::new("SEMHITOK_FUSED_VIT_NORM", false);
/// Forward and backward kernel launches (tests check the kernels ran).
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Whether the fused norm is on (`SEMHITOK_FUSED_VIT_NORM=1`, or [`set_enabled`]; off by default).
pub fn enabled() -> bool {
    SWITCH.enabled()
}

/// Switch the fused norm on or off for the process.
pub fn set_enabled(on: bool) {
    SWITCH.set(on);
}

/// Kernel launches so far (forward and backward).
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Compile the kernels for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub fn compile(arch: u32) -> Result<(Vec<u8>, String), CudaError> {
    super::kernel::compile(SOURCE, FILE, arch)
}

/// `layer_norm(x) * gamma + beta` over the last dimension H, rounded to bf16, as one autograd
/// node: x [.., H] f32, gamma, beta [H] f32 -> [.., H] bf16; gradients for x, gamma and beta (f32).
/// The same values as LibTorch's fp32 layer norm followed by a bf16 cast, up to the fp32
/// statistics' summation order on CUDA (bit-equal elsewhere: the same LibTorch kernels).
pub fn layer_norm_bf16(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> crate::Result<Tensor> {
    let eps_t = Tensor::from(eps);
    let out = apply_custom(&NORM, &[x, gamma, beta, &eps_t], 1, 6)
        .map_err(|e| crate::Error::Cuda(e.to_string()))?;
    out.into_iter()
        .next()
        .ok_or_else(|| crate::Error::Cuda("vit_norm: no output".into()))
}

struct VitNorm;
static NORM: VitNorm = VitNorm;

fn tch_err(e: tch::TchError) -> String {
    e.to_string()
}

impl CustomFunction for VitNorm {
    fn name(&self) -> &str {
        "vit layer norm (bf16 out)"
    }

    fn forward(&self, i: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>), String> {
        let [x, gamma, beta, eps_t] = i else {
            return Err(format!("{} inputs, expected x, gamma, beta, eps", i.len()));
        };
        let eps = eps_t.f_double_value(&[]).map_err(tch_err)?;
        let h = gamma.size().first().copied().unwrap_or(0);
        if x.size().last() != Some(&h) || beta.size() != gamma.size() || h == 0 {
            return Err(format!(
                "x {:?}, gamma {:?}, beta {:?}",
                x.size(),
                gamma.size(),
                beta.size()
            ));
        }
        let rows = x.numel() as i64 / h;
        let case = dense_on_one_cuda(&[x, gamma, beta], Kind::Float)
            .filter(|_| h % 8 == 0 && h <= MAX_H && rows > 0);
        let (y, mean, rstd) = match case {
            Some(o) => {
                let dev = x.device();
                let y =
                    Tensor::f_empty(x.size().as_slice(), (Kind::BFloat16, dev)).map_err(tch_err)?;
                let mean = Tensor::f_empty([rows], (Kind::Float, dev)).map_err(tch_err)?;
                let rstd = Tensor::f_empty([rows], (Kind::Float, dev)).map_err(tch_err)?;
                let (mut px, mut pg, mut pb) = (x.data_ptr(), gamma.data_ptr(), beta.data_ptr());
                let (mut py, mut pm, mut pr) = (y.data_ptr(), mean.data_ptr(), rstd.data_ptr());
                let (mut h8, mut e) = ((h / 8) as i32, eps as f32);
                let mut args = [
                    arg(&mut px),
                    arg(&mut pg),
                    arg(&mut pb),
                    arg(&mut py),
                    arg(&mut pm),
                    arg(&mut pr),
                    arg(&mut h8),
                    arg(&mut e),
                ];
                // SAFETY: (const float4* x, gamma, beta, uint4* y, float* mean, rstd, int h8,
                // float eps) as ln_fwd_f32_bf16 declares; x [rows, H], gamma, beta [H] contiguous
                // aligned f32 on device `o` (checked), y, mean, rstd fresh.
                unsafe {
                    launch(
                        o,
                        SOURCE,
                        FILE,
                        "ln_fwd_f32_bf16",
                        rows as u32,
                        128,
                        &mut args,
                    )
                }
                .map_err(|e| e.0)?;
                LAUNCHES.fetch_add(1, Ordering::Relaxed);
                (y, mean, rstd)
            }
            None => {
                let (y, mean, rstd) = x
                    .f_native_layer_norm([h].as_slice(), Some(gamma), Some(beta), eps)
                    .map_err(tch_err)?;
                (
                    y.f_to_kind(Kind::BFloat16).map_err(tch_err)?,
                    mean.f_reshape([rows]).map_err(tch_err)?,
                    rstd.f_reshape([rows]).map_err(tch_err)?,
                )
            }
        };
        let saved = vec![
            x.shallow_clone(),
            gamma.shallow_clone(),
            beta.shallow_clone(),
            mean,
            rstd,
            eps_t.shallow_clone(),
        ];
        Ok((vec![y], saved))
    }

    fn backward(&self, s: &[Tensor], g: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
        let ([x, gamma, beta, mean, rstd, eps_t], [dy]) = (s, g) else {
            return Err(format!("{} saved, {} gradients", s.len(), g.len()));
        };
        let h = gamma.size()[0];
        let rows = x.numel() as i64 / h;
        let dy = dy.f_contiguous().map_err(tch_err)?;
        let case = dense_on_one_cuda(&[x, gamma, mean, rstd], Kind::Float).filter(|&o| {
            h % 8 == 0
                && h <= MAX_H
                && rows > 0
                && dy.kind() == Kind::BFloat16
                && dy.device() == Device::Cuda(o as usize)
                && (dy.data_ptr() as usize) % 16 == 0
        });
        let (dx, dg, db) = match case {
            Some(o) => {
                let dev = x.device();
                let dx =
                    Tensor::f_empty(x.size().as_slice(), (Kind::Float, dev)).map_err(tch_err)?;
                let chunks = (rows + ROWS_PER - 1) / ROWS_PER;
                let pg_t = Tensor::f_empty([chunks, h], (Kind::Float, dev)).map_err(tch_err)?;
                let pb_t = Tensor::f_empty([chunks, h], (Kind::Float, dev)).map_err(tch_err)?;
                let (mut pdy, mut px, mut pgam) = (dy.data_ptr(), x.data_ptr(), gamma.data_ptr());
                let (mut pm, mut pr, mut pdx) = (mean.data_ptr(), rstd.data_ptr(), dx.data_ptr());
                let mut h8 = (h / 8) as i32;
                let mut args = [
                    arg(&mut pdy),
                    arg(&mut px),
                    arg(&mut pgam),
                    arg(&mut pm),
                    arg(&mut pr),
                    arg(&mut pdx),
                    arg(&mut h8),
                ];
                // SAFETY: (const uint4* dy, const float4* x, gamma, const float* mean, rstd,
                // float4* dx, int h8) as ln_bwd_dx declares; dy [rows, H] bf16, x [rows, H],
                // gamma [H], mean, rstd [rows] f32, contiguous and aligned on device `o`
                // (checked); dx fresh.
                unsafe { launch(o, SOURCE, FILE, "ln_bwd_dx", rows as u32, 128, &mut args) }
                    .map_err(|e| e.0)?;
                let (mut ppg, mut ppb) = (pg_t.data_ptr(), pb_t.data_ptr());
                let (mut hh, mut rr, mut per) = (h as i32, rows, ROWS_PER as i32);
                let mut args = [
                    arg(&mut pdy),
                    arg(&mut px),
                    arg(&mut pm),
                    arg(&mut pr),
                    arg(&mut ppg),
                    arg(&mut ppb),
                    arg(&mut hh),
                    arg(&mut rr),
                    arg(&mut per),
                ];
                let grid = (((h + 255) / 256) as u32, chunks as u32, 1);
                // SAFETY: (const unsigned short* dy, const float* x, mean, rstd, float* part_g,
                // part_b, int h, long long rows, int rows_per) as ln_bwd_partial declares; the
                // tensors as above, part_g / part_b fresh [chunks, H].
                unsafe { launch_grid(o, SOURCE, FILE, "ln_bwd_partial", grid, 256, &mut args) }
                    .map_err(|e| e.0)?;
                LAUNCHES.fetch_add(2, Ordering::Relaxed);
                let dg = pg_t
                    .f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)
                    .map_err(tch_err)?;
                let db = pb_t
                    .f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)
                    .map_err(tch_err)?;
                (dx, dg, db)
            }
            None => {
                // LibTorch's layer norm backward (tch binds no native_layer_norm_backward): the
                // VJP of a re-run fp32 forward, d/dy sum(y * dy) = dy exactly.
                let _ = (mean, rstd);
                let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
                let (xl, gl, bl) = (leaf(x), leaf(gamma), leaf(beta));
                let eps = eps_t.f_double_value(&[]).map_err(tch_err)?;
                tch::with_grad(|| -> Result<(Tensor, Tensor, Tensor), tch::TchError> {
                    let y = xl.f_layer_norm([h].as_slice(), Some(&gl), Some(&bl), eps, true)?;
                    let dyf = dy.f_to_kind(Kind::Float)?;
                    let loss = y.f_mul(&dyf)?.f_sum(Kind::Float)?;
                    let gr = Tensor::f_run_backward(&[loss], &[&xl, &gl, &bl], false, false)?;
                    let [dx, dg, db]: [Tensor; 3] = gr
                        .try_into()
                        .map_err(|_| tch::TchError::Kind("three gradients".into()))?;
                    Ok((dx, dg, db))
                })
                .map_err(tch_err)?
            }
        };
        Ok(vec![Some(dx), Some(dg), Some(db), None])
    }
}
