//! The trained ViTs' layer norm under bf16 autocast as one autograd node
//! ([`semhitok_sys::apply_custom`]) with NVRTC kernels for its forward and backward
//! (`vit_norm.cu`): the fp32 residual stream in, the bf16 operand of the next GEMM out; optionally
//! with the residual add before it (`x + d`, d the bf16 output of the previous GEMM) in the same
//! kernels. LibTorch's add, `native_layer_norm` (+ cast) and layer norm backward where the kernels
//! do not apply. On by default; `SEMHITOK_FUSED_VIT_NORM=0` (or [`set_enabled`]) restores
//! LibTorch's ops.
//!
//! What one node replaces, per block and norm: forward the mixed f32 + bf16 add, the fp32 norm
//! and autocast's bf16 cast; backward the bf16 -> fp32 cast of the incoming gradient, the norm's
//! two backward kernels, autograd's sum of the residual gradient and the norm's, and the cast of
//! that sum to the bf16 addend's gradient.

use super::driver::CudaError;
use super::kernel::{arg, dense_on_one_cuda, launch, launch_grid, tch_err, Switch};
use semhitok_sys::{apply_custom, CustomFunction};
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Device, Kind, Tensor};

const SOURCE: &str = concat!(include_str!("bf16.cuh"), include_str!("vit_norm.cu"));
const FILE: &str = "vit_norm.cu";
/// Widest row the kernels hold in registers (128 threads x 8 values x `MAXV`).
const MAX_H: i64 = 128 * 8 * 2;
/// Fewest rows per column-partial chunk of the weight gradients, and most chunks.
const ROWS_PER: i64 = 32;
const MAX_CHUNKS: i64 = 512;

/// `SEMHITOK_FUSED_VIT_NORM=0` turns it off.
static SWITCH: Switch = Switch::new("SEMHITOK_FUSED_VIT_NORM", true);
/// Forward and backward kernel launches (tests check the kernels ran).
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Whether the fused norm is on (the default; `SEMHITOK_FUSED_VIT_NORM=0` or [`set_enabled`] turn
/// it off).
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
    let [y]: [Tensor; 1] = apply_custom(&NORM, &[x, gamma, beta, &eps_t], 1, 6)
        .map_err(|e| crate::Error::Cuda(e.to_string()))?
        .try_into()
        .map_err(|_| crate::Error::Cuda("vit_norm: not one output".into()))?;
    Ok(y)
}

