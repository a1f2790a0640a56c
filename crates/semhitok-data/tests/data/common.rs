//! Fixture generators shared by the test modules.

use std::io::Cursor;
use std::path::Path;

/// A smooth colourful RGB test pattern, deterministic in (w, h, salt).
pub fn pattern(w: u32, h: u32, salt: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 255 / w.max(1)) as u8).wrapping_add((salt.wrapping_mul(37) % 256) as u8),
            ((y * 255 / h.max(1)) as u8).wrapping_add((salt.wrapping_mul(11) % 256) as u8),
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

/// A CMYK JPEG (Adobe APP14) of a flat colour, via jpeg-encoder.
pub fn cmyk_jpeg(w: u16, h: u16, cmyk: [u8; 4]) -> Vec<u8> {
    let px: Vec<u8> = (0..w as usize * h as usize).flat_map(|_| cmyk).collect();
    let mut out = Vec::new();
    let enc = jpeg_encoder::Encoder::new(&mut out, 95);
    enc.encode(&px, w, h, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    out
}

/// A palette PNG with two colours (red, blue), left half red.
pub fn palette_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![255, 0, 0, 0, 0, 255]);
        let mut wr = enc.write_header().unwrap();
        let data: Vec<u8> = (0..h)
            .flat_map(|_| (0..w).map(move |x| u8::from(x >= w / 2)))
            .collect();
        wr.write_image_data(&data).unwrap();
    }
    out
}

/// A PNG header declaring `w x h` (then garbage): the decompression-bomb case.
pub fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    let mut crc = flate2::Crc::new();
    crc.update(&ihdr);
    out.extend_from_slice(&crc.sum().to_be_bytes());
    out.extend_from_slice(&[0u8; 64]);
    out
}

/// A valid JPEG whose SOF header is patched to declare `w x h`.
pub fn bomb_jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut b = jpeg_bytes(&pattern(16, 16, 1), 90);
    let i = b
        .windows(2)
        .position(|x| x == [0xFF, 0xC0])
        .expect("baseline SOF0");
    b[i + 5..i + 7].copy_from_slice(&h.to_be_bytes());
    b[i + 7..i + 9].copy_from_slice(&w.to_be_bytes());
    b
}

/// Every hostile case of the issue, written into `dir` with the reason each must get
/// (`None`: decoded after conversion).
pub fn hostile_files(dir: &Path) -> Vec<(String, Option<&'static str>)> {
    let good = jpeg_bytes(&pattern(40, 30, 3), 90);
    let mut cases: Vec<(String, Vec<u8>, Option<&'static str>)> = vec![
        ("good.jpg".into(), good.clone(), None),
        (
            "truncated.jpg".into(),
            good[..good.len() / 2].to_vec(),
            Some("corrupt_image"),
        ),
        ("zero.jpg".into(), vec![], Some("empty_file")),
        (
            "text.jpg".into(),
            b"hello, I am not an image\n".to_vec(),
            Some("not_an_image"),
        ),
        ("cmyk.jpg".into(), cmyk_jpeg(24, 16, [0, 255, 255, 0]), None),
        (
            "rgb16.png".into(),
            png_bytes(&image::DynamicImage::ImageRgb16(
                image::ImageBuffer::from_fn(20, 12, |x, _| image::Rgb([x as u16 * 3000, 0, 65535])),
            )),
            None,
        ),
        (
            "gray.png".into(),
            png_bytes(&image::DynamicImage::ImageLuma8(
                image::GrayImage::from_pixel(20, 12, image::Luma([77])),
            )),
            None,
        ),
        (
            "gray_alpha.png".into(),
            png_bytes(&image::DynamicImage::ImageLumaA8(
                image::GrayAlphaImage::from_pixel(20, 12, image::LumaA([90, 10])),
            )),
            None,
        ),
        (
            "rgba.png".into(),
            png_bytes(&image::DynamicImage::ImageRgba8(
                image::RgbaImage::from_pixel(20, 12, image::Rgba([1, 2, 3, 0])),
            )),
            None,
        ),
        ("palette.png".into(), palette_png(20, 12), None),
        (
            "bomb.png".into(),
            bomb_png(100_000, 100_000),
            Some("too_many_pixels"),
        ),
        (
            "bomb.jpg".into(),
            bomb_jpeg(60_000, 60_000),
            Some("too_many_pixels"),
        ),
        (
            "corrupt.png".into(),
            {
                let mut p = palette_png(20, 12);
                let n = p.len();
                p[n - 20] ^= 0xFF;
                p[40] ^= 0x55;
                p
            },
            Some("corrupt_image"),
        ),
    ];
    let mut out = Vec::new();
    for (name, bytes, reason) in cases.drain(..) {
        write(&dir.join(&name), &bytes);
        out.push((name, reason));
    }
    // Unreadable: a dangling symbolic link with an image extension.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.join("does-not-exist.jpg"), dir.join("dangling.jpg"))
            .unwrap();
        out.push(("dangling.jpg".into(), Some("unreadable")));
    }
    out
}

/// A tar archive of `(name, bytes)` members (regular files, mode 644).
pub fn tar_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// `n_shards` shards `{s:05}.tar` of `per` good samples each (key `k{s}_{i:03}`, a JPEG and
/// a caption); returns every key.
pub fn clean_shards(dir: &Path, n_shards: usize, per: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for s in 0..n_shards {
        let mut members = Vec::new();
        for i in 0..per {
            let key = format!("k{s}_{i:03}");
            let img = jpeg_bytes(&pattern(20 + i as u32 % 5, 16, (s * per + i) as u32), 80);
            members.push((format!("{key}.jpg"), img));
            members.push((
                format!("{key}.txt"),
                format!("caption of {key}").into_bytes(),
            ));
            keys.push(key);
        }
        write(&dir.join(format!("{s:05}.tar")), &tar_of(&members));
    }
    keys
}
