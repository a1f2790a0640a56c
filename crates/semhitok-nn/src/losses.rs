//! Pixel reconstruction losses (SemHiTok paper Sec. 3.2, `L_rec`). Perceptual and adversarial
//! losses live in their own modules.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which pixel loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelLoss {
    /// Mean absolute error.
    L1,
    /// Mean squared error (LlamaGen's `reconstruction_loss = "l2"`).
    L2,
}

impl PixelLoss {
    /// recon, target: same shape (e.g. `[B, 3, H, W]`) -> scalar fp32 mean.
    pub fn compute(self, recon: &Tensor, target: &Tensor) -> Result<Tensor> {
        if recon.size() != target.size() {
            return Err(Error::shape(
                "pixel loss reconstruction",
                format!("{:?} (the target's shape)", target.size()),
                recon,
            ));
        }
        let r = recon.f_to_kind(Kind::Float)?;
        let t = target.f_to_kind(Kind::Float)?;
        Ok(match self {
            PixelLoss::L1 => r.f_l1_loss(&t, tch::Reduction::Mean)?,
            PixelLoss::L2 => r.f_mse_loss(&t, tch::Reduction::Mean)?,
        })
    }
}

/// Mean absolute error (fp32).
pub fn l1(recon: &Tensor, target: &Tensor) -> Result<Tensor> {
    PixelLoss::L1.compute(recon, target)
}

/// Mean squared error (fp32).
pub fn l2(recon: &Tensor, target: &Tensor) -> Result<Tensor> {
    PixelLoss::L2.compute(recon, target)
}
