//! Where the time of `decode_rgb8_scaled` + ADM center crop goes on large JPEGs (issue 14 §2):
//! one core, best of `--reps` passes over the JPEGs of `--photos` (default `.assets/photos`), each
//! file read into memory first (file reading is not timed). Per image, in ms:
//!
//! - `decode_n8`: libjpeg-turbo (mozjpeg-sys) decode at full size;
//! - `decode_chosen`: at the scale `decode_rgb8_scaled` picks for `--size` (`jpeg_scale`);
//! - `decode_n1`: at 1/8 (a 1x1 IDCT: only the DC term; upsampling and colour conversion on
//!   1/64 of the pixels), which bounds entropy decoding plus fixed per-file costs from above;
//! - `crop_resize`: `adm_center_crop_box` + `resize_crop` from the image at the chosen scale.
//!
//! `decode_chosen - decode_n1` is then the IDCT / upsampling / colour conversion of the chosen
//! scale. Prints one JSON object. Run: `cargo run --release -p semhitok-data --example jpeg_split`.

use std::path::PathBuf;
use std::time::Instant;

use semhitok_data::transform::{adm_center_crop_box, resize_crop};
use semhitok_data::{decode_rgb8_scaled, jpeg_scale, DecodeLimits};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Decodes at scale `n/8` to RGB; returns the output size.
fn decode_at(bytes: &[u8], n: u8) -> (usize, usize) {
    let mut d = mozjpeg::Decompress::new_mem(bytes).expect("header");
    d.scale(n);
    let mut s = d.rgb().expect("start");
    let size = (s.width(), s.height());
    let data: Vec<u8> = s.read_scanlines().expect("scanlines");
    assert_eq!(data.len(), size.0 * size.1 * 3);
    let _ = s.finish();
    size
}

/// Best of `reps` wall-clock passes of `f` over all files, in ms per file.
fn best_ms(files: &[Vec<u8>], reps: usize, mut f: impl FnMut(&[u8])) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        for b in files {
            f(b);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e3 / files.len() as f64
}

fn main() {
    let dir = PathBuf::from(arg("--photos").unwrap_or_else(|| ".assets/photos".into()));
    let size: u32 = arg("--size").map_or(256, |s| s.parse().expect("--size"));
    let reps: usize = arg("--reps").map_or(3, |s| s.parse().expect("--reps"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("photos dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        })
        .collect();
    paths.sort();
    let files: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let lim = DecodeLimits::default();
    let (mut portrait, mut mpix) = (0usize, 0.0f64);
    let chosen: Vec<u8> = files
        .iter()
        .map(|b| {
            let d = mozjpeg::Decompress::new_mem(b).expect("header");
            let (w, h) = d.size();
            portrait += usize::from(h > w);
            mpix += (w * h) as f64 / 1e6;
            jpeg_scale(w as u32, h as u32, size)
        })
        .collect();
    let mut i = 0;
    let decode_chosen = best_ms(&files, reps, |b| {
        decode_at(b, chosen[i % files.len()]);
        i += 1;
    });
    let decode_n1 = best_ms(&files, reps, |b| {
        decode_at(b, 1);
    });
    let decode_n8 = best_ms(&files, reps, |b| {
        decode_at(b, 8);
    });
    let scaled = best_ms(&files, reps, |b| {
        decode_rgb8_scaled(b, &lim, Some(size)).expect("decode");
    });
    let imgs: Vec<_> = files
        .iter()
        .map(|b| decode_rgb8_scaled(b, &lim, Some(size)).expect("decode"))
        .collect();
    let mut k = 0;
    let crop_resize = best_ms(&files, reps, |_| {
        let img = &imgs[k % imgs.len()];
        k += 1;
        resize_crop(
            img,
            adm_center_crop_box(img.width, img.height, size),
            size,
            size,
        )
        .expect("resize");
    });
    let n = files.len();
    println!(
        "{}",
        serde_json::json!({
            "files": n, "portrait": portrait, "mean_mpix": mpix / n as f64, "size": size,
            "scales_n": chosen, "ms_per_image": {
                "decode_n8": decode_n8, "decode_chosen": decode_chosen, "decode_n1": decode_n1,
                "decode_rgb8_scaled": scaled, "crop_resize": crop_resize,
                "pipeline": scaled + crop_resize,
            }
        })
    );
}
