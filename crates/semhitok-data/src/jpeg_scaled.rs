//! JPEG decoded at reduced scale in the DCT domain, as Pillow's `Image.draft` does: when the
//! transform needs a much smaller image than the file holds (COYO's photos are often 1-4 Mpix,
//! the target 256 px), libjpeg-turbo's scaled IDCT (here the mozjpeg fork, built from source by
//! the `mozjpeg-sys` crate and linked statically) produces the image at 1/2, 1/4 or 1/8 of its
//! size, skipping most of the IDCT, upsampling and colour conversion.
//!
//! The scale is the smallest `n/8` (n = 1, 2, 4) whose output keeps the shorter side at least
//! `min_short` (the smallest source the transform resizes from without upsampling,
//! [`Transform::min_source_side`](crate::Transform::min_source_side)), Pillow's `draft` rule.
//! When no reduction applies, or libjpeg refuses the file (CMYK, arithmetic coding, damage), the
//! full decoder ([`decode_rgb8`]) decides, so the result and the error are those of the full
//! path.

use crate::error::SkipReason;
use crate::image::{check_pixels, decode_rgb8, is_jpeg, DecodeLimits, Rgb8Image};

/// The scale numerator (of 8) for a `w x h` image whose shorter side must stay >= `min_short`:
/// 8 means no reduction.
pub fn jpeg_scale(w: u32, h: u32, min_short: u32) -> u8 {
    let short = w.min(h) as u64;
    let mut n = 1u8;
    // libjpeg's scaled size is ceil(side * n / 8).
    while n < 8 && (short * n as u64).div_ceil(8) < min_short.max(1) as u64 {
        n *= 2;
    }
    n
}

/// Decodes `bytes` to RGB8, at reduced scale when it is a JPEG whose shorter side is at least
/// twice `min_short` (see the module). Never panics.
pub fn decode_rgb8_scaled(
    bytes: &[u8],
    limits: &DecodeLimits,
    min_short: Option<u32>,
) -> Result<Rgb8Image, SkipReason> {
    let Some(min_short) = min_short else {
        return decode_rgb8(bytes, limits);
    };
    // A file cut short (no end-of-image marker) goes to the strict full decoder: libjpeg would
    // fill the missing rows with grey.
    if !is_jpeg(bytes) || !bytes.ends_with(&[0xFF, 0xD9]) {
        return decode_rgb8(bytes, limits);
    }
    match std::panic::catch_unwind(|| scaled(bytes, limits, min_short)) {
        Ok(Ok(Some(img))) => Ok(img),
        Ok(Err(e)) => Err(e),
        // No reduction, or libjpeg refused the file: the full decoder decides.
        Ok(Ok(None)) | Err(_) => decode_rgb8(bytes, limits),
    }
}

fn scaled(
    bytes: &[u8],
    limits: &DecodeLimits,
    min_short: u32,
) -> Result<Option<Rgb8Image>, SkipReason> {
    let Ok(mut d) = mozjpeg::Decompress::new_mem(bytes) else {
        return Ok(None);
    };
    let (w, h) = d.size();
    // The declared size is checked before any pixel buffer exists.
    check_pixels(w as u64, h as u64, limits)?;
    let n = jpeg_scale(w as u32, h as u32, min_short);
    if n == 8 {
        return Ok(None);
    }
    d.scale(n);
    let Ok(mut s) = d.rgb() else {
        return Ok(None);
    };
    let (ow, oh) = (s.width(), s.height());
    let Ok(data) = s.read_scanlines::<u8>() else {
        return Ok(None);
    };
    let _ = s.finish();
    Ok(Rgb8Image::new(ow as u32, oh as u32, data))
}
