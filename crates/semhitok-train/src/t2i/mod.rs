//! Autoregressive text-to-image training (`run.stage = "t2i"`): not built yet.

use crate::dispatch::TrainRequest;
use crate::error::{Error, Result};
use crate::trainer::TrainReport;

/// Train the text-to-image run `req` describes (`semhitok train --config FILE` with
/// `run.stage = "t2i"`; `req.config` is the T2I config, `req.overrides` its `--set` overrides).
pub fn run(req: &TrainRequest) -> Result<TrainReport> {
    Err(Error::Input(format!(
        "{}: text-to-image training (run.stage = \"t2i\") is not built yet",
        req.config.display()
    )))
}
