//! Decoding: every pixel format to RGB8, every bad input to its reason, never a panic.

use proptest::prelude::*;
use semhitok_data::{decode_rgb8, DecodeLimits, SkipReason};

use super::common::*;

fn reason(bytes: &[u8]) -> Option<&'static str> {
    decode_rgb8(bytes, &DecodeLimits::default())
        .err()
        .map(|r| r.as_str())
}

#[test]
fn hostile_cases_get_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (name, want) in hostile_files(dir.path()) {
        let got = match std::fs::read(dir.path().join(&name)) {
            Ok(b) => reason(&b),
            Err(_) => Some("unreadable"),
        };
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn pixel_formats_become_8bit_rgb() {
    let lim = DecodeLimits::default();
    // CMYK (0, 255, 255, 0) is red; Adobe CMYK JPEGs store inverted values, and either way the
    // decoder must give 3 channels of the right size with red dominant.
    let img = decode_rgb8(&cmyk_jpeg(24, 16, [0, 255, 255, 0]), &lim).unwrap();
    assert_eq!(
        (img.width, img.height, img.data.len()),
        (24, 16, 24 * 16 * 3)
    );
    let p = img.pixel(12, 8);
    assert!(
        p[0] > 200 && p[1] < 60 && p[2] < 60,
        "CMYK red decoded as {p:?}"
    );

    let g = decode_rgb8(
        &png_bytes(&image::DynamicImage::ImageLuma8(
            image::GrayImage::from_pixel(5, 4, image::Luma([77])),
        )),
        &lim,
    )
    .unwrap();
    assert_eq!(g.pixel(2, 2), [77, 77, 77]);

    let rgb16 = image::ImageBuffer::from_fn(20, 2, |x, _| image::Rgb([x as u16 * 3000, 0, 65535]));
    let d = decode_rgb8(&png_bytes(&image::DynamicImage::ImageRgb16(rgb16)), &lim).unwrap();
    assert_eq!(
        d.pixel(10, 1),
        [((10u32 * 3000 * 255 + 32767) / 65535) as u8, 0, 255]
    );

    let pal = decode_rgb8(&palette_png(20, 12), &lim).unwrap();
    assert_eq!(
        (pal.pixel(0, 0), pal.pixel(19, 11)),
        ([255, 0, 0], [0, 0, 255])
    );

    let rgba = image::RgbaImage::from_pixel(3, 3, image::Rgba([10, 20, 30, 0]));
    let a = decode_rgb8(&png_bytes(&image::DynamicImage::ImageRgba8(rgba)), &lim).unwrap();
    assert_eq!(
        a.pixel(1, 1),
        [10, 20, 30],
        "alpha dropped like PIL convert('RGB')"
    );

    let j = decode_rgb8(&jpeg_bytes(&pattern(33, 17, 2), 95), &lim).unwrap();
    let want = pattern(33, 17, 2).get_pixel(16, 8).0;
    let got = j.pixel(16, 8);
    for c in 0..3 {
        assert!(
            (want[c] as i32 - got[c] as i32).abs() <= 12,
            "jpeg {want:?} vs {got:?}"
        );
    }
}

#[test]
fn pixel_limit_is_configurable() {
    let b = jpeg_bytes(&pattern(100, 100, 1), 90);
    assert!(decode_rgb8(
        &b,
        &DecodeLimits {
            max_pixels: 10_000,
            ..Default::default()
        }
    )
    .is_ok());
    assert_eq!(
        decode_rgb8(
            &b,
            &DecodeLimits {
                max_pixels: 9_999,
                ..Default::default()
            }
        )
        .unwrap_err(),
        SkipReason::TooLarge {
            width: 100,
            height: 100
        }
    );
    let p = png_bytes(&image::DynamicImage::ImageRgb8(pattern(100, 100, 1)));
    assert!(matches!(
        decode_rgb8(
            &p,
            &DecodeLimits {
                max_pixels: 5_000,
                ..Default::default()
            }
        ),
        Err(SkipReason::TooLarge { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_rgb8(&bytes, &DecodeLimits::default());
    }

    #[test]
    fn mutated_images_never_panic(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16),
        cut in any::<usize>(),
    ) {
        let mut b = match which {
            0 => jpeg_bytes(&pattern(24, 20, 4), 80),
            1 => png_bytes(&image::DynamicImage::ImageRgb8(pattern(24, 20, 4))),
            _ => palette_png(16, 9),
        };
        for (i, x) in flips {
            let n = b.len();
            b[i % n] ^= x;
        }
        let n = b.len();
        b.truncate(1 + cut % n);
        if let Ok(img) = decode_rgb8(&b, &DecodeLimits { max_pixels: 1 << 22, ..Default::default() }) {
            prop_assert_eq!(img.data.len(), img.width as usize * img.height as usize * 3);
        }
    }
}

/// Issue 13 item 7: a FIFO named `*.jpg` is skipped, never opened (it would block forever), and a
/// link to `/dev/zero` is never read (not a regular file); an oversized file is refused unread.
#[test]
fn non_regular_and_oversized_files_are_skips_not_hangs() {
    use semhitok_data::read_image_file;
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("pipe.jpg");
    let st = std::process::Command::new("mkfifo").arg(&fifo).status();
    if st.is_ok_and(|s| s.success()) {
        let e = read_image_file(&fifo, &DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
    let zero = tmp.path().join("zero.jpg");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let e = read_image_file(&zero, &DecodeLimits::default()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let big = tmp.path().join("big.jpg");
    std::fs::write(&big, vec![0u8; 1000]).unwrap();
    let small = DecodeLimits {
        max_file_bytes: 999,
        ..Default::default()
    };
    let e = read_image_file(&big, &small).unwrap_err();
    assert!(e.to_string().contains("over the 999-byte limit"), "{e}");
    assert_eq!(
        read_image_file(&big, &DecodeLimits::default())
            .unwrap()
            .len(),
        1000
    );
}

/// DCT-domain scaled decoding: the scale keeps the shorter side >= the minimum and is the
/// smallest such n/8; the image matches the full decode resized; files that are not JPEG, are
/// cut short, or need no reduction take the full path (same result, same errors).
#[test]
fn scaled_jpeg_decoding_keeps_the_shorter_side_and_the_content() {
    use semhitok_data::{decode_rgb8_scaled, jpeg_scale};
    let lim = DecodeLimits::default();
    let src = pattern(1200, 800, 3);
    let bytes = jpeg_bytes(&src, 92);
    // 800 * 2 / 8 = 200 >= 150; 800 * 1 / 8 = 100 < 150.
    assert_eq!(jpeg_scale(1200, 800, 150), 2);
    assert_eq!(jpeg_scale(1200, 800, 100), 1);
    assert_eq!(jpeg_scale(1200, 800, 500), 8);
    let img = decode_rgb8_scaled(&bytes, &lim, Some(150)).unwrap();
    assert_eq!((img.width, img.height), (300, 200));
    // Against the full decode box-averaged 4x4 (the scaled IDCT is a low-pass at 1/4).
    let full = decode_rgb8(&bytes, &lim).unwrap();
    let mut err = 0u64;
    for y in 0..200u32 {
        for x in 0..300u32 {
            for c in 0..3 {
                let mut s = 0u32;
                for dy in 0..4 {
                    for dx in 0..4 {
                        s += full.pixel(x * 4 + dx, y * 4 + dy)[c] as u32;
                    }
                }
                err += (s as i64 / 16 - img.pixel(x, y)[c] as i64).unsigned_abs();
            }
        }
    }
    let mae = err as f64 / (300.0 * 200.0 * 3.0);
    assert!(
        mae < 4.0,
        "scaled decode differs from the box-filtered full decode by {mae}"
    );
    // No reduction possible or wanted: the full decode, bit for bit.
    assert_eq!(decode_rgb8_scaled(&bytes, &lim, Some(500)).unwrap(), full);
    assert_eq!(decode_rgb8_scaled(&bytes, &lim, None).unwrap(), full);
    // Cut short: the strict full decoder's verdict, never a grey-filled image.
    let cut = &bytes[..bytes.len() / 2];
    assert_eq!(
        decode_rgb8_scaled(cut, &lim, Some(150)).err(),
        decode_rgb8(cut, &lim).err()
    );
    // Over the pixel limit: refused from the header, before any pixel buffer.
    let small = DecodeLimits {
        max_pixels: 1000,
        ..lim
    };
    assert_eq!(
        decode_rgb8_scaled(&bytes, &small, Some(150))
            .unwrap_err()
            .as_str(),
        "too_many_pixels"
    );
    // Not a JPEG: the full path.
    let png = png_bytes(&image::DynamicImage::ImageRgb8(pattern(64, 48, 1)));
    assert_eq!(
        decode_rgb8_scaled(&png, &lim, Some(8)).unwrap(),
        decode_rgb8(&png, &lim).unwrap()
    );
}

proptest! {
    #[test]
    fn jpeg_scale_is_the_smallest_that_keeps_the_side(w in 1u32..20000, h in 1u32..20000, m in 1u32..2000) {
        use semhitok_data::jpeg_scale;
        let n = jpeg_scale(w, h, m) as u64;
        prop_assert!([1, 2, 4, 8].contains(&n));
        let short = w.min(h) as u64;
        if n < 8 {
            prop_assert!((short * n).div_ceil(8) >= m as u64);
        }
        if n > 1 {
            prop_assert!((short * (n / 2)).div_ceil(8) < m as u64);
        }
    }
}
