//! A trained ViT's `fc1` followed by its exact (erf) GELU as one autograd node
//! ([`semhitok_sys::apply_custom`]). The forward is LibTorch's linear and GELU (the same values).
//! The backward computes the GELU gradient and fc1's bias gradient in one pass over the
//! gradient (`gelu_bwd_partial` in `linear.cu`: LibTorch's GELU-backward expression in fp32, and
//! the column partials of its bf16-rounded result), then the GEMMs of [`super::linear`]'s node:
//! the weight gradient accumulated straight into its bf16 `.grad`, the bias's added there by
//! `bias_finish`. Unfused, LibTorch runs the GELU backward as one kernel and the bias sum as a
//! second pass over the same [rows, 4 D] gradient. The chunking and summation order of the bias
//! sum are `bias_partial`'s, so the bias gradient is the linear node's over the same dh.
//!
//! Off its case (not CUDA, a `.grad` that is not bf16, C % 8 != 0) the node falls back to
//! LibTorch's GELU backward and the linear node's backward. Off by default: on the H200 at paper
//! size it saved no measurable time (docs/benchmarks/train-gpu.md, session 10: batch 32 776 /
//! 807 img/s with it, 791 / 800 without; batch 128 925 vs 925; the pass it replaces, LibTorch's
//! GELU backward, took 1.37 ms of the 44 ms batch-32 step). `SEMHITOK_FUSED_GELU=1` (or
//! [`set_enabled`]) turns it on; the linear node's switch (`SEMHITOK_FUSED_LINEAR=0`) turns this
//! node off too.

use super::kernel::{arg, dense_on_one_cuda, launch_grid, tch_err, Switch};
use super::linear::{
    bf16_grad, chunking, count_direct, finish_bias, input_and_weight_grads, x_meta, FILE, SOURCE,
};
use semhitok_sys::{apply_custom, CustomFunction};
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Kind, Tensor};

/// Launches of gelu_bwd_partial (tests check the kernel ran).
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// `SEMHITOK_FUSED_GELU=1` turns it on.
static SWITCH: Switch = Switch::new("SEMHITOK_FUSED_GELU", false);

/// Whether the node is on (off by default; `SEMHITOK_FUSED_GELU=1` or [`set_enabled`] turn it on).
pub fn enabled() -> bool {
    SWITCH.enabled()
}

/// Switch the node on or off for the process.
pub fn set_enabled(on: bool) {
    SWITCH.set(on);
}

/// Launches of the GELU-backward kernel so far.
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// `gelu(x W^T + b)` (exact GELU) as the node: x [.., in] (bf16, or f32: cast to bf16 as
/// autocast would, its gradient cast back), w [out, in] bf16, b [out] bf16 -> [.., out] bf16.
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    let [y]: [Tensor; 1] = apply_custom(&LINEAR_GELU, &[x, w, b], 1, 5)
        .map_err(|e| crate::Error::Cuda(e.to_string()))?
        .try_into()
        .map_err(|_| crate::Error::Cuda("fused linear + GELU: not one output".into()))?;
    Ok(y)
}

struct FusedLinearGelu;
static LINEAR_GELU: FusedLinearGelu = FusedLinearGelu;

