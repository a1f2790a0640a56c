//! The trained linear layers under bf16 autocast as one autograd node
//! ([`semhitok_sys::apply_custom`]) whose backward writes the weight and bias gradients straight
//! into their bf16 `.grad` buffers: the weight's by a GEMM that accumulates (`grad += dy^T x`,
//! beta = 1), the bias's by an NVRTC column-sum kernel that adds its rounded sum (`linear.cu`).
//! LibTorch's linear backward instead computes each gradient into a fresh tensor (the bias's by a
//! generic reduction) and autograd then adds it into `.grad` in a separate kernel per parameter.
//! Megatron-LM's "gradient accumulation fusion" does the same for its weight gradients.
//!
//! The direct write applies when the parameter's `.grad` is a defined, contiguous bf16 tensor
//! (semhitok-train's flat bf16 gradient buffer); otherwise the gradient is returned to autograd
//! as usual (so data-parallel hooks on f32 gradients still see it). The forward is LibTorch's
//! linear. Values: with the gradient buffer zero (each parameter used once per backward) the
//! sums are autograd's, up to the GEMM's and the column sum's summation order; a parameter used
//! twice in one backward is rounded to bf16 once per use instead of twice.
//! On by default; `SEMHITOK_FUSED_LINEAR=0` (or [`set_enabled`]) restores LibTorch's linear.

use super::driver::CudaError;
use super::kernel::{arg, dense_on_one_cuda, launch_grid, tch_err, Switch};
use semhitok_sys::{apply_custom, CustomFunction};
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Device, Kind, Tensor};

pub(super) const SOURCE: &str = concat!(include_str!("bf16.cuh"), include_str!("linear.cu"));
pub(super) const FILE: &str = "linear.cu";
/// Fewest rows per column-partial chunk of the bias gradient, and most chunks.
const ROWS_PER: i64 = 64;
const MAX_CHUNKS: i64 = 128;

/// `SEMHITOK_FUSED_LINEAR=0` turns it off.
static SWITCH: Switch = Switch::new("SEMHITOK_FUSED_LINEAR", true);
/// Gradients written straight into `.grad` (weights and biases; tests check the route ran).
static DIRECT: AtomicU64 = AtomicU64::new(0);

/// Whether the node is on (the default; `SEMHITOK_FUSED_LINEAR=0` or [`set_enabled`] turn it off).
pub fn enabled() -> bool {
    SWITCH.enabled()
}

/// Switch the node on or off for the process.
pub fn set_enabled(on: bool) {
    SWITCH.set(on);
}

/// Gradients written straight into a `.grad` so far.
pub fn direct_writes() -> u64 {
    DIRECT.load(Ordering::Relaxed)
}

/// Compile the kernels for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub fn compile(arch: u32) -> Result<(Vec<u8>, String), CudaError> {
    super::kernel::compile(SOURCE, FILE, arch)
}

/// `x W^T + b` as the node: x [.., in] (bf16, or f32: cast to bf16 as autocast would, its
/// gradient cast back), w [out, in] bf16, b [out] bf16 -> [.., out] bf16.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> crate::Result<Tensor> {
    let mut ins = vec![x, w];
    ins.extend(b);
    let [y]: [Tensor; 1] = apply_custom(&LINEAR, &ins, 1, 4)
        .map_err(|e| crate::Error::Cuda(e.to_string()))?
        .try_into()
        .map_err(|_| crate::Error::Cuda("fused linear: not one output".into()))?;
    Ok(y)
}

struct FusedLinear;
static LINEAR: FusedLinear = FusedLinear;

/// The bf16 `.grad` of `p` to write into, if it has one (defined, contiguous, same device).
pub(super) fn bf16_grad(p: &Tensor) -> Option<Tensor> {
    if !p.requires_grad() {
        return None;
    }
    let g = p.grad();
    (g.defined() && g.kind() == Kind::BFloat16 && g.is_contiguous() && g.size() == p.size())
        .then_some(g)
        .filter(|g| g.device() == p.device())
}

