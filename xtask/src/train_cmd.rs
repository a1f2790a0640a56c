//! `cargo xtask train|eval|encode|decode|demo|chat`: thin launchers of the `semhitok` binary
//! (crates/semhitok-train). Each sets up LibTorch, then runs
//! `cargo run --release -p semhitok-train --bin semhitok -- <subcommand> ...`.
//! All logic lives in the library; this file only spawns.

use crate::{libtorch, util};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// `cargo xtask train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Stage: spc | pre | decoder-ft | joint | llava-pretrain | llava-finetune | t2i (optional;
    /// must match `run.stage` of the config, which picks the trainer).
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
    /// Data-parallel on this host: N processes, one per GPU (rank i on CUDA device i), with
    /// torchrun's environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK). `data.batch_size`
    /// is per process. With `--device cpu` the N processes train on the CPU over Gloo.
    #[arg(long, value_name = "N")]
    pub gpus: Option<usize>,
    /// c10d backend with `--gpus`: nccl | gloo | auto (nccl on CUDA, gloo on CPU).
    #[arg(long, value_name = "nccl|gloo|auto")]
    pub dist_backend: Option<String>,
    /// Port of the rendezvous store with `--gpus` (default: a free one).
    #[arg(long)]
    pub master_port: Option<u16>,
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
    if let Some(b) = &a.dist_backend {
        args.push("--dist-backend".into());
        args.push(b.clone());
    }
    match a.gpus {
        None => semhitok(root, "train", &args),
        Some(n) => launch_local(root, n, a.master_port, &args),
    }
}

/// `--gpus N`: build `semhitok`, start N ranks with torchrun's variables, wait for all. When one
/// fails the others are stopped (as torchrun does) and the error names the rank.
fn launch_local(root: &Path, n: usize, port: Option<u16>, args: &[String]) -> Result<()> {
    anyhow::ensure!(n >= 1, "--gpus {n}: need at least 1 process");
    libtorch::ensure(root)?;
    let exe = util::build_bin(root, "semhitok-train", "semhitok")?;
    let port = match port {
        Some(p) => p,
        None => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port(),
    };
    eprintln!(
        "launching {n} ranks of {} (store 127.0.0.1:{port})",
        exe.display()
    );
    let mut kids = Vec::with_capacity(n);
    for rank in 0..n {
        let mut cmd = std::process::Command::new(&exe);
        cmd.current_dir(root)
            .arg("train")
            .args(args)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string());
        kids.push(
            cmd.spawn()
                .with_context(|| format!("starting rank {rank}: {cmd:?}"))?,
        );
    }
    let mut failed: Option<(usize, std::process::ExitStatus)> = None;
    let mut running = n;
    let mut done = vec![false; n];
    while running > 0 {
        for (rank, k) in kids.iter_mut().enumerate() {
            if done[rank] {
                continue;
            }
            if let Some(st) = k.try_wait()? {
                done[rank] = true;
                running -= 1;
                if !st.success() && failed.is_none() {
                    failed = Some((rank, st));
                }
            }
        }
        if failed.is_some() {
            for (rank, k) in kids.iter_mut().enumerate() {
                if !done[rank] {
                    let _ = k.kill();
                    let _ = k.wait();
                    done[rank] = true;
                    running -= 1;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    match failed {
        Some((rank, st)) => bail!("rank {rank} of {n} failed ({st}); the other ranks were stopped"),
        None => Ok(()),
    }
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
