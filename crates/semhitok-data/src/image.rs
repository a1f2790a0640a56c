//! Decoding any supported image file into 8-bit RGB, with a decompression-bomb guard.
//!
//! JPEG goes through zune-jpeg (SIMD IDCT and colour conversion; CMYK/YCCK -> RGB, grayscale ->
//! RGB); PNG, WebP, GIF, BMP and TIFF go through the `image` crate. Every pixel format (gray,
//! gray+alpha, RGBA, 16-bit, palette) becomes 8-bit RGB; alpha is dropped exactly as Pillow's
//! `convert("RGB")` does (no compositing). The declared width x height is checked against
//! [`DecodeLimits::max_pixels`] *before* any pixel buffer is allocated.

use std::io::Cursor;

use crate::error::SkipReason;

/// An 8-bit RGB image, row-major HWC (`data.len() == width * height * 3`).
#[derive(Clone, PartialEq, Eq)]
pub struct Rgb8Image {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Rgb8Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rgb8Image({}x{})", self.width, self.height)
    }
}

impl Rgb8Image {
    /// Wraps an HWC buffer; `None` if its length is not `width * height * 3`.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Option<Self> {
        (data.len() == width as usize * height as usize * 3).then_some(Self {
            width,
            height,
            data,
        })
    }
    /// The pixel at (x, y).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecodeLimits {
    /// Largest accepted width x height. The default, 178 956 970, is Pillow's
    /// `DecompressionBombError` threshold (2 x `Image.MAX_IMAGE_PIXELS`).
    pub max_pixels: u64,
    /// Largest accepted encoded file, in bytes (default 256 MiB, far above any real photo): a
    /// file is never read past it, so a link to `/dev/zero` cannot exhaust memory.
    pub max_file_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 178_956_970,
            max_file_bytes: 256 << 20,
        }
    }
}

/// Reads an image file within `limits.max_file_bytes`. Only regular files are opened (links are
/// followed first): a FIFO, device or directory named `*.jpg` is a skip, never a hang.
pub fn read_image_file(
    path: &std::path::Path,
    limits: &DecodeLimits,
) -> Result<Vec<u8>, SkipReason> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(SkipReason::Unreadable(format!(
            "not a regular file ({:?})",
            meta.file_type()
        )));
    }
    if meta.len() > limits.max_file_bytes {
        return Err(SkipReason::Unreadable(format!(
            "{} bytes, over the {}-byte limit per image",
            meta.len(),
            limits.max_file_bytes
        )));
    }
    let f = std::fs::File::open(path).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(limits.max_file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(SkipReason::Unreadable(format!(
            "grew past the {}-byte limit per image while read",
            limits.max_file_bytes
        )));
    }
    Ok(bytes)
}

pub(crate) fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF
}

/// Decodes an encoded image (format sniffed from the bytes, never from the file name) to RGB8.
///
/// Never panics: a panic inside a decoder is caught and reported as [`SkipReason::Corrupt`].
pub fn decode_rgb8(bytes: &[u8], limits: &DecodeLimits) -> Result<Rgb8Image, SkipReason> {
    std::panic::catch_unwind(|| decode_inner(bytes, limits))
        .unwrap_or_else(|_| Err(SkipReason::Corrupt("decoder panicked".into())))
}

fn decode_inner(bytes: &[u8], limits: &DecodeLimits) -> Result<Rgb8Image, SkipReason> {
    if bytes.is_empty() {
        return Err(SkipReason::Empty);
    }
    if is_jpeg(bytes) {
        decode_jpeg(bytes, limits)
    } else {
        decode_other(bytes, limits)
    }
}

pub(crate) fn check_pixels(
    width: u64,
    height: u64,
    limits: &DecodeLimits,
) -> Result<(), SkipReason> {
    if width == 0 || height == 0 {
        return Err(SkipReason::Corrupt(format!(
            "zero dimension {width}x{height}"
        )));
    }
    if width.saturating_mul(height) > limits.max_pixels {
        return Err(SkipReason::TooLarge { width, height });
    }
    Ok(())
}

fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<Rgb8Image, SkipReason> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16)
        .set_strict_mode(true);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    dec.decode_headers()
        .map_err(|e| SkipReason::Corrupt(format!("jpeg header: {e:?}")))?;
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| SkipReason::Corrupt("jpeg without dimensions".into()))?;
    check_pixels(w as u64, h as u64, limits)?;
    let pixels = dec
        .decode()
        .map_err(|e| SkipReason::Corrupt(format!("jpeg: {e:?}")))?;
    let out_cs = dec.output_colorspace().unwrap_or(ColorSpace::RGB);
    let (w, h) = (w as u32, h as u32);
    let n = w as usize * h as usize;
    let data = match out_cs.num_components() {
        3 => pixels,
        1 => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        4 => pixels
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        c => {
            return Err(SkipReason::Corrupt(format!(
                "jpeg with {c} output components"
            )))
        }
    };
    if data.len() != n * 3 {
        return Err(SkipReason::Corrupt(format!(
            "jpeg decoded {} bytes for {w}x{h}",
            data.len()
        )));
    }
    Ok(Rgb8Image {
        width: w,
        height: h,
        data,
    })
}

fn decode_other(bytes: &[u8], limits: &DecodeLimits) -> Result<Rgb8Image, SkipReason> {
    // PNG: check the IHDR dimensions ourselves, before any decoder state exists.
    if bytes.len() >= 24 && bytes[..8] == [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A] {
        let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        check_pixels(w as u64, h as u64, limits)?;
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    if reader.format().is_none() {
        return Err(SkipReason::NotAnImage);
    }
    let (w, h) = reader.into_dimensions().map_err(|e| match e {
        image::ImageError::Limits(l) => {
            SkipReason::Corrupt(format!("header over decoder limits: {l}"))
        }
        other => SkipReason::Corrupt(format!("header: {other}")),
    })?;
    check_pixels(w as u64, h as u64, limits)?;
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(w);
    lim.max_image_height = Some(h);
    // Room for a 16-bit RGBA frame plus the 8-bit RGB copy.
    lim.max_alloc = Some((w as u64 * h as u64).saturating_mul(12).max(1 << 20));
    reader.limits(lim);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => SkipReason::TooLarge {
            width: w as u64,
            height: h as u64,
        },
        image::ImageError::Unsupported(u) => SkipReason::Corrupt(format!("unsupported: {u}")),
        other => SkipReason::Corrupt(other.to_string()),
    })?;
    let rgb = img.into_rgb8();
    let (width, height) = rgb.dimensions();
    Ok(Rgb8Image {
        width,
        height,
        data: rgb.into_raw(),
    })
}
