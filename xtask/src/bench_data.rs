//! `cargo xtask bench data`: images/s per core of semhitok-data's decode + ADM center crop to
//! 256 x 256 versus Pillow doing the same on the same files, in one run.
//!
//! Builds `crates/semhitok-data/examples/bench_data.rs` in release (it also writes JPEG
//! re-encodes of the photos at ImageNet-like sizes into `target/bench-data/`), runs it and
//! `scripts/bench_data_pillow.py` (Pillow + numpy from `.libtorch/`), prints a table and writes
//! `target/bench/data.json`. Target (issue 5): >= 2x Pillow per core.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

/// Arguments of `cargo xtask bench data`.
#[derive(Debug, clap::Args)]
pub struct DataBenchArgs {
    /// Folder of JPEG photos (default: the embedded `.assets/photos`).
    #[arg(long)]
    photos: Option<PathBuf>,
    /// Output side length.
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Timed passes over each set (best kept, both sides).
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

fn get(v: &Value, path: &[&str]) -> Result<f64> {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    cur.as_f64()
        .with_context(|| format!("missing number {}", path.join(".")))
}

/// Runs the benchmark.
pub fn run(root: &Path, args: &DataBenchArgs) -> Result<()> {
    let photos = args
        .photos
        .clone()
        .unwrap_or_else(|| root.join(".assets/photos"));
    if !photos.is_dir() {
        bail!(
            "{} does not exist: run `cargo xtask assets`",
            photos.display()
        );
    }
    let work = root.join("target/bench-data");
    let (size, reps) = (args.size.to_string(), args.reps.max(1).to_string());
    eprintln!("building semhitok-data bench_data (release)...");
    let exe = util::build_example(root, "semhitok-data", "bench_data")?;
    eprintln!("running {} (1 thread per image pipeline)...", exe.display());
    let rust_out = util::output(Command::new(&exe).current_dir(root).args([
        "--photos".as_ref(),
        photos.as_os_str(),
        "--work".as_ref(),
        work.as_os_str(),
        "--size".as_ref(),
        size.as_ref(),
        "--reps".as_ref(),
        reps.as_ref(),
    ]))?;
    let ours: Value = serde_json::from_str(&rust_out)
        .with_context(|| format!("bench_data printed:\n{rust_out}"))?;
    eprintln!("running scripts/bench_data_pillow.py...");
    let small = work.join("imagenet_like/x");
    let mut py = Command::new("python3");
    py.current_dir(root)
        .env("PYTHONPATH", root.join(".libtorch"))
        .args([
            "scripts/bench_data_pillow.py".as_ref(),
            "--photos".as_ref(),
            photos.as_os_str(),
            "--small".as_ref(),
            small.as_os_str(),
            "--work".as_ref(),
            work.as_os_str(),
            "--size".as_ref(),
            size.as_ref() as &std::ffi::OsStr,
            "--reps".as_ref(),
            reps.as_ref(),
        ]);
    let py_out = util::output(&mut py)?;
    let pil: Value = serde_json::from_str(&py_out)
        .with_context(|| format!("bench_data_pillow.py printed:\n{py_out}"))?;

    let mut rows = Vec::new();
    let pv = pil["pillow_version"].as_str().unwrap_or("?");
    println!("Full decode (what torchvision does with PIL):");
    println!("| set | files | mean Mpix | semhitok-data img/s/core | Pillow {pv} img/s/core | ratio | MAE vs ADM: ours / Pillow |");
    println!("|---|---|---|---|---|---|---|");
    let mut draft_lines = Vec::new();
    for set in ["photos", "imagenet_like"] {
        let n = get(&ours, &[set, "n"])?;
        let mp = get(&ours, &[set, "mean_mpix"])?;
        let r = get(&ours, &[set, "rust_images_per_s"])?;
        let p = get(&pil, &[set, "pillow_images_per_s"])?;
        let pd = get(&pil, &[set, "pillow_draft_images_per_s"])?;
        let mae = |k: &str| get(&pil, &[set, k]).unwrap_or(f64::NAN);
        let (m_r, m_p) = (mae("mae_rust_vs_adm"), mae("mae_pillow_vs_adm"));
        let m_pd = mae("mae_pillow_draft_vs_adm");
        let rs = get(&ours, &[set, "rust_scaled_images_per_s"])?;
        let m_rs = mae("mae_rust_scaled_vs_adm");
        println!(
            "| {set} | {n} | {mp:.2} | {r:.1} | {p:.1} | {:.2}x | {m_r:.2} / {m_p:.2} |",
            r / p
        );
        draft_lines.push(format!(
            "| {set} | {rs:.1} | {pd:.1} | {:.2}x | {m_rs:.2} / {m_pd:.2} |",
            rs / pd
        ));
        rows.push(json!({"set": set, "files": n, "mean_mpix": mp,
            "rust_images_per_s": r, "pillow_images_per_s": p, "ratio": r / p,
            "pillow_draft_images_per_s": pd, "rust_scaled_images_per_s": rs,
            "ratio_scaled_vs_draft": rs / pd, "mae_rust_scaled_vs_adm": m_rs,
            "mae_rust_vs_adm": m_r, "mae_pillow_vs_adm": m_p,
            "mae_pillow_draft_vs_adm": m_pd}));
    }
    println!(
        "\nDCT-domain scaled decoding on both sides: ours `decode_rgb8_scaled` (libjpeg-turbo via mozjpeg-sys, scale n/8 keeping the shorter side >= size), Pillow `Image.draft`:"
    );
    println!("| set | semhitok-data scaled img/s/core | Pillow + draft img/s/core | ratio | MAE vs ADM: ours / Pillow + draft |");
    println!("|---|---|---|---|---|");
    for l in draft_lines {
        println!("{l}");
    }
    let loader = get(&ours, &["loader_imagenet_like_images_per_s"])?;
    println!(
        "full Loader (ImageFolder, f32 NCHW batches of 16, {} threads) on imagenet_like: {loader:.1} img/s",
        ours["loader_threads"]
    );
    let out = root.join("target/bench/data.json");
    std::fs::create_dir_all(out.parent().expect("has parent"))?;
    let all =
        json!({"size": args.size, "reps": args.reps, "rows": rows, "rust": ours, "pillow": pil});
    std::fs::write(&out, serde_json::to_string_pretty(&all)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
