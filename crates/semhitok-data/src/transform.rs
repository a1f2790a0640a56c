//! Geometric transforms to a square `size x size` RGB8 image, and the NCHW writers.
//!
//! Resampling is antialiased Catmull-Rom bicubic (`fast_image_resize`, SIMD), the filter Pillow
//! calls `BICUBIC`. The crop box is applied inside the resize, so only the cropped region is
//! resampled.
//!
//! **ADM center crop** ([`Transform::CenterCrop`], evaluation, rFID): guided-diffusion's
//! `center_crop_arr` resizes the shorter side to `size` (long side `round(L * size / S)`), then
//! crops `(L' - size) // 2` from the start of the long side. We use the same geometry, mapped back
//! to a source crop box, in a single antialiased bicubic pass. ADM first halves with a BOX filter
//! while the shorter side is >= 2 x size and then runs bicubic; our single pass is a slightly
//! sharper antialiasing of the same region (the bench reports the mean absolute difference).
//!
//! **Random crop** ([`Transform::RandomCrop`], training, the default of the tokenizer presets):
//! LlamaGen's tokenizer training transform (`tokenizer/tokenizer_image/vq_train.py`:
//! `random_crop_arr(img, image_size)` then `RandomHorizontalFlip()`, with `random_crop_arr` from
//! `dataset/augmentation.py`, itself ADM's): the shorter side is resized to a length drawn
//! uniformly from `ceil(size / max_crop_frac) ..= ceil(size / min_crop_frac)` (0.8 and 1.0 there),
//! then a `size x size` window is cut at a uniform position, then a flip with probability 1/2. As
//! for the center crop, the resize and the crop are one antialiased bicubic pass over the source
//! box (LlamaGen halves with a BOX filter first while the shorter side is >= 2x the target).
//!
//! **Random resized crop** ([`Transform::RandomResizedCrop`], training): torchvision's
//! `RandomResizedCrop.get_params` (10 attempts of area-scale x log-uniform aspect ratio, then the
//! central fallback), then an optional horizontal flip with probability 1/2.

use std::cell::RefCell;

use fast_image_resize as fr;
use rand::Rng;

use crate::error::SkipReason;
use crate::image::Rgb8Image;

/// A transform from any image to `size x size` RGB8.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transform {
    /// Shorter side to `size`, then the ADM center crop (deterministic).
    CenterCrop { size: u32 },
    /// LlamaGen's `random_crop_arr(size, min_crop_frac, max_crop_frac)` + optional horizontal flip.
    RandomCrop {
        size: u32,
        min_crop_frac: f64,
        max_crop_frac: f64,
        hflip: bool,
    },
    /// torchvision `RandomResizedCrop(size, scale, ratio)` + optional horizontal flip.
    RandomResizedCrop {
        size: u32,
        scale: (f64, f64),
        ratio: (f64, f64),
        hflip: bool,
    },
}

