//! `cargo xtask train|eval|encode|decode|demo|chat`: thin launchers of the `semhitok` binary
//! (crates/semhitok-train). Each sets up LibTorch, then runs
//! `cargo run --release -p semhitok-train --bin semhitok -- <subcommand> ...`.
//! All logic lives in the library; this file only spawns.

use crate::{libtorch, util};
use anyhow::Result;
use std::path::Path;

/// `cargo xtask train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Stage: spc | pre | decoder-ft | joint (must match `run.stage` of the config, or sets it).
    #[arg(long)]
    pub stage: Option<String>,
    /// The TOML config (configs/*.toml). With `--resume` alone, RUN_DIR/config.toml is used.
    #[arg(long)]
    pub config: Option<String>,
    /// Continue the run in RUN_DIR from its newest readable checkpoint (`auto`: the config's
    /// run if it holds one, else start it).
    #[arg(long, value_name = "RUN_DIR|auto")]
    pub resume: Option<String>,
    /// Start fresh even if the run directory holds a run (its files are deleted first).
    #[arg(long)]
    pub overwrite: bool,
    /// cpu | cuda (overrides `run.device`).
    #[arg(long)]
    pub device: Option<String>,
    /// Override one config key: `--set optim.lr=1e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Pass-through arguments of eval/encode/decode/demo (see `semhitok <cmd> --help`).
#[derive(Debug, clap::Args)]
pub struct PassArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

fn semhitok(root: &Path, sub: &str, args: &[String]) -> Result<()> {
    libtorch::ensure(root)?;
    let mut cmd = util::cargo(root);
    cmd.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "semhitok-train",
        "--bin",
        "semhitok",
        "--",
        sub,
    ])
    .args(args);
    util::run(&mut cmd)
}

pub fn train(root: &Path, a: &TrainArgs) -> Result<()> {
    let mut args = vec![];
    let mut push = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            args.push(k.to_string());
            args.push(v.clone());
        }
    };
    push("--stage", &a.stage);
    push("--config", &a.config);
    push("--resume", &a.resume);
    push("--device", &a.device);
    if a.overwrite {
        args.push("--overwrite".into());
    }
    for s in &a.set {
        args.push("--set".into());
        args.push(s.clone());
    }
    semhitok(root, "train", &args)
}

pub fn pass(root: &Path, sub: &str, a: &PassArgs) -> Result<()> {
    semhitok(root, sub, &a.args)
}

/// `cargo xtask demo`: LibTorch + assets, then `semhitok demo` (tiny SPC, `pre` and the
/// semantic-only baseline on photo crops, evaluation, report under runs/demo/).
pub fn demo(root: &Path, a: &PassArgs) -> Result<()> {
    libtorch::ensure(root)?;
    crate::assets::ensure(root)?;
    semhitok(root, "demo", &a.args)
}

/// `cargo xtask chat`: LibTorch + assets (the default model is the embedded SmolLM2), then
/// `semhitok chat ...`.
pub fn chat(root: &Path, a: &PassArgs) -> Result<()> {
    libtorch::ensure(root)?;
    crate::assets::ensure(root)?;
    semhitok(root, "chat", &a.args)
}