/// dh = GELU'(h) dg and its column partials (gelu_bwd_partial) when on CUDA and aligned: (dh,
/// part, device); `None` when not the kernel's case. dg2, h2: [rows, C] bf16.
fn gelu_backward_partials(
    dg2: &Tensor,
    h2: &Tensor,
) -> Result<Option<(Tensor, Tensor, i32)>, String> {
    let (rows, c) = (h2.size()[0], h2.size()[1]);
    let Some(o) = dense_on_one_cuda(&[dg2, h2], Kind::BFloat16) else {
        return Ok(None);
    };
    if c % 8 != 0 || rows == 0 || dg2.size() != h2.size() {
        return Ok(None);
    }
    let (rows_per, chunks) = chunking(rows);
    let dh = h2.f_empty_like().map_err(tch_err)?;
    let part = Tensor::f_empty([chunks, c], (Kind::Float, h2.device())).map_err(tch_err)?;
    let (mut pg, mut ph, mut pd, mut pp) = (
        dg2.data_ptr(),
        h2.data_ptr(),
        dh.data_ptr(),
        part.data_ptr(),
    );
    let (mut c8, mut rr, mut per) = ((c / 8) as i32, rows, rows_per as i32);
    let mut args = [
        arg(&mut pg),
        arg(&mut ph),
        arg(&mut pd),
        arg(&mut pp),
        arg(&mut c8),
        arg(&mut rr),
        arg(&mut per),
    ];
    let grid = (((c / 8 + 31) / 32) as u32, chunks as u32, 1);
    // SAFETY: (const uint4* dg, const uint4* h, uint4* dh, float* part, int c8, long long rows,
    // int rows_per) as gelu_bwd_partial declares; dg and h [rows, C] bf16 contiguous and aligned
    // on device `o` (checked), dh fresh like h, part fresh [chunks, C] f32, chunks * rows_per >=
    // rows.
    unsafe { launch_grid(o, SOURCE, FILE, "gelu_bwd_partial", grid, 128, &mut args) }
        .map_err(|e| e.0)?;
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    Ok(Some((dh, part, o)))
}

impl CustomFunction for FusedLinearGelu {
    fn name(&self) -> &str {
        "fused linear + GELU (gradients into .grad)"
    }

    fn forward(&self, i: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>), String> {
        let [x, w, b] = i else {
            return Err(format!("{} inputs, expected x, w, b", i.len()));
        };
        let (out, inp) = match w.size().as_slice() {
            &[o, n] => (o, n),
            s => return Err(format!("weight {s:?}, expected [out, in]")),
        };
        if x.size().last() != Some(&inp) || b.size() != [out] {
            return Err(format!(
                "x {:?}, weight {:?}, bias {:?}",
                x.size(),
                w.size(),
                b.size()
            ));
        }
        let x16 = x.f_to_kind(w.kind()).map_err(tch_err)?;
        let h = x16.f_linear(w, Some(b)).map_err(tch_err)?;
        let y = h.f_gelu("none").map_err(tch_err)?;
        let saved = vec![x16, w.shallow_clone(), b.shallow_clone(), h, x_meta(x)?];
        Ok((vec![y], saved))
    }

    fn backward(&self, s: &[Tensor], g: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
        let ([x16, w, b, h, x_meta], [dg]) = (s, g) else {
            return Err(format!("{} saved, {} gradients", s.len(), g.len()));
        };
        let out = w.size()[0];
        let flat = |t: &Tensor| {
            t.f_to_kind(w.kind())
                .and_then(|t| t.f_contiguous())
                .and_then(|t| t.f_reshape([-1, out]))
                .map_err(tch_err)
        };
        let (dg2, h2) = (flat(dg)?, flat(h)?);
        let wants_db = b.requires_grad();
        let (dh2, db) = match gelu_backward_partials(&dg2, &h2)? {
            Some((dh2, part, o)) => {
                let db = if !wants_db {
                    None
                } else if let Some(gb) = bf16_grad(b) {
                    finish_bias(o, &part, &gb)?;
                    count_direct();
                    None
                } else {
                    let db =
                        Tensor::f_zeros([out], (Kind::BFloat16, b.device())).map_err(tch_err)?;
                    finish_bias(o, &part, &db)?;
                    Some(db.f_to_kind(b.kind()).map_err(tch_err)?)
                };
                (dh2, db)
            }
            None => {
                let dh2 = h2.f_gelu_backward(&dg2, "none").map_err(tch_err)?;
                let db = wants_db
                    .then(|| dh2.f_sum_dim_intlist([0i64].as_slice(), false, b.kind()))
                    .transpose()
                    .map_err(tch_err)?;
                (dh2, db)
            }
        };
        let (dx, dw) = input_and_weight_grads(&dh2, x16, w, x_meta)?;
        Ok(vec![dx, dw, db])
    }
}