impl Transform {
    /// The ADM evaluation crop.
    pub fn center_crop(size: u32) -> Self {
        Transform::CenterCrop { size }
    }
    /// LlamaGen's tokenizer training crop: shorter side to `size / U{0.8..1}`, random window,
    /// horizontal flips.
    pub fn random_crop(size: u32) -> Self {
        Transform::RandomCrop {
            size,
            min_crop_frac: 0.8,
            max_crop_frac: 1.0,
            hflip: true,
        }
    }
    /// torchvision defaults: scale (0.08, 1), ratio (3/4, 4/3), with horizontal flips.
    pub fn random_resized_crop(size: u32) -> Self {
        Transform::RandomResizedCrop {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
        }
    }
    /// Output side length.
    pub fn size(&self) -> u32 {
        match self {
            Transform::CenterCrop { size }
            | Transform::RandomCrop { size, .. }
            | Transform::RandomResizedCrop { size, .. } => *size,
        }
    }
    /// The smallest shorter side of a source this transform only ever shrinks (never enlarges):
    /// a JPEG larger than twice that may be decoded at reduced scale
    /// ([`decode_rgb8_scaled`](crate::decode_rgb8_scaled)) with no visible change. `None` for
    /// random resized crops (a small crop of a large image is enlarged, so full resolution is
    /// needed).
    pub fn min_source_side(&self) -> Option<u32> {
        match *self {
            // ADM: BOX halvings while the shorter side is >= 2 x size, then bicubic to size.
            Transform::CenterCrop { size } => Some(size),
            // LlamaGen: the shorter side is resized to at most ceil(size / min_crop_frac).
            Transform::RandomCrop {
                size,
                min_crop_frac,
                ..
            } => Some((size as f64 / min_crop_frac.max(1e-3)).ceil() as u32),
            Transform::RandomResizedCrop { .. } => None,
        }
    }
    /// Applies the transform; `rng` is only used by the random variants.
    pub fn apply(&self, img: &Rgb8Image, rng: &mut impl Rng) -> Result<Rgb8Image, SkipReason> {
        match *self {
            Transform::CenterCrop { size } => {
                let b = adm_center_crop_box(img.width, img.height, size);
                resize_crop(img, b, size, size)
            }
            Transform::RandomCrop {
                size,
                min_crop_frac,
                max_crop_frac,
                hflip,
            } => {
                let b = random_crop_box(
                    img.width,
                    img.height,
                    size,
                    min_crop_frac,
                    max_crop_frac,
                    rng,
                );
                let mut out = resize_crop(img, b, size, size)?;
                if hflip && rng.gen::<bool>() {
                    flip_horizontal(&mut out);
                }
                Ok(out)
            }
            Transform::RandomResizedCrop {
                size,
                scale,
                ratio,
                hflip,
            } => {
                let b = random_resized_crop_box(img.width, img.height, scale, ratio, rng);
                let mut out = resize_crop(img, b, size, size)?;
                if hflip && rng.gen::<bool>() {
                    flip_horizontal(&mut out);
                }
                Ok(out)
            }
        }
    }
}

/// A source crop box (left, top, width, height) in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

/// The source region that guided-diffusion's `center_crop_arr(img, size)` keeps.
pub fn adm_center_crop_box(w: u32, h: u32, size: u32) -> CropBox {
    let short = w.min(h) as f64;
    let s = size as f64 / short;
    let (rw, rh) = ((w as f64 * s).round(), (h as f64 * s).round());
    let ox = ((rw as i64 - size as i64).max(0) / 2) as f64;
    let oy = ((rh as i64 - size as i64).max(0) / 2) as f64;
    // Map the crop back through the per-axis scale actually used by the resize.
    let (sx, sy) = (rw / w as f64, rh / h as f64);
    CropBox {
        left: ox / sx,
        top: oy / sy,
        width: size as f64 / sx,
        height: size as f64 / sy,
    }
}

/// The source region LlamaGen's `random_crop_arr(img, size, min_crop_frac, max_crop_frac)` keeps
/// on a `w x h` image: shorter side resized to `s` drawn uniformly from
/// `ceil(size / max_crop_frac) ..= ceil(size / min_crop_frac)` (long side `round(L * s / S)`), then
/// a `size x size` window at a uniform integer offset, mapped back through the per-axis scale.
pub fn random_crop_box(
    w: u32,
    h: u32,
    size: u32,
    min_crop_frac: f64,
    max_crop_frac: f64,
    rng: &mut impl Rng,
) -> CropBox {
    let lo = (size as f64 / max_crop_frac).ceil().max(size as f64) as u64;
    let hi = (size as f64 / min_crop_frac).ceil().max(lo as f64) as u64;
    let s = rng.gen_range(lo..=hi) as f64;
    let short = w.min(h).max(1) as f64;
    let (rw, rh) = (
        (w as f64 * s / short).round().max(size as f64),
        (h as f64 * s / short).round().max(size as f64),
    );
    let ox = rng.gen_range(0..=(rw as u64 - size as u64)) as f64;
    let oy = rng.gen_range(0..=(rh as u64 - size as u64)) as f64;
    let (sx, sy) = (rw / w as f64, rh / h as f64);
    CropBox {
        left: ox / sx,
        top: oy / sy,
        width: size as f64 / sx,
        height: size as f64 / sy,
    }
}

