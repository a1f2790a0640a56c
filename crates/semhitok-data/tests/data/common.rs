//! Fixture generators shared by the test modules.

use std::io::Cursor;
use std::path::Path;

/// A smooth colourful RGB test pattern, deterministic in (w, h, salt).
pub fn pattern(w: u32, h: u32, salt: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 255 / w.max(1)) as u8).wrapping_add(salt as u8 * 37),
            ((y * 255 / h.max(1)) as u8).wrapping_add(salt as u8 * 11),
            (((x + y) * 97 + salt * 13) % 256) as u8,
        ])
    })
}

pub fn jpeg_bytes(img: &image::RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    img.write_with_encoder(enc).unwrap();
    out
}

pub fn png_bytes(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// A folder of `n` JPEG "photos" of varied sizes.
pub fn photo_dir(dir: &Path, n: u32) {
    for i in 0..n {
        let (w, h) = (120 + 17 * i, 90 + 13 * (i % 4));
        write(
            &dir.join(format!("photo_{i:02}.jpg")),
            &jpeg_bytes(&pattern(w, h, i), 90),
        );
    }
}
