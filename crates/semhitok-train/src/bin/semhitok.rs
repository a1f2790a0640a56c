//! `semhitok`: the trainer's command line (launched by `cargo xtask train|eval|encode|decode|demo`).
//!
//! Every subcommand is a thin wrapper over `semhitok_train`; see `semhitok <cmd> --help`.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use semhitok_train::config::{DeviceKind, Stage, TrainConfig};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "semhitok",
    about = "SemHiTok trainer, evaluation and encode/decode"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Train one stage from a TOML config.
    Train {
        /// configs/*.toml (with `--resume` alone: RUN_DIR/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// spc | pre | decoder-ft | joint; must agree with `run.stage`.
        #[arg(long)]
        stage: Option<Stage>,
        /// Continue the run in RUN_DIR from its newest readable checkpoint.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// cpu | cuda (overrides `run.device`).
        #[arg(long)]
        device: Option<String>,
        /// `key.path=value` config override (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Evaluate a `pre`/`joint` checkpoint (and optionally a semantic-only baseline) on
    /// held-out images: rFID, PSNR, SSIM, teacher cosine, exact usage; JSON + PNG grid.
    Eval(semhitok_train::eval::EvalArgs),
    /// The embedded-default demo (tiny SPC, SGHC and the semantic-only baseline, evaluated).
    Demo(semhitok_train::demo::DemoArgs),
    /// Images -> semantic, pixel and unified ids (`OUT.safetensors` + `OUT.json`).
    Encode(semhitok_train::codec::EncodeArgs),
    /// Ids (`.safetensors` from `encode`) -> PNG images.
    Decode(semhitok_train::codec::DecodeArgs),
    /// Time N steps of stage `pre` (images/s, model FLOP utilisation); no checkpoints.
    Bench(semhitok_train::bench::BenchArgs),
    /// Print the TOML `[model]` table of a named preset (to start a config from).
    ModelPreset {
        /// paper-256 | tiny
        name: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let argv: Vec<String> = std::env::args().collect();
    match cli.cmd {
        Cmd::Train {
            config,
            stage,
            resume,
            device,
            set,
            quiet,
        } => {
            let path = match (&config, &resume) {
                (Some(c), _) => c.clone(),
                (None, Some(r)) => r.join("config.toml"),
                (None, None) => bail!("give --config FILE (or --resume RUN_DIR)"),
            };
            let mut set = set;
            if let Some(r) = &resume {
                set.push(format!("run.out_dir=\"{}\"", r.display()));
            }
            if let Some(d) = &device {
                let _: DeviceKind = match d.as_str() {
                    "cpu" => DeviceKind::Cpu,
                    "cuda" => DeviceKind::Cuda,
                    _ => bail!("--device {d}: expected cpu or cuda"),
                };
                set.push(format!("run.device=\"{d}\""));
            }
            let cfg = TrainConfig::load(&path, &set)?;
            if let Some(s) = stage {
                if s != cfg.run.stage {
                    bail!(
                        "--stage {} but {} has run.stage = \"{}\"",
                        s.as_str(),
                        path.display(),
                        cfg.run.stage.as_str()
                    );
                }
            }
            let report = semhitok_train::stages::run_stage(&cfg, resume.is_some(), argv, quiet)?;
            eprintln!(
                "done: {} steps, last checkpoint {}",
                report.steps_done,
                report
                    .last_checkpoint
                    .as_ref()
                    .map_or("none".into(), |p| p.display().to_string())
            );
            Ok(())
        }
        Cmd::Eval(a) => semhitok_train::eval::run(&a, &argv)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Demo(a) => semhitok_train::demo::run(&a, &argv)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Encode(a) => semhitok_train::codec::encode_cmd(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Decode(a) => semhitok_train::codec::decode_cmd(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Bench(a) => semhitok_train::bench::run(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::ModelPreset { name } => {
            let m = match name.as_str() {
                "paper-256" => semhitok_nn::model::SemHiTokConfig::paper_256(),
                "tiny" => semhitok_nn::model::SemHiTokConfig::tiny(64, 8, 40, 256, 12),
                n => bail!("unknown preset {n} (paper-256, tiny)"),
            };
            let mut t = toml::Table::new();
            t.insert("model".into(), toml::Value::try_from(m)?);
            print!("{}", toml::to_string_pretty(&t)?);
            Ok(())
        }
    }
}
