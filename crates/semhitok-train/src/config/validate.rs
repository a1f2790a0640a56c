//! The cross-field checks of a [`TrainConfig`] (each error names its key).

use super::{not_a_tokenizer_stage, DataKind, Stage, TeacherKind, TrainConfig};
use crate::error::{Error, Result};
use std::path::Path;

impl TrainConfig {
    /// Cross-field checks (each names its key).
    pub fn validate(&self, file: &Path) -> Result<()> {
        if !self.run.stage.is_tokenizer() {
            return Err(not_a_tokenizer_stage(file, self.run.stage));
        }
        if let Err(e) = self.model.validate() {
            return Err(Error::Config {
                file: file.to_path_buf(),
                key: "model".into(),
                msg: e.to_string(),
            });
        }
        if self.model.encoder.image_size != self.data.image_size {
            return Err(Error::Config {
                file: file.to_path_buf(),
                key: "model.encoder.image_size".into(),
                msg: format!(
                    "{} != data.image_size {}",
                    self.model.encoder.image_size, self.data.image_size
                ),
            });
        }
        let bad = |key: &str, msg: String| {
            Err(Error::Config {
                file: file.to_path_buf(),
                key: key.into(),
                msg,
            })
        };
        if self.loss.commit_weight.is_some() {
            return bad(
                "loss.commit_weight",
                "was removed (it was never read): the commitment weights (beta) are \
                 model.spc.commit_beta (SPC) and model.sghc.beta (SGHC)"
                    .into(),
            );
        }
        if self.data.batch_size < 1 {
            return bad("data.batch_size", "must be >= 1".into());
        }
        if self.data.image_size < 8 {
            return bad("data.image_size", "must be >= 8".into());
        }
        if self.optim.accum_steps < 1 {
            return bad("optim.accum_steps", "must be >= 1".into());
        }
        // Every float hyperparameter: finite and in range (a NaN passes `x < 0.0` checks).
        let o = &self.optim;
        let in_range = |key: &str, v: f64, lo: f64, hi: f64, hi_open: bool| {
            let ok = v.is_finite() && v >= lo && if hi_open { v < hi } else { v <= hi };
            if ok {
                Ok(())
            } else {
                let end = if hi_open { ")" } else { "]" };
                bad(
                    key,
                    format!("{v} is not a finite value in [{lo}, {hi}{end}"),
                )
            }
        };
        in_range("optim.lr", o.lr, 0.0, f64::MAX, false)?;
        in_range("optim.betas[0]", o.betas[0], 0.0, 1.0, true)?;
        in_range("optim.betas[1]", o.betas[1], 0.0, 1.0, true)?;
        in_range("optim.eps", o.eps, 0.0, f64::MAX, false)?;
        in_range("optim.weight_decay", o.weight_decay, 0.0, f64::MAX, false)?;
        in_range("optim.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0, false)?;
        in_range("optim.grad_clip", o.grad_clip, 0.0, f64::MAX, false)?;
        in_range("disc.lr", self.disc.lr, 0.0, f64::MAX, false)?;
        in_range("disc.betas[0]", self.disc.betas[0], 0.0, 1.0, true)?;
        in_range("disc.betas[1]", self.disc.betas[1], 0.0, 1.0, true)?;
        in_range("dist.timeout_s", self.dist.timeout_s, 0.001, 1e9, false)?;
        in_range(
            "dist.rendezvous_timeout_s",
            self.dist.rendezvous_timeout_s,
            0.001,
            1e9,
            false,
        )?;
        in_range(
            "dist.checkpoint_timeout_s",
            self.dist.checkpoint_timeout_s,
            0.001,
            1e9,
            false,
        )?;
        in_range(
            "data.heldout_fraction",
            self.data.heldout_fraction,
            0.0,
            1.0,
            true,
        )?;
        if !(self.data.max_crop_frac.is_finite() && self.data.max_crop_frac > 0.0) {
            return bad(
                "data.max_crop_frac",
                format!("{} must be finite and > 0", self.data.max_crop_frac),
            );
        }
        if self.teacher.kind == TeacherKind::EfficientnetLite0
            && ![8, 16].contains(&self.teacher.stride)
        {
            return bad(
                "teacher.stride",
                format!(
                    "{}: EfficientNet-Lite0 features have stride 8 or 16",
                    self.teacher.stride
                ),
            );
        }
        let g = &self.guard;
        if !(g.spike_factor == 0.0 || (g.spike_factor.is_finite() && g.spike_factor > 1.0)) {
            return bad(
                "guard.spike_factor",
                format!("{} must be 0 (off) or a finite value > 1", g.spike_factor),
            );
        }
        if g.spike_window < 4 {
            return bad("guard.spike_window", "must be >= 4".into());
        }
        if g.spike_patience < 1 {
            return bad("guard.spike_patience", "must be >= 1".into());
        }
        if !(g.max_weight_growth == 0.0
            || (g.max_weight_growth.is_finite() && g.max_weight_growth > 1.0))
        {
            return bad(
                "guard.max_weight_growth",
                format!(
                    "{} must be 0 (off) or a finite value > 1",
                    g.max_weight_growth
                ),
            );
        }
        if self.schedule.log_every == 0 {
            return bad("schedule.log_every", "must be >= 1".into());
        }
        if self.schedule.steps == 0 {
            return bad("schedule.steps", "must be >= 1".into());
        }
        if let Some(d) = self.optim.ema_decay {
            if !(0.0..1.0).contains(&d) {
                return bad("optim.ema_decay", format!("{d} is not in [0, 1)"));
            }
        }
        if self.schedule.ckpt_every == 0 {
            return bad("schedule.ckpt_every", "must be >= 1".into());
        }
        if self.schedule.keep_last == 0 {
            return bad("schedule.keep_last", "must be >= 1".into());
        }
        if self.schedule.eval_every > 0 && self.eval.val_images < 2 {
            return bad(
                "eval.val_images",
                format!(
                    "{} must be >= 2 with schedule.eval_every > 0 (the rFID covariance needs 2 images)",
                    self.eval.val_images
                ),
            );
        }
        let d = &self.data;
        let needs_root = matches!(
            d.kind,
            DataKind::Photos | DataKind::Imagenet | DataKind::FashionMnist
        ) || (d.kind == DataKind::Webdataset && d.shards.is_none());
        if needs_root && d.root.is_none() {
            let also = if d.kind == DataKind::Webdataset {
                " (or data.shards)"
            } else {
                ""
            };
            return bad(
                "data.root",
                format!("required{also} when data.kind = \"{}\"", d.kind.as_str()),
            );
        }
        if d.kind != DataKind::Photos {
            in_range("data.max_crop_frac", d.max_crop_frac, 0.0, 1.0, false)?;
            if !(d.min_crop_frac > 0.0 && d.min_crop_frac <= d.max_crop_frac) {
                return bad(
                    "data.min_crop_frac",
                    format!(
                        "{} must be in (0, data.max_crop_frac = {}]",
                        d.min_crop_frac, d.max_crop_frac
                    ),
                );
            }
        }
        if d.prefetch == 0 {
            return bad("data.prefetch", "must be >= 1".into());
        }
        if d.workers == Some(0) {
            return bad(
                "data.workers",
                "must be >= 1 (omit it for the default)".into(),
            );
        }
        if let (Some(r), Some(w)) = (d.rank, d.world_size) {
            if w == 0 || r >= w {
                return bad("data.rank", format!("{r} must be < data.world_size = {w}"));
            }
        }
        if let Some(e) = &self.eval.data {
            if e.kind == DataKind::Synthetic {
                return bad(
                    "eval.data.kind",
                    "synthetic images are no held-out set".into(),
                );
            }
            if e.root.is_none() && !(e.kind == DataKind::Webdataset && e.shards.is_some()) {
                return bad(
                    "eval.data.root",
                    format!("required when eval.data.kind = \"{}\"", e.kind.as_str()),
                );
            }
        }
        // One semantic code (`model.spc.codebook_size = 1`) makes `pre` a flat pixel VQ: every
        // patch's semantic id is 0, so there is no SPC to start from (configs/fmnist-pixel-vq.toml).
        let flat_vq = self.run.stage == Stage::Pre && self.model.spc.codebook_size == 1;
        if matches!(self.run.stage, Stage::Pre | Stage::DecoderFt)
            && self.init.spc.is_none()
            && !flat_vq
        {
            return bad(
                "init.spc",
                format!(
                    "stage `{}` needs the SPC checkpoint of stage 1 (or model.spc.codebook_size = 1: a flat pixel VQ)",
                    self.run.stage.as_str()
                ),
            );
        }
        if self.run.stage == Stage::DecoderFt && self.init.pre.is_none() {
            return bad(
                "init.pre",
                "stage `decoder-ft` needs the checkpoint of stage `pre`".into(),
            );
        }
        Ok(())
    }
}
