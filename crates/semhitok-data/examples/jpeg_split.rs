//! Where the time of `decode_rgb8_scaled` + ADM center crop goes on large JPEGs (issue 14 §2):
//! one core, best of `--reps` passes over the JPEGs of `--photos` (default `.assets/photos`), each
//! file read into memory first (file reading is not timed). Per image, in ms:
//!
//! - `decode_n8`: libjpeg-turbo (mozjpeg-sys) decode at full size;
//! - `decode_chosen`: at the scale `decode_rgb8_scaled` picks for `--size` (`jpeg_scale`);
//! - `decode_n1`: at 1/8 (a 1x1 IDCT: only the DC term; upsampling and colour conversion on
//!   1/64 of the pixels), which bounds entropy decoding plus fixed per-file costs from above;
//! - `crop_resize`: `adm_center_crop_box` + `resize_crop` from the image at the chosen scale;
//! - `entropy_only`: `jpeg_read_coefficients`: Huffman decoding into the DCT coefficient arrays
//!   and nothing else (no dequantization, IDCT, upsampling or colour conversion): what any
//!   libjpeg-turbo decode of the file must spend, at every scale.
//!
//! It also counts progressive files and files with restart markers (the only baseline files in
//! which entropy decoding of skipped rows could be avoided).
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

/// The file's header facts from its marker segments before the first scan: (progressive: an
/// SOF2 frame, restart interval in MCUs from DRI, 0 if none).
fn header_facts(bytes: &[u8]) -> (bool, u32) {
    let (mut progressive, mut restart, mut p) = (false, 0u32, 2usize);
    while p + 4 <= bytes.len() && bytes[p] == 0xFF {
        let marker = bytes[p + 1];
        let len = u16::from_be_bytes([bytes[p + 2], bytes[p + 3]]) as usize;
        match marker {
            0xC2 => progressive = true,
            0xDD if p + 6 <= bytes.len() => {
                restart = u16::from_be_bytes([bytes[p + 4], bytes[p + 5]]) as u32
            }
            0xDA => break,
            _ => {}
        }
        p += 2 + len;
    }
    (progressive, restart)
}

/// Entropy decoding alone: `jpeg_read_coefficients`, then the arrays are dropped.
fn entropy_only(bytes: &[u8]) {
    use mozjpeg_sys::*;
    // SAFETY: a fresh, zeroed decompress struct with the standard error manager (which exits
    // the process on a corrupt file: acceptable in this example, the files are the embedded
    // photos), reading from `bytes`, which outlives the struct; `jpeg_read_coefficients` returns arrays owned by the
    // decompress struct's memory pool, freed by `jpeg_destroy_decompress`.
    unsafe {
        let mut err: jpeg_error_mgr = std::mem::zeroed();
        let mut d: jpeg_decompress_struct = std::mem::zeroed();
        d.common.err = jpeg_std_error(&mut err);
        jpeg_create_decompress(&mut d);
        jpeg_mem_src(&mut d, bytes.as_ptr(), bytes.len() as _);
        jpeg_read_header(&mut d, 1);
        let coefs = jpeg_read_coefficients(&mut d);
        assert!(!coefs.is_null(), "jpeg_read_coefficients failed");
        jpeg_finish_decompress(&mut d);
        jpeg_destroy_decompress(&mut d);
    }
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
    let facts: Vec<(bool, u32)> = files.iter().map(|b| header_facts(b)).collect();
    let progressive = facts.iter().filter(|f| f.0).count();
    let with_restarts = facts.iter().filter(|f| f.1 > 0).count();
    let entropy = best_ms(&files, reps, entropy_only);
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
            "files": n, "portrait": portrait, "progressive": progressive,
            "with_restart_markers": with_restarts, "mean_mpix": mpix / n as f64, "size": size,
            "scales_n": chosen, "ms_per_image": {
                "decode_n8": decode_n8, "decode_chosen": decode_chosen, "decode_n1": decode_n1,
                "decode_rgb8_scaled": scaled, "crop_resize": crop_resize, "entropy_only": entropy,
                "pipeline": scaled + crop_resize,
            }
        })
    );
}