/// Rows per chunk and chunk count of the column partials over `rows` rows (bias_partial's and
/// gelu_bwd_partial's chunking: the same for both, so their bias sums agree).
pub(super) fn chunking(rows: i64) -> (i64, i64) {
    let rows_per = ROWS_PER.max((rows + MAX_CHUNKS - 1) / MAX_CHUNKS);
    (rows_per, (rows + rows_per - 1) / rows_per)
}

/// `grad += column sums of dy2` (bf16 [rows, C]) by the kernels when on CUDA and aligned; false
/// when not their case.
fn add_bias_grad(dy2: &Tensor, grad: &Tensor) -> Result<bool, String> {
    let (rows, c) = (dy2.size()[0], dy2.size()[1]);
    let Some(o) = dense_on_one_cuda(&[dy2, grad], Kind::BFloat16) else {
        return Ok(false);
    };
    if c % 8 != 0 || rows == 0 {
        return Ok(false);
    }
    let (rows_per, chunks) = chunking(rows);
    let part = Tensor::f_empty([chunks, c], (Kind::Float, dy2.device())).map_err(tch_err)?;
    let (mut pdy, mut pp) = (dy2.data_ptr(), part.data_ptr());
    let (mut c8, mut rr, mut per) = ((c / 8) as i32, rows, rows_per as i32);
    let mut args = [
        arg(&mut pdy),
        arg(&mut pp),
        arg(&mut c8),
        arg(&mut rr),
        arg(&mut per),
    ];
    let grid = (((c / 8 + 31) / 32) as u32, chunks as u32, 1);
    // SAFETY: (const uint4* dy, float* part, int c8, long long rows, int rows_per) as
    // bias_partial declares; dy [rows, C] bf16 contiguous and aligned on device `o` (checked),
    // part fresh [chunks, C] f32, chunks * rows_per >= rows.
    unsafe { launch_grid(o, SOURCE, FILE, "bias_partial", grid, 128, &mut args) }
        .map_err(|e| e.0)?;
    finish_bias(o, &part, grad)?;
    Ok(true)
}

/// `grad = bf16(grad + column sums of part)` (part [chunks, C] f32 on CUDA device `o`, grad [C]
/// bf16 there): bias_finish.
pub(super) fn finish_bias(o: i32, part: &Tensor, grad: &Tensor) -> Result<(), String> {
    let (chunks, c) = (part.size()[0], part.size()[1]);
    if grad.size() != [c] || grad.kind() != Kind::BFloat16 || !grad.is_contiguous() {
        return Err(format!(
            "bias gradient {:?} {:?}, expected [{c}] bf16 contiguous",
            grad.size(),
            grad.kind()
        ));
    }
    let (mut pp, mut pg) = (part.data_ptr(), grad.data_ptr());
    let (mut cc, mut nc) = (c as i32, chunks as i32);
    let mut args = [arg(&mut pp), arg(&mut pg), arg(&mut cc), arg(&mut nc)];
    let grid = (((c + 31) / 32) as u32, 1, 1);
    // SAFETY: (const float* part, unsigned short* out, int c, int chunks) as bias_finish
    // declares; part [chunks, C] f32, out [C] bf16 contiguous (checked), both on device `o`.
    unsafe { launch_grid(o, SOURCE, FILE, "bias_finish", grid, 256, &mut args) }.map_err(|e| e.0)
}