/// torchvision `RandomResizedCrop.get_params` on a `w x h` image.
pub fn random_resized_crop_box(
    w: u32,
    h: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl Rng,
) -> CropBox {
    let (wf, hf) = (w as f64, h as f64);
    let area = wf * hf;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.gen_range(scale.0..=scale.1);
        let aspect = rng.gen_range(lr0..=lr1).exp();
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw > 0.0 && cw <= wf && ch > 0.0 && ch <= hf {
            let top = rng.gen_range(0..=(h - ch as u32)) as f64;
            let left = rng.gen_range(0..=(w - cw as u32)) as f64;
            return CropBox {
                left,
                top,
                width: cw,
                height: ch,
            };
        }
    }
    let in_ratio = wf / hf;
    let (cw, ch) = if in_ratio < ratio.0 {
        (wf, (wf / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((hf * ratio.1).round(), hf)
    } else {
        (wf, hf)
    };
    CropBox {
        left: ((wf - cw) / 2.0).floor(),
        top: ((hf - ch) / 2.0).floor(),
        width: cw,
        height: ch,
    }
}

thread_local! {
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

/// Resamples the `crop` region of `img` to `out_w x out_h` (antialiased Catmull-Rom).
/// The crop box is clamped to the image; errors only for empty images or outputs.
pub fn resize_crop(
    img: &Rgb8Image,
    crop: CropBox,
    out_w: u32,
    out_h: u32,
) -> Result<Rgb8Image, SkipReason> {
    if img.width == 0 || img.height == 0 || out_w == 0 || out_h == 0 {
        return Err(SkipReason::Corrupt(format!(
            "cannot resize {}x{} to {out_w}x{out_h}",
            img.width, img.height
        )));
    }
    let (w, h) = (img.width as f64, img.height as f64);
    let left = crop.left.clamp(0.0, w - 1.0);
    let top = crop.top.clamp(0.0, h - 1.0);
    let cw = crop.width.clamp(1.0, w - left);
    let ch = crop.height.clamp(1.0, h - top);
    let mut dst = fr::images::Image::new(out_w, out_h, fr::PixelType::U8x3);
    let src = fr::images::ImageRef::new(img.width, img.height, &img.data, fr::PixelType::U8x3)
        .map_err(|e| SkipReason::Corrupt(format!("resize source: {e}")))?;
    let opts = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom))
        .crop(left, top, cw, ch);
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &opts))
        .map_err(|e| SkipReason::Corrupt(format!("resize: {e}")))?;
    Ok(Rgb8Image {
        width: out_w,
        height: out_h,
        data: dst.into_vec(),
    })
}

/// Resizes so that the shorter side is at most `max_short` (no-op when already smaller).
pub fn downscale_short_side(img: Rgb8Image, max_short: u32) -> Result<Rgb8Image, SkipReason> {
    let short = img.width.min(img.height);
    if short <= max_short {
        return Ok(img);
    }
    let s = max_short as f64 / short as f64;
    let (w, h) = (
        ((img.width as f64 * s).round() as u32).max(1),
        ((img.height as f64 * s).round() as u32).max(1),
    );
    let full = CropBox {
        left: 0.0,
        top: 0.0,
        width: img.width as f64,
        height: img.height as f64,
    };
    resize_crop(&img, full, w, h)
}

/// Mirrors the image left-right in place.
pub fn flip_horizontal(img: &mut Rgb8Image) {
    let w = img.width as usize;
    for row in img.data.chunks_exact_mut(w * 3) {
        for x in 0..w / 2 {
            let (a, b) = (x * 3, (w - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

/// Writes an HWC RGB8 image as CHW f32 in [-1, 1] (`v / 127.5 - 1`) into `out` (len `3 * h * w`).
pub fn write_chw_f32(img: &Rgb8Image, out: &mut [f32]) {
    let hw = img.width as usize * img.height as usize;
    debug_assert_eq!(out.len(), 3 * hw);
    let (r, rest) = out.split_at_mut(hw);
    let (g, b) = rest.split_at_mut(hw);
    for (i, p) in img.data.chunks_exact(3).enumerate() {
        r[i] = p[0] as f32 * (1.0 / 127.5) - 1.0;
        g[i] = p[1] as f32 * (1.0 / 127.5) - 1.0;
        b[i] = p[2] as f32 * (1.0 / 127.5) - 1.0;
    }
}

/// Writes an HWC RGB8 image as CHW u8 into `out` (len `3 * h * w`).
pub fn write_chw_u8(img: &Rgb8Image, out: &mut [u8]) {
    let hw = img.width as usize * img.height as usize;
    debug_assert_eq!(out.len(), 3 * hw);
    let (r, rest) = out.split_at_mut(hw);
    let (g, b) = rest.split_at_mut(hw);
    for (i, p) in img.data.chunks_exact(3).enumerate() {
        r[i] = p[0];
        g[i] = p[1];
        b[i] = p[2];
    }
}