/// The residual add and the norm after it as one autograd node: `(s, y)` with `s = x + d` (f32,
/// exactly LibTorch's mixed add) and `y = bf16(layer_norm(s) * gamma + beta)` as
/// [`layer_norm_bf16`]. x [.., H] f32, d [.., H] (bf16: the kernels' case), gamma, beta [H] f32;
/// gradients for x, d (in d's kind), gamma and beta.
pub fn add_layer_norm_bf16(
    x: &Tensor,
    d: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> crate::Result<(Tensor, Tensor)> {
    let eps_t = Tensor::from(eps);
    let [s, y]: [Tensor; 2] = apply_custom(&ADD_NORM, &[x, d, gamma, beta, &eps_t], 2, 7)
        .map_err(|e| crate::Error::Cuda(e.to_string()))?
        .try_into()
        .map_err(|_| crate::Error::Cuda("vit_norm: not two outputs".into()))?;
    Ok((s, y))
}

struct VitNorm;
static NORM: VitNorm = VitNorm;
struct VitAddNorm;
static ADD_NORM: VitAddNorm = VitAddNorm;

fn empty(shape: &[i64], kind: Kind, dev: Device) -> Result<Tensor, String> {
    Tensor::f_empty(shape, (kind, dev)).map_err(tch_err)
}

fn ptr(t: Option<&Tensor>) -> *mut c_void {
    t.map_or(std::ptr::null_mut(), Tensor::data_ptr)
}

/// Whether `t` is a contiguous, 16-byte aligned tensor of `kind` on CUDA device `o`.
fn dense_on(t: &Tensor, kind: Kind, o: i32) -> bool {
    t.kind() == kind
        && t.device() == Device::Cuda(o as usize)
        && t.is_contiguous()
        && (t.data_ptr() as usize) % 16 == 0
}

fn check_shapes(
    x: &Tensor,
    d: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
) -> Result<i64, String> {
    let h = gamma.size().first().copied().unwrap_or(0);
    let d_ok = d.map_or(true, |d| d.size() == x.size());
    if x.size().last() != Some(&h) || beta.size() != gamma.size() || h == 0 || !d_ok {
        return Err(format!(
            "x {:?}, d {:?}, gamma {:?}, beta {:?}",
            x.size(),
            d.map(Tensor::size),
            gamma.size(),
            beta.size()
        ));
    }
    Ok(h)
}

/// The forward: `(s, y, mean, rstd)`, s = x + d when `d` is given (else None).
fn forward_parts(
    x: &Tensor,
    d: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Option<Tensor>, Tensor, Tensor, Tensor), String> {
    let h = check_shapes(x, d, gamma, beta)?;
    let rows = x.numel() as i64 / h;
    let case = dense_on_one_cuda(&[x, gamma, beta], Kind::Float).filter(|&o| {
        h % 8 == 0 && h <= MAX_H && rows > 0 && d.map_or(true, |d| dense_on(d, Kind::BFloat16, o))
    });
    let Some(o) = case else {
        let s = d.map(|d| x.f_add(d)).transpose().map_err(tch_err)?;
        let (y, mean, rstd) = s
            .as_ref()
            .unwrap_or(x)
            .f_native_layer_norm([h].as_slice(), Some(gamma), Some(beta), eps)
            .map_err(tch_err)?;
        return Ok((
            s,
            y.f_to_kind(Kind::BFloat16).map_err(tch_err)?,
            mean.f_reshape([rows]).map_err(tch_err)?,
            rstd.f_reshape([rows]).map_err(tch_err)?,
        ));
    };
    let dev = x.device();
    let s = d.map(|_| empty(&x.size(), Kind::Float, dev)).transpose()?;
    let y = empty(&x.size(), Kind::BFloat16, dev)?;
    let mean = empty(&[rows], Kind::Float, dev)?;
    let rstd = empty(&[rows], Kind::Float, dev)?;
    let (mut px, mut pd, mut pg, mut pb) =
        (x.data_ptr(), ptr(d), gamma.data_ptr(), beta.data_ptr());
    let (mut ps, mut py) = (ptr(s.as_ref()), y.data_ptr());
    let (mut pm, mut pr) = (mean.data_ptr(), rstd.data_ptr());
    let (mut h8, mut e) = ((h / 8) as i32, eps as f32);
    let mut args = [
        arg(&mut px),
        arg(&mut pd),
        arg(&mut pg),
        arg(&mut pb),
        arg(&mut ps),
        arg(&mut py),
        arg(&mut pm),
        arg(&mut pr),
        arg(&mut h8),
        arg(&mut e),
    ];
    // SAFETY: (const float4* x, const uint4* d, const float4* gamma, beta, float4* s, uint4* y,
    // float* mean, rstd, int h8, float eps) as ln_fwd_f32_bf16 declares; x [rows, H] f32, d (null
    // or [rows, H] bf16), gamma, beta [H] f32, contiguous and aligned on device `o` (checked); s
    // (null when d is), y, mean, rstd fresh.
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
    Ok((s, y, mean, rstd))
}

/// The backward of the norm of `x` (the normed rows: x, or s of the add) given `dy`, plus `dres`
/// (the residual stream's own gradient) when given: `(dx, dgamma, dbeta)`, dx f32.
#[allow(clippy::too_many_arguments)]
fn backward_parts(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    eps: f64,
    dy: &Tensor,
    dres: Option<&Tensor>,
    want16: bool,
) -> Result<(Tensor, Option<Tensor>, Tensor, Tensor), String> {
    let h = gamma.size()[0];
    let rows = x.numel() as i64 / h;
    let dy = dy.f_contiguous().map_err(tch_err)?;
    let dres = dres
        .filter(|t| t.defined())
        .map(|t| t.f_contiguous())
        .transpose()
        .map_err(tch_err)?;
    let case = dense_on_one_cuda(&[x, gamma, mean, rstd], Kind::Float).filter(|&o| {
        h % 8 == 0
            && h <= MAX_H
            && rows > 0
            && dense_on(&dy, Kind::BFloat16, o)
            && dres.as_ref().map_or(true, |t| dense_on(t, Kind::Float, o))
    });
    let Some(o) = case else {
        // LibTorch's layer norm backward (tch binds no native_layer_norm_backward): the VJP of a
        // re-run fp32 forward, d/dy sum(y * dy) = dy exactly.
        let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
        let (xl, gl, bl) = (leaf(x), leaf(gamma), leaf(beta));
        let (dx, dg, db) = tch::with_grad(|| -> Result<(Tensor, Tensor, Tensor), tch::TchError> {
            let y = xl.f_layer_norm([h].as_slice(), Some(&gl), Some(&bl), eps, true)?;
            let dyf = dy.f_to_kind(Kind::Float)?;
            let loss = y.f_mul(&dyf)?.f_sum(Kind::Float)?;
            let gr = Tensor::f_run_backward(&[loss], &[&xl, &gl, &bl], false, false)?;
            let [dx, dg, db]: [Tensor; 3] = gr
                .try_into()
                .map_err(|_| tch::TchError::Kind("three gradients".into()))?;
            Ok((dx, dg, db))
        })
        .map_err(tch_err)?;
        // Autograd's sum of the two gradients of the residual stream (dres + dx: the same sum).
        let dx = match &dres {
            Some(r) => r.f_add(&dx).map_err(tch_err)?,
            None => dx,
        };
        return Ok((dx, None, dg, db));
    };
    let dev = x.device();
    let dx = empty(&x.size(), Kind::Float, dev)?;
    let dx16 = want16
        .then(|| empty(&x.size(), Kind::BFloat16, dev))
        .transpose()?;
    let rows_per = ROWS_PER.max((rows + MAX_CHUNKS - 1) / MAX_CHUNKS);
    let chunks = (rows + rows_per - 1) / rows_per;
    let pg_t = empty(&[chunks, h], Kind::Float, dev)?;
    let pb_t = empty(&[chunks, h], Kind::Float, dev)?;
    let (mut pdy, mut px, mut pgam) = (dy.data_ptr(), x.data_ptr(), gamma.data_ptr());
    let (mut pm, mut pr) = (mean.data_ptr(), rstd.data_ptr());
    let (mut pres, mut pdx, mut pdx16) = (ptr(dres.as_ref()), dx.data_ptr(), ptr(dx16.as_ref()));
    let mut h8 = (h / 8) as i32;
    let mut args = [
        arg(&mut pdy),
        arg(&mut px),
        arg(&mut pgam),
        arg(&mut pm),
        arg(&mut pr),
        arg(&mut pres),
        arg(&mut pdx),
        arg(&mut pdx16),
        arg(&mut h8),
    ];
    // SAFETY: (const uint4* dy, const float4* x, gamma, const float* mean, rstd, const float4*
    // dres, float4* dx, uint4* dx16, int h8) as ln_bwd_dx declares; dy [rows, H] bf16, x, dres
    // (or null) [rows, H], gamma [H], mean, rstd [rows] f32, contiguous and aligned on device `o`
    // (checked); dx and dx16 (or null) fresh.
    unsafe { launch(o, SOURCE, FILE, "ln_bwd_dx", rows as u32, 128, &mut args) }
        .map_err(|e| e.0)?;
    let (mut ppg, mut ppb) = (pg_t.data_ptr(), pb_t.data_ptr());
    let (mut hh, mut rr, mut per) = (h as i32, rows, rows_per as i32);
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
    // SAFETY: (const unsigned short* dy, const float* x, mean, rstd, float* part_g, part_b, int h,
    // long long rows, int rows_per) as ln_bwd_partial declares; the tensors as above, part_g /
    // part_b fresh [chunks, H], chunks * rows_per >= rows.
    unsafe { launch_grid(o, SOURCE, FILE, "ln_bwd_partial", grid, 256, &mut args) }
        .map_err(|e| e.0)?;
    let dg = empty(&[h], Kind::Float, dev)?;
    let db = empty(&[h], Kind::Float, dev)?;
    let (mut pdg, mut pdb, mut nc) = (dg.data_ptr(), db.data_ptr(), chunks as i32);
    let mut args = [
        arg(&mut ppg),
        arg(&mut ppb),
        arg(&mut pdg),
        arg(&mut pdb),
        arg(&mut hh),
        arg(&mut nc),
    ];
    let grid = (((h + 31) / 32) as u32, 2, 1);
    // SAFETY: (const float* part_g, part_b, float* dg, db, int h, int chunks) as colsum2
    // declares; part_* [chunks, H] written above, dg, db fresh [H].
    unsafe { launch_grid(o, SOURCE, FILE, "colsum2", grid, 256, &mut args) }.map_err(|e| e.0)?;
    LAUNCHES.fetch_add(3, Ordering::Relaxed);
    Ok((dx, dx16, dg, db))
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
        let (_, y, mean, rstd) = forward_parts(x, None, gamma, beta, eps)?;
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
        let eps = eps_t.f_double_value(&[]).map_err(tch_err)?;
        let (dx, _, dg, db) = backward_parts(x, gamma, beta, mean, rstd, eps, dy, None, false)?;
        Ok(vec![Some(dx), Some(dg), Some(db), None])
    }
}