/// dx and the weight gradient of `y = x16 W^T + b` from dy2 = dL/dy [rows, out] bf16, the weight
/// gradient written into w's bf16 `.grad` when it has one (counted in [`direct_writes`]), else
/// returned. `x_meta` as [`FusedLinear`] saves it (dx wanted when non-empty, and its kind).
pub(super) fn input_and_weight_grads(
    dy2: &Tensor,
    x16: &Tensor,
    w: &Tensor,
    x_meta: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>), String> {
    let inp = w.size()[1];
    let x2 = x16.f_reshape([-1, inp]).map_err(tch_err)?;
    let dx = (x_meta.numel() > 0)
        .then(|| {
            dy2.f_mm(w)
                .and_then(|t| t.f_reshape(x16.size().as_slice()))
                .and_then(|t| t.f_to_kind(x_meta.kind()))
        })
        .transpose()
        .map_err(tch_err)?;
    let dw = if !w.requires_grad() {
        None
    } else if let Some(mut gw) = bf16_grad(w) {
        let _ = gw
            .f_addmm_(&dy2.f_transpose(0, 1).map_err(tch_err)?, &x2)
            .map_err(tch_err)?;
        DIRECT.fetch_add(1, Ordering::Relaxed);
        None
    } else {
        Some(
            dy2.f_transpose(0, 1)
                .and_then(|t| t.f_mm(&x2))
                .map_err(tch_err)?,
        )
    };
    Ok((dx, dw))
}

/// x's kind, for its gradient, and whether it needs one: a CPU tensor of that kind with one
/// element if it does, none if not (no dx GEMM then).
pub(super) fn x_meta(x: &Tensor) -> Result<Tensor, String> {
    Tensor::f_empty([x.requires_grad() as i64], (x.kind(), Device::Cpu)).map_err(tch_err)
}

/// Count one gradient written straight into a `.grad`.
pub(super) fn count_direct() {
    DIRECT.fetch_add(1, Ordering::Relaxed);
}

impl CustomFunction for FusedLinear {
    fn name(&self) -> &str {
        "fused linear (gradients into .grad)"
    }

    fn forward(&self, i: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>), String> {
        let (x, w, b) = match i {
            [x, w] => (x, w, None),
            [x, w, b] => (x, w, Some(b)),
            _ => return Err(format!("{} inputs, expected x, w[, b]", i.len())),
        };
        let (out, inp) = match w.size().as_slice() {
            &[o, n] => (o, n),
            s => return Err(format!("weight {s:?}, expected [out, in]")),
        };
        if x.size().last() != Some(&inp) || b.is_some_and(|b| b.size() != [out]) {
            return Err(format!(
                "x {:?}, weight {:?}, bias {:?}",
                x.size(),
                w.size(),
                b.map(Tensor::size)
            ));
        }
        let x16 = x.f_to_kind(w.kind()).map_err(tch_err)?;
        let y = x16.f_linear(w, b).map_err(tch_err)?;
        // See `x_meta`; the bias, or an empty stand-in.
        let x_meta = x_meta(x)?;
        let b_saved = match b {
            Some(b) => b.shallow_clone(),
            None => Tensor::f_empty([0], (w.kind(), Device::Cpu)).map_err(tch_err)?,
        };
        Ok((vec![y], vec![x16, w.shallow_clone(), b_saved, x_meta]))
    }

    fn backward(&self, s: &[Tensor], g: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
        let ([x16, w, b, x_meta], [dy]) = (s, g) else {
            return Err(format!("{} saved, {} gradients", s.len(), g.len()));
        };
        let has_bias = b.numel() > 0;
        let out = w.size()[0];
        let dy2 = dy
            .f_to_kind(w.kind())
            .and_then(|t| t.f_contiguous())
            .and_then(|t| t.f_reshape([-1, out]))
            .map_err(tch_err)?;
        let (dx, dw) = input_and_weight_grads(&dy2, x16, w, x_meta)?;
        let db = if !has_bias || !b.requires_grad() {
            None
        } else {
            let direct = match bf16_grad(b) {
                Some(gb) => add_bias_grad(&dy2, &gb)?,
                None => false,
            };
            if direct {
                count_direct();
                None
            } else {
                Some(
                    dy2.f_sum_dim_intlist([0i64].as_slice(), false, b.kind())
                        .map_err(tch_err)?,
                )
            }
        };
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(db);
        }
        Ok(grads)
    }
}
