//! `cargo xtask fmnist-tokenizers`: the Fashion-MNIST tokenizer set (SPC, SGHC, semantic-only,
//! pixel-only VQ; evaluated, exported, train/test tokenized with labels). LibTorch and the assets
//! first, then `semhitok` is built and `scripts/fmnist/tokenizers.sh` runs over it, the same
//! script a GPU host without Rust runs over the bundle's binary, so both do the same steps.

use crate::{libtorch, util};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// `cargo xtask fmnist-tokenizers`.
#[derive(Debug, clap::Args)]
pub struct FmnistArgs {
    /// cpu | cuda
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Steps of each stage-2 run (the SPC gets half; default: the configs' 800). One `--out`
    /// per budget: finished parts of a folder are skipped.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Output folder.
    #[arg(long, default_value = "runs/fmnist")]
    pub out: PathBuf,
    /// Test images evaluated (default 256 on cpu, 10000 on cuda).
    #[arg(long)]
    pub n_eval: Option<usize>,
    /// Parts to run, in order (default all: train eval export tokenize table).
    #[arg(long, value_delimiter = ',', value_name = "PHASE,...")]
    pub phases: Vec<String>,
    /// Train the three stage-2 runs one after the other (default: side by side, 1 thread each
    /// on cpu).
    #[arg(long)]
    pub sequential: bool,
}

pub fn run(root: &Path, a: &FmnistArgs) -> Result<()> {
    anyhow::ensure!(
        matches!(a.device.as_str(), "cpu" | "cuda"),
        "--device {}: expected cpu or cuda",
        a.device
    );
    const PHASES: [&str; 5] = ["train", "eval", "export", "tokenize", "table"];
    if let Some(p) = a.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
        anyhow::bail!(
            "--phases: unknown phase `{p}` (expected {})",
            PHASES.join(", ")
        );
    }
    libtorch::ensure(root)?;
    crate::assets::ensure(root)?;
    let exe = util::build_bin(root, "semhitok-train", "semhitok")?;
    let mut cmd = std::process::Command::new("bash");
    cmd.current_dir(root)
        .arg(root.join("scripts/fmnist/tokenizers.sh"))
        .arg(&exe)
        .arg(&a.out)
        .arg(&a.device)
        .arg(a.steps.map(|s| s.to_string()).unwrap_or_default());
    if let Some(n) = a.n_eval {
        cmd.env("N_EVAL", n.to_string());
    }
    if !a.phases.is_empty() {
        cmd.env("PHASES", a.phases.join(" "));
    }
    if a.sequential {
        cmd.env("SEQUENTIAL", "1");
    }
    util::run(&mut cmd)
}
