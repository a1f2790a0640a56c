//! `semhitok`: the trainer's command line (launched by `cargo xtask train|eval|encode|decode|demo`).
//!
//! Every subcommand is a thin wrapper over `semhitok_train`; see `semhitok <cmd> --help`.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use semhitok_train::config::{DeviceKind, Stage};
use semhitok_train::rundir::RunStart;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "semhitok",
    about = "SemHiTok trainer, evaluation, export, encode/decode and dataset tokenization"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Train one stage from a TOML config: `run.stage` picks the config type (spc, pre,
    /// decoder-ft, joint: the tokenizer; llava-pretrain, llava-finetune: LLaVA; t2i:
    /// text-to-image).
    Train {
        /// configs/*.toml (with `--resume` alone: RUN_DIR/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// spc | pre | decoder-ft | joint | llava-pretrain | llava-finetune | t2i; must agree
        /// with `run.stage`.
        #[arg(long)]
        stage: Option<Stage>,
        /// Continue the run in RUN_DIR from its newest readable checkpoint; `auto`: continue the
        /// config's run (`run.out_dir`) if it holds one, start it otherwise (requeued jobs).
        #[arg(long, value_name = "RUN_DIR|auto")]
        resume: Option<PathBuf>,
        /// Start fresh even if `run.out_dir` holds a run: its files are deleted first.
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
        /// cpu | cuda (overrides `run.device`).
        #[arg(long)]
        device: Option<String>,
        /// `key.path=value` config override (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// c10d backend of a data-parallel run (launched by torchrun, srun or `cargo xtask
        /// train --gpus N`): nccl | gloo | auto (nccl on CUDA, gloo on CPU). Overrides
        /// `dist.backend`.
        #[arg(long, value_name = "nccl|gloo|auto")]
        dist_backend: Option<String>,
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
    /// A trained run as a portable model folder (config.json, model.safetensors, README.md).
    Export(semhitok_train::export::ExportArgs),
    /// A dataset -> resumable int32 unified-id shards (+ keys, captions, labels).
    Tokenize(semhitok_train::tokenize::TokenizeArgs),
    /// Time N steps of stage `pre` (images/s, model FLOP utilisation); no checkpoints.
    Bench(semhitok_train::bench::BenchArgs),
    /// Dataset tools: `data pack --src FOLDER --out DIR --shard-size N` writes an image folder
    /// (ImageNet class folders or flat, optional `<stem>.txt` captions) as webdataset shards.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// Answer one prompt with a language model (GGUF file or HF folder; default: the embedded
    /// SmolLM2-135M-Instruct), streaming the answer and printing tokens/s.
    Chat(semhitok_train::chat::ChatArgs),
    /// images/s of the encode path on one fixed batch (`scripts/bench_tokenize_torch.py`: PyTorch reference).
    BenchTokenize(semhitok_train::bench_tokenize::BenchTokenizeArgs),
    /// Answer a question about an image with a trained LLaVA model (a run dir or an exported
    /// folder), greedy with the KV cache; several --image are answered as one batch.
    Ask(semhitok_train::llava::ask::AskArgs),
    /// Score a LLaVA model on a JSONL of {image, question, answer, kind} (VQA exact match,
    /// POPE yes/no accuracy/precision/recall/F1, multiple-choice letters).
    LlavaEval(semhitok_train::llava::ask::LlavaEvalArgs),
    /// Text-to-image from a T2I run or exported folder: PNGs, a grid and images.jsonl.
    Generate(semhitok_train::t2i::generate_cmd::GenerateArgs),
    /// N images per class for each CFG scale (u8 files for `t2i-score`, grids).
    T2iEval(semhitok_train::t2i::eval::T2iEvalArgs),
    /// Train the Fashion-MNIST classifier that judges generated images; reports its test accuracy.
    FmnistClassifier(semhitok_train::t2i::classifier::ClassifierArgs),
    /// Class accuracy and FID (vs the Fashion-MNIST test split) of generated images.
    T2iScore(semhitok_train::t2i::judge::ScoreArgs),
    /// Real Fashion-MNIST images as an images file (for `t2i-score`'s real-vs-real reference FID).
    T2iReal(semhitok_train::t2i::real::RealArgs),
    /// Print the TOML `[model]` table of a named preset (to start a config from).
    ModelPreset {
        /// paper-256 | tiny
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum DataCmd {
    /// Image folder -> webdataset tar shards (img2dataset layout: KEY.jpg, KEY.txt, KEY.cls,
    /// KEY.json); undecodable files are skipped and counted.
    Pack {
        #[arg(long)]
        src: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Samples per shard.
        #[arg(long, default_value_t = 1000)]
        shard_size: usize,
    },
    /// Fashion-MNIST -> a LLaVA-format set: images, pretrain.json (stage 1), instruct.json
    /// (stage 2: the class question and balanced POPE-style yes/no), test.jsonl (evaluation).
    LlavaFmnist(semhitok_train::llava::fmnist::FmnistArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let argv: Vec<String> = std::env::args().collect();
    match cli.cmd {
        Cmd::Train {
            config,
            stage,
            resume,
            overwrite,
            device,
            set,
            quiet,
            dist_backend,
        } => {
            // `--resume auto` resumes the config's own run directory.
            let auto = resume.as_deref() == Some(std::path::Path::new("auto"));
            let resume_dir = resume.filter(|_| !auto);
            if auto && config.is_none() {
                bail!("--resume auto needs --config FILE (the run is the config's run.out_dir)");
            }
            let start = if auto || resume_dir.is_some() {
                RunStart::Resume
            } else if overwrite {
                RunStart::Overwrite
            } else {
                RunStart::Fresh
            };
            let resume = resume_dir;
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
            if let Some(b) = &dist_backend {
                if !matches!(b.as_str(), "nccl" | "gloo" | "auto") {
                    bail!("--dist-backend {b}: expected nccl, gloo or auto");
                }
                set.push(format!("dist.backend=\"{b}\""));
            }
            let req = semhitok_train::dispatch::TrainRequest {
                config: path,
                overrides: set,
                start,
                command_line: argv,
                quiet,
            };
            let report = semhitok_train::dispatch::train(&req, stage)?;
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
        Cmd::Demo(a) => semhitok_train::demo::run(&a, &argv, Some(&train_children))
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Encode(a) => semhitok_train::codec::encode_cmd(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Decode(a) => semhitok_train::codec::decode_cmd(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Ask(a) => {
            for ans in semhitok_train::llava::ask::ask(&a)? {
                println!("{ans}");
            }
            Ok(())
        }
        Cmd::LlavaEval(a) => {
            let p = semhitok_train::llava::ask::llava_eval(&a)?;
            eprintln!("report: {}", p.display());
            Ok(())
        }
        Cmd::Chat(a) => semhitok_train::chat::run(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Export(a) => semhitok_train::export::export_cmd(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Tokenize(a) => semhitok_train::tokenize::run(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::BenchTokenize(a) => semhitok_train::bench_tokenize::run(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Bench(a) => semhitok_train::bench::run(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::FmnistClassifier(a) => {
            let m = semhitok_train::t2i::classifier::train(&a)?;
            println!(
                "test accuracy {:.4} ({} epochs, {:.0} s): {}",
                m.test_accuracy,
                m.epochs,
                m.train_secs,
                a.out.display()
            );
            Ok(())
        }
        Cmd::Generate(a) => semhitok_train::t2i::generate_cmd::run(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::T2iEval(a) => semhitok_train::t2i::eval::run(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::T2iScore(a) => semhitok_train::t2i::judge::score(&a)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::T2iReal(a) => semhitok_train::t2i::real::write_real(&a)
            .map(|n| eprintln!("t2i-real: {n} images -> {}", a.out.display()))
            .map_err(Into::into),
        Cmd::Data {
            cmd:
                DataCmd::Pack {
                    src,
                    out,
                    shard_size,
                },
        } => {
            let opts = semhitok_data::PackOptions {
                shard_size,
                limits: Default::default(),
            };
            let r = semhitok_data::pack(&src, &out, &opts)?;
            println!(
                "{}",
                serde_json::json!({
                    "shards": r.shards.len(),
                    "samples": r.samples,
                    "with_caption": r.with_caption,
                    "classes": r.classes.len(),
                    "skipped": r.skipped.skipped,
                    "reasons": r.skipped.reasons,
                    "out": out.display().to_string(),
                })
            );
            Ok(())
        }
        Cmd::Data {
            cmd: DataCmd::LlavaFmnist(a),
        } => {
            let r = semhitok_train::llava::fmnist::generate(&a)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
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

/// The newest logged step of a run (its `metrics.jsonl`), 0 before the first log line.
fn logged_step(dir: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["step"].as_u64())
        .unwrap_or(0)
}

/// The demo's stage-2 launcher: each run as a concurrent `semhitok train --quiet` child of this
/// executable (output in `OUT_DIR.log` beside its run folder), with one progress bar each fed
/// from the runs' `metrics.jsonl`. Returns each child's wall seconds; a failed child is an error
/// naming its log.
fn train_children(
    runs: &[semhitok_train::demo::Stage2Run],
    quiet: bool,
) -> semhitok_train::Result<Vec<f64>> {
    use semhitok_train::Error;
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let bars = indicatif::MultiProgress::new();
    if quiet {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>13} [{elapsed_precise}] {bar:30} {pos}/{len} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let t0 = std::time::Instant::now();
    let mut running = vec![];
    for r in runs {
        let log = r.out_dir.with_extension("log");
        let file = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = file.try_clone().map_err(|e| Error::io(&log, e))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("train")
            .arg("--config")
            .arg(&r.config)
            .arg("--quiet");
        for kv in &r.sets {
            cmd.arg("--set").arg(kv);
        }
        let child = cmd
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(&exe, e))?;
        let pb = bars.add(indicatif::ProgressBar::new(r.steps));
        pb.set_style(style.clone());
        pb.set_prefix(r.name.clone());
        running.push((r, child, pb, log, None::<f64>));
    }
    // Progress bars draw only on a terminal; into a log (CI, `> file`), a status line every 30 s.
    let lines = !quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = std::time::Instant::now();
    let mut failed = vec![];
    while running.iter().any(|r| r.4.is_none()) {
        std::thread::sleep(std::time::Duration::from_millis(500));
        for (r, _, pb, _, done) in running.iter() {
            if done.is_none() {
                pb.set_position(logged_step(&r.out_dir));
            }
        }
        if lines && last_line.elapsed().as_secs() >= 30 {
            last_line = std::time::Instant::now();
            let status: Vec<String> = running
                .iter()
                .map(|(r, _, pb, ..)| format!("{} {}/{}", r.name, pb.position(), r.steps))
                .collect();
            eprintln!(
                "[demo] {:.0} s: {}",
                t0.elapsed().as_secs_f64(),
                status.join(", ")
            );
        }
        for (r, child, pb, log, done) in running.iter_mut().filter(|r| r.4.is_none()) {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    *done = Some(t0.elapsed().as_secs_f64());
                    pb.finish();
                    if !status.success() {
                        failed.push(format!("{} ({status}; log {})", r.name, log.display()));
                    }
                }
                Err(e) => return Err(Error::io(log.as_path(), e)),
            }
        }
    }
    if !failed.is_empty() {
        return Err(Error::Input(format!(
            "stage-2 training failed: {}",
            failed.join(", ")
        )));
    }
    Ok(running.iter().map(|r| r.4.unwrap_or(0.0)).collect())
}
