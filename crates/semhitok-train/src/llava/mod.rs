//! LLaVA-1.5 training (`run.stage = "llava-pretrain" | "llava-finetune"`): not built yet.

use crate::dispatch::TrainRequest;
use crate::error::{Error, Result};
use crate::trainer::TrainReport;

/// Train the LLaVA run `req` describes (`semhitok train --config FILE` with a LLaVA stage;
/// `req.config` is the LLaVA config, `req.overrides` its `--set` overrides).
pub fn run(req: &TrainRequest) -> Result<TrainReport> {
    Err(Error::Input(format!(
        "{}: LLaVA training (run.stage = \"llava-pretrain\" / \"llava-finetune\") is not built yet",
        req.config.display()
    )))
}
