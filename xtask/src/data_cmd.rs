//! `cargo xtask data scan --source imagenet|wds|photos|fashion-mnist|llava --path P`: reads and
//! decodes every item of a dataset with semhitok-data, prints the JSON summary
//! `{"ok": N, "skipped": N, "reasons": {...}}` and writes one JSON line per item.
//! `cargo xtask data pack --src FOLDER --out DIR --shard-size N`: an image folder as webdataset
//! shards (`semhitok_data::pack`, the same as `semhitok data pack`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use semhitok_data::{scan, DecodeLimits, ScanOptions, ScanSource};

/// `cargo xtask data ...`
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    cmd: DataCmd,
}

#[derive(Debug, clap::Subcommand)]
enum DataCmd {
    /// Decode every item; print the summary and write the per-item list.
    Scan(ScanArgs),
    /// Image folder (class folders or flat, optional `<stem>.txt` captions) -> webdataset shards.
    Pack(PackArgs),
}

#[derive(Debug, clap::Args)]
struct PackArgs {
    #[arg(long)]
    src: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000)]
    shard_size: usize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Source {
    Imagenet,
    Wds,
    Photos,
    FashionMnist,
    Llava,
}

#[derive(Debug, clap::Args)]
struct ScanArgs {
    #[arg(long, value_enum)]
    source: Source,
    /// Dataset root (imagenet: the folder of class folders; wds: a shard or a folder of shards;
    /// photos/fashion-mnist: the folder; llava: the JSON file).
    #[arg(long)]
    path: PathBuf,
    /// Per-item list (JSON lines); default: target/data-scan/<source>.jsonl.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Decompression-bomb guard: largest accepted width x height.
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
    max_pixels: u64,
    /// LLaVA: also check that every image exists under this folder.
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Webdataset: count samples without a .txt caption as skipped.
    #[arg(long)]
    require_caption: bool,
}

/// Runs `cargo xtask data ...`.
pub fn run(root: &Path, args: &DataArgs) -> Result<()> {
    match &args.cmd {
        DataCmd::Scan(a) => scan_cmd(root, a),
        DataCmd::Pack(a) => {
            let opts = semhitok_data::PackOptions {
                shard_size: a.shard_size,
                limits: DecodeLimits::default(),
            };
            let r = semhitok_data::pack(&a.src, &a.out, &opts)
                .with_context(|| format!("packing {}", a.src.display()))?;
            println!(
                "{}",
                serde_json::json!({
                    "shards": r.shards.len(),
                    "samples": r.samples,
                    "with_caption": r.with_caption,
                    "classes": r.classes.len(),
                    "skipped": r.skipped.skipped,
                    "reasons": r.skipped.reasons,
                    "out": a.out.display().to_string(),
                })
            );
            Ok(())
        }
    }
}

fn scan_cmd(root: &Path, a: &ScanArgs) -> Result<()> {
    let (source, name) = match a.source {
        Source::Imagenet => (ScanSource::Imagenet, "imagenet"),
        Source::Wds => (ScanSource::Wds, "wds"),
        Source::Photos => (ScanSource::Photos, "photos"),
        Source::FashionMnist => (ScanSource::FashionMnist, "fashion-mnist"),
        Source::Llava => (ScanSource::Llava, "llava"),
    };
    let opts = ScanOptions {
        limits: DecodeLimits {
            max_pixels: a.max_pixels,
            ..Default::default()
        },
        image_root: a.image_root.clone(),
        require_caption: a.require_caption,
    };
    let report =
        scan(source, &a.path, &opts).with_context(|| format!("scanning {}", a.path.display()))?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/data-scan").join(format!("{name}.jsonl")));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    std::fs::write(&out, report.entries_jsonl()).with_context(|| out.display().to_string())?;
    println!("{}", report.summary_json());
    eprintln!("per-item list: {}", out.display());
    Ok(())
}
