//! Throughput of the decode + ADM center crop pipeline (images/s on one core), run by
//! `cargo xtask bench data` next to `scripts/bench_data_pillow.py` on the same files.
//!
//! Inputs: `--photos DIR` (the embedded photos) and `--work DIR`, where this program writes JPEG
//! re-encodes of the photos at ImageNet-like sizes (shorter side 375, longer side capped at 500,
//! quality 90) once. Per image, like the Pillow side: read the file, decode to RGB8, ADM center
//! crop to `--size`, write a u8 CHW array. One thread. It also writes the first 8 outputs of each
//! set to `DIR/rust_<set>.u8` (HWC) so the Pillow script can report the pixel agreement, and
//! measures the full `Loader` (f32 NCHW batches, all cores) for reference. Prints one JSON object.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use semhitok_data::transform::{adm_center_crop_box, resize_crop, write_chw_u8};
use semhitok_data::{
    decode_rgb8, decode_rgb8_scaled, DecodeLimits, ImageFolder, ImageFolderConfig, LoaderConfig,
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask assets`)", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let e = p
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            e == "jpg" || e == "jpeg"
        })
        .collect();
    v.sort();
    v
}

/// JPEG re-encodes at ImageNet-like sizes (class folder `x/` so ImageFolder can read it).
fn make_imagenet_like(photos: &[PathBuf], out: &Path) -> Vec<PathBuf> {
    let dir = out.join("imagenet_like").join("x");
    std::fs::create_dir_all(&dir).expect("create work dir");
    let lim = DecodeLimits::default();
    for p in photos {
        let dst = dir.join(p.file_name().unwrap());
        if dst.exists() {
            continue;
        }
        let img = decode_rgb8(&std::fs::read(p).expect("read photo"), &lim).expect("decode photo");
        let (w, h) = (img.width as f64, img.height as f64);
        let s = (375.0 / w.min(h)).min(500.0 / w.max(h));
        let (nw, nh) = ((w * s).round() as u32, (h * s).round() as u32);
        let full = semhitok_data::transform::CropBox {
            left: 0.0,
            top: 0.0,
            width: w,
            height: h,
        };
        let small = resize_crop(&img, full, nw, nh).expect("resize");
        let buf = image::RgbImage::from_raw(nw, nh, small.data).expect("rgb buffer");
        let mut bytes = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90);
        buf.write_with_encoder(enc).expect("encode");
        std::fs::write(&dst, bytes).expect("write re-encode");
    }
    list(&dir)
}

/// One image through the pipeline; returns the HWC crop (for the agreement check).
fn pipeline(p: &Path, size: u32, lim: &DecodeLimits, chw: &mut [u8], scaled: bool) -> Vec<u8> {
    let bytes = std::fs::read(p).expect("read");
    let img = if scaled {
        decode_rgb8_scaled(&bytes, lim, Some(size)).expect("decode")
    } else {
        decode_rgb8(&bytes, lim).expect("decode")
    };
    let crop = resize_crop(
        &img,
        adm_center_crop_box(img.width, img.height, size),
        size,
        size,
    )
    .expect("resize");
    write_chw_u8(&crop, chw);
    crop.data
}

fn bench_set(
    name: &str,
    files: &[PathBuf],
    size: u32,
    reps: usize,
    work: &Path,
) -> serde_json::Value {
    let lim = DecodeLimits::default();
    let mut chw = vec![0u8; 3 * size as usize * size as usize];
    let mut mpix = 0.0;
    for p in files {
        let d = image::image_dimensions(p).expect("dims");
        mpix += d.0 as f64 * d.1 as f64 / 1e6;
    }
    let mut res = serde_json::json!({"n": files.len(), "mean_mpix": mpix / files.len() as f64});
    for suffix in ["", "_scaled"] {
        let scaled = !suffix.is_empty();
        let mut first = Vec::new();
        for p in files.iter().take(8) {
            first.extend_from_slice(&pipeline(p, size, &lim, &mut chw, scaled));
        }
        std::fs::write(work.join(format!("rust_{name}{suffix}.u8")), &first)
            .expect("write outputs");
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            for p in files {
                pipeline(p, size, &lim, &mut chw, scaled);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        res[format!("rust{suffix}_images_per_s")] = (files.len() as f64 / best).into();
    }
    res
}

fn main() {
    let photos_dir = PathBuf::from(arg("--photos").unwrap_or_else(|| ".assets/photos".into()));
    let work = PathBuf::from(arg("--work").unwrap_or_else(|| "target/bench-data".into()));
    let size: u32 = arg("--size").map_or(256, |s| s.parse().expect("--size"));
    let reps: usize = arg("--reps").map_or(3, |s| s.parse().expect("--reps"));
    std::fs::create_dir_all(&work).expect("create work dir");
    let photos = list(&photos_dir);
    assert!(
        !photos.is_empty(),
        "no JPEG photos in {}",
        photos_dir.display()
    );
    let small = make_imagenet_like(&photos, &work);
    let res_photos = bench_set("photos", &photos, size, reps, &work);
    let res_small = bench_set("imagenet_like", &small, size, reps, &work);

    // The full loader on all cores (f32 NCHW batches), for reference.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ds = ImageFolder::open(work.join("imagenet_like"), ImageFolderConfig::eval(size))
        .expect("folder");
    let n = ds.files().len();
    let lc = LoaderConfig {
        workers: threads,
        ..LoaderConfig::eval(16)
    };
    let src: Arc<dyn semhitok_data::IndexedSource> = Arc::new(ds);
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        let got: usize = semhitok_data::Loader::new(Arc::clone(&src), lc.clone())
            .expect("loader")
            .map(|b| b.len())
            .sum();
        assert_eq!(got, n);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let out = serde_json::json!({
        "size": size,
        "reps": reps,
        "photos": res_photos,
        "imagenet_like": res_small,
        "loader_threads": threads,
        "loader_imagenet_like_images_per_s": n as f64 / best,
        "photos_dir": photos_dir,
        "imagenet_like_dir": work.join("imagenet_like/x"),
    });
    println!("{out}");
}
