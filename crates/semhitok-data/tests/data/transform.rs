//! Transforms: ADM center-crop geometry, random resized crop bounds, flips, NCHW writers.

use rand::SeedableRng;
use semhitok_data::image::Rgb8Image;
use semhitok_data::transform::*;

#[test]
fn adm_center_crop_box_matches_guided_diffusion() {
    // 500x375 -> short side 256: resized to round(500*256/375)=341 x 256, crop x offset (341-256)//2=42.
    let b = adm_center_crop_box(500, 375, 256);
    let s = 341.0 / 500.0;
    assert!((b.left - 42.0 / s).abs() < 1e-9 && b.top == 0.0);
    assert!((b.width - 256.0 / s).abs() < 1e-9 && (b.height - 375.0).abs() < 1e-9);
    // Portrait: crop on the vertical axis.
    let b = adm_center_crop_box(300, 600, 100);
    assert_eq!((b.left, b.width), (0.0, 300.0));
    assert!((b.top - 150.0).abs() < 1e-9 && (b.height - 300.0).abs() < 1e-9);
}

#[test]
fn random_resized_crop_stays_inside() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for (w, h) in [(500, 375), (64, 640), (640, 64), (7, 5)] {
        for _ in 0..200 {
            let b = random_resized_crop_box(w, h, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(b.left >= 0.0 && b.top >= 0.0 && b.width >= 1.0 && b.height >= 1.0);
            assert!(
                b.left + b.width <= w as f64 && b.top + b.height <= h as f64,
                "{b:?} in {w}x{h}"
            );
        }
    }
}

#[test]
fn flat_image_stays_flat_and_nchw_is_planar() {
    let img = Rgb8Image::new(50, 30, [10u8, 128, 255].repeat(50 * 30)).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for t in [
        Transform::center_crop(16),
        Transform::random_resized_crop(16),
    ] {
        let out = t.apply(&img, &mut rng).unwrap();
        assert_eq!((out.width, out.height), (16, 16));
        assert!(out.data.chunks(3).all(|p| p == [10, 128, 255]), "{t:?}");
        let mut f = vec![0f32; 3 * 256];
        write_chw_f32(&out, &mut f);
        assert!((f[0] - (10.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert!((f[256] - (128.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert_eq!(f[512], 1.0);
        let mut u = vec![0u8; 3 * 256];
        write_chw_u8(&out, &mut u);
        assert_eq!((u[0], u[256], u[767]), (10, 128, 255));
    }
}

#[test]
fn hflip_mirrors_rows() {
    let data: Vec<u8> = (0..4 * 2 * 3).map(|i| i as u8).collect();
    let mut img = Rgb8Image::new(4, 2, data.clone()).unwrap();
    flip_horizontal(&mut img);
    assert_eq!(
        img.pixel(0, 1),
        Rgb8Image::new(4, 2, data).unwrap().pixel(3, 1)
    );
}
