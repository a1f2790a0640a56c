//! Input images of any size and either pixel type to the model's `[B, 3, S, S]` f32 in [-1, 1]:
//! u8 `[0, 255]` is mapped by `v / 127.5 - 1` (semhitok-data's `write_chw_f32`), a float input
//! must already be in [-1, 1]; a non-square or other-sized input gets the ADM center crop
//! ([`super::Crop::AdmCenter`]) resampled with antialiased bicubic. An input already at `S x S`
//! passes through unchanged (so ids of files decoded by semhitok-data at `S` are bit-exact).

use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// The crop geometry of guided-diffusion's `center_crop_arr` for an `h x w` input at `size`:
/// the resized `(rh, rw)` (shorter side `size`) and the `(top, left)` offsets of the crop in it.
pub fn adm_geometry(h: i64, w: i64, size: i64) -> ((i64, i64), (i64, i64)) {
    let short = h.min(w) as f64;
    let s = size as f64 / short;
    let (rh, rw) = (
        ((h as f64 * s).round() as i64).max(size),
        ((w as f64 * s).round() as i64).max(size),
    );
    ((rh, rw), ((rh - size) / 2, (rw - size) / 2))
}

/// images `[B, 3, H, W]` (or one `[3, H, W]`) u8 or float -> `[B, 3, size, size]` f32 in [-1, 1]
/// on `device`.
pub fn preprocess(images: &Tensor, size: i64, device: Device) -> Result<Tensor> {
    let x = match images.dim() {
        3 => images.f_unsqueeze(0)?,
        _ => images.shallow_clone(),
    };
    let (h, w) = match x.size().as_slice() {
        &[b, 3, h, w] if b >= 1 && h >= 1 && w >= 1 => (h, w),
        _ => {
            return Err(Error::shape(
                "images (u8 in [0, 255] or float in [-1, 1])",
                "[B, 3, H, W] or [3, H, W]",
                images,
            ))
        }
    };
    let x = match x.kind() {
        Kind::Uint8 => x
            .f_to_device(device)?
            .f_to_kind(Kind::Float)?
            .f_mul_scalar(1.0 / 127.5)?
            .f_sub_scalar(1.0)?,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => {
            let x = x.f_to_device(device)?.f_to_kind(Kind::Float)?;
            let (lo, hi) = (x.f_min()?.double_value(&[]), x.f_max()?.double_value(&[]));
            // a little slack for values computed in lower precision
            if !(lo >= -1.0 - 1e-3 && hi <= 1.0 + 1e-3) {
                return Err(Error::Config(format!(
                    "float images must be in [-1, 1] (u8 images may be passed as they are); got values in [{lo}, {hi}]"
                )));
            }
            x
        }
        k => {
            return Err(Error::Config(format!(
                "images of dtype {k:?}: expected u8 or a float dtype"
            )))
        }
    };
    if h == size && w == size {
        return Ok(x);
    }
    let ((rh, rw), (top, left)) = adm_geometry(h, w, size);
    let r = x.f_internal_upsample_bicubic2d_aa([rh, rw], false, None, None)?;
    Ok(r.f_narrow(2, top, size)?
        .f_narrow(3, left, size)?
        .f_clamp(-1.0, 1.0)?
        .f_contiguous()?)
}