impl CustomFunction for VitAddNorm {
    fn name(&self) -> &str {
        "vit residual add + layer norm (bf16 out)"
    }

    fn forward(&self, i: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>), String> {
        let [x, d, gamma, beta, eps_t] = i else {
            return Err(format!(
                "{} inputs, expected x, d, gamma, beta, eps",
                i.len()
            ));
        };
        let eps = eps_t.f_double_value(&[]).map_err(tch_err)?;
        let (s, y, mean, rstd) = forward_parts(x, Some(d), gamma, beta, eps)?;
        let s = s.ok_or("no sum")?;
        // The addend's kind, for its gradient (an empty tensor: d itself is not kept).
        let d_kind = empty(&[0], d.kind(), Device::Cpu)?;
        let saved = vec![
            s.shallow_clone(),
            gamma.shallow_clone(),
            beta.shallow_clone(),
            mean,
            rstd,
            eps_t.shallow_clone(),
            d_kind,
        ];
        Ok((vec![s, y], saved))
    }

    fn backward(&self, s: &[Tensor], g: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
        let ([sum, gamma, beta, mean, rstd, eps_t, d_kind], [ds, dy]) = (s, g) else {
            return Err(format!("{} saved, {} gradients", s.len(), g.len()));
        };
        let eps = eps_t.f_double_value(&[]).map_err(tch_err)?;
        let want16 = d_kind.kind() == Kind::BFloat16;
        let (dx, dx16, dg, db) =
            backward_parts(sum, gamma, beta, mean, rstd, eps, dy, Some(ds), want16)?;
        let dd = match dx16 {
            Some(t) => t,
            None => dx.f_to_kind(d_kind.kind()).map_err(tch_err)?,
        };
        Ok(vec![Some(dx), Some(dd), Some(dg), Some(db), None])
    }
}
