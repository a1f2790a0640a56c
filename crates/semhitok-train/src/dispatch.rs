//! `semhitok train --config FILE`: read `[run] stage` first, then hand the run to the code
//! of its config type: the tokenizer stages to [`crate::stages::run_stage`], `llava-pretrain` /
//! `llava-finetune` to [`crate::llava::run`], `t2i` to [`crate::t2i::run`].

use crate::config::{peek_stage, ConfigKind, Stage, TrainConfig};
use crate::error::Result;
use crate::rundir::RunStart;
use crate::trainer::TrainReport;
use std::path::PathBuf;

/// One `semhitok train` invocation, as every stage family's `run` receives it.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// The config file (`--config`, or `RUN_DIR/config.toml` with `--resume RUN_DIR`).
    pub config: PathBuf,
    /// `--set key.path=value` overrides (including those the CLI derives from `--resume
    /// RUN_DIR`, `--device` and `--dist-backend`).
    pub overrides: Vec<String>,
    /// Fresh, overwrite or resume.
    pub start: RunStart,
    /// The process's command line (written into run.json).
    pub command_line: Vec<String>,
    /// No progress bar.
    pub quiet: bool,
}

/// Train the run `req` describes; `expect`: the stage the caller was told (`--stage`), which
/// must agree with the config's.
pub fn train(req: &TrainRequest, expect: Option<Stage>) -> Result<TrainReport> {
    let stage = peek_stage(&req.config, &req.overrides)?;
    if let Some(s) = expect {
        if s != stage {
            return Err(crate::Error::Input(format!(
                "--stage {} but {} has run.stage = \"{}\"",
                s.as_str(),
                req.config.display(),
                stage.as_str()
            )));
        }
    }
    match stage.config_kind() {
        ConfigKind::Tokenizer => {
            let cfg = TrainConfig::load(&req.config, &req.overrides)?;
            crate::stages::run_stage(&cfg, req.start, req.command_line.clone(), req.quiet)
        }
        ConfigKind::Llava => crate::llava::run(req),
        ConfigKind::T2i => crate::t2i::run(req),
    }
}
