//! The frozen semantic teacher behind SemHiTok's SPC stage (paper Sec. 3.2): any network that turns
//! images into a grid of patch features.
//!
//! Convention: `features` takes images NCHW float in [-1, 1] (the loader's range); each teacher does
//! its own normalization and resizing inside and returns row-major patch tokens `[B, N, C]` with
//! `N = gh * gw` from [`Teacher::grid`]. Teachers are frozen: their variables never require grad,
//! batch norms run in eval mode and `features` runs under `no_grad`.

use crate::error::{Error, Result};
use tch::Tensor;

/// A frozen image-feature teacher (SigLIP, EfficientNet-Lite0, ...). Object-safe so the trainer can
/// hold a `Box<dyn Teacher>`.
pub trait Teacher: Send {
    /// images: [B, 3, H, W] in [-1, 1] -> patch tokens [B, gh * gw, dim()] (row-major grid).
    fn features(&self, images: &Tensor) -> Result<Tensor>;
    /// Channel count C of the returned tokens.
    fn dim(&self) -> i64;
    /// Token grid (gh, gw) for an `h x w` input.
    fn grid(&self, h: i64, w: i64) -> (i64, i64);
    /// A short name for logs ("siglip", "efficientnet_lite0").
    fn name(&self) -> &str;
    /// The frozen weights by their reference names (what a model folder stores under
    /// `teacher.`, and what [`crate::pretrained::TeacherSpec::build`] loads back strictly).
    fn variables(&self) -> Vec<(String, Tensor)>;
    /// Store the frozen weights in bf16 (norm parameters stay f32), for bf16-autocast training:
    /// autocast would otherwise cast every weight to bf16 again at every step. Features change
    /// only by bf16 rounding of the inputs autocast already rounds. Default: no-op.
    fn bf16_weights(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Convert the variables of a frozen `vs` to bf16, except norm parameters (autocast runs layer
/// norm in f32 and would cast them back).
pub fn vars_to_bf16(vs: &tch::nn::VarStore) -> Result<()> {
    let _g = tch::no_grad_guard();
    for (name, mut v) in vs.variables() {
        if name.contains("norm") || !v.is_floating_point() {
            continue;
        }
        let b = v.f_to_kind(tch::Kind::BFloat16)?;
        v.set_data(&b);
    }
    Ok(())
}

/// Check `images` is `[B, 3, H, W]` floating point; returns (B, H, W).
pub(crate) fn check_images(what: &str, images: &Tensor) -> Result<(i64, i64, i64)> {
    match images.size().as_slice() {
        &[b, 3, h, w] if images.is_floating_point() => Ok((b, h, w)),
        _ => Err(Error::Shape {
            what: format!("{what} images (float, in [-1, 1])"),
            expected: "[B, 3, H, W]".into(),
            got: images.size(),
        }),
    }
}

/// [B, C, H, W] feature map -> [B, H * W, C] row-major tokens.
pub(crate) fn map_to_tokens(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_flatten(2, 3)?.f_transpose(1, 2)?.f_contiguous()?)
}

/// Every variable of `vs` by name, sorted (for [`Teacher::variables`]).
pub(crate) fn sorted_variables(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
