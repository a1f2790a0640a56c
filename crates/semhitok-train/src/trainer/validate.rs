//! Validation during training: every `schedule.eval_every` optimizer steps (and at the last
//! one) the [`Trainer`] measures the task on a fixed set of held-out images, the same images
//! every time ([`Validation`], built by the stage: `stages::build_validation`).
//!
//! What is measured is what the task's [`Task::validate`] gives: PSNR and SSIM of the
//! reconstructions, their rFID against the set's originals (with the FID Inception; without its
//! weights the stage says so once and rFID is left out), codebook usage (semantic, unified, and
//! pixel: the share of the `m` sub-codes used within the semantic codes used), the teacher
//! cosine of the semantic features, and a grid PNG (originals over reconstructions) at
//! `RUN/val/step-XXXXXXXX.png`. Logged as a `"kind": "val"` record of `metrics.jsonl`, as
//! TensorBoard scalars `val/...` and the image `val/reconstructions`, and as one progress line.
//!
//! With a weight EMA (`optim.ema_decay`) the EMA weights are measured (what `semhitok eval`
//! evaluates): they are swapped in and back out by copies, bit for bit. Validation draws no
//! random number of the training stream and changes no state (the forward runs in evaluation
//! mode, without gradient or codebook statistics; LibTorch's generator is re-seeded at every
//! step anyway), so a run with validation trains exactly as one without it, and resumes
//! exactly. Under data-parallel training rank 0 validates and the other ranks wait at a
//! barrier (`dist.checkpoint_timeout_s`).

use super::{with_autocast, Task, Trainer, ValOut};
use crate::error::{Error, Result};
use crate::fid_ref::RefStats;
use crate::metrics::{psnr_per_image, ssim_per_image};
use semhitok_nn::fid::{FidInception, FidStats, FID_DIM};
use semhitok_quant::{SghcUsage, UnifiedIndex};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The fixed validation set of a run and what it is measured with.
pub struct Validation {
    /// `[N, 3, S, S]` in [-1, 1], on the CPU.
    images: Tensor,
    batch: i64,
    /// Images in the grid (evenly spread over the set).
    grid: usize,
    /// The FID network and the statistics of the set's originals (`None`: no rFID).
    fid: Option<(FidInception, RefStats)>,
    /// What the set is (for the log).
    pub set: String,
}

impl std::fmt::Debug for Validation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validation")
            .field("images", &self.images.size())
            .field("rfid", &self.fid.is_some())
            .field("set", &self.set)
            .finish()
    }
}

/// What one validation measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Named metrics in a fixed order (only those the task gives).
    pub metrics: Vec<(&'static str, f64)>,
    /// Grid columns (original over reconstruction, `[2, 3, S, S]` each), when the task
    /// reconstructs pixels.
    pub grid: Vec<Tensor>,
}

fn ids_u32(t: &Tensor) -> Result<Vec<u32>> {
    let v = Vec::<i64>::try_from(
        t.f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Int64)?
            .f_flatten(0, -1)?,
    )?;
    Ok(v.into_iter().map(|x| x as u32).collect())
}

impl Validation {
    /// `images` `[N, 3, S, S]` (N >= 2) measured `batch` at a time, `grid` of them in the PNG;
    /// `fid`: the FID network and the originals' statistics.
    pub fn new(
        images: Tensor,
        batch: usize,
        grid: usize,
        fid: Option<(FidInception, RefStats)>,
        set: impl Into<String>,
    ) -> Result<Self> {
        match images.size().as_slice() {
            &[n, 3, h, w] if n >= 2 && h > 0 && w > 0 => {}
            _ => {
                return Err(Error::Input(format!(
                    "validation images: shape {:?}, expected [N >= 2, 3, H, W]",
                    images.size()
                )))
            }
        }
        Ok(Self {
            images: images.to_device(Device::Cpu),
            batch: batch.max(1) as i64,
            grid,
            fid,
            set: set.into(),
        })
    }

    /// Images in the set.
    pub fn len(&self) -> usize {
        self.images.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Measure `task` on the set (forwards on `device`, under bf16 autocast when `amp`).
    pub fn measure(&self, task: &mut dyn Task, device: Device, amp: bool) -> Result<Measured> {
        let n = self.len() as i64;
        let g = (self.grid as i64).min(n);
        let pick: Vec<i64> = (0..g).map(|i| i * n / g.max(1)).collect();
        let (mut psnr, mut ssim, mut cos, mut cos_n) = (0f64, 0f64, 0f64, 0f64);
        let mut fid_stats = FidStats::new(FID_DIM);
        let mut usage: Option<(SghcUsage, usize, bool)> = None;
        let (mut recon_seen, mut grid) = (false, vec![]);
        let mut start = 0;
        while start < n {
            let len = self.batch.min(n - start);
            let x = self.images.narrow(0, start, len).to_device(device);
            let Some(out) = with_autocast(device, amp, || task.validate(&x))? else {
                return Ok(Measured::default());
            };
            let ValOut {
                recon,
                codes,
                teacher_cosine,
            } = out;
            if let Some(r) = recon {
                let r = r.to_kind(Kind::Float);
                recon_seen = true;
                psnr += psnr_per_image(&x, &r).sum(Kind::Float).double_value(&[]);
                if x.size()[2] >= 11 && x.size()[3] >= 11 {
                    ssim += ssim_per_image(&x, &r).sum(Kind::Float).double_value(&[]);
                }
                if let Some((net, _)) = &self.fid {
                    fid_stats.update(&net.features(&r)?)?;
                }
                for &i in pick.iter().filter(|&&i| i >= start && i < start + len) {
                    let pair = Tensor::stack(&[x.get(i - start), r.get(i - start)], 0);
                    grid.push(pair.to_device(Device::Cpu));
                }
            }
            if let Some(c) = codes {
                if usage.is_none() {
                    let idx = UnifiedIndex::new(c.k, c.m)?;
                    usage = Some((SghcUsage::new(idx), c.m, c.pixel.is_some()));
                }
                if let Some((u, _, _)) = usage.as_mut() {
                    let sem = ids_u32(&c.semantic)?;
                    let sub = match &c.pixel {
                        Some(p) => ids_u32(p)?,
                        None => vec![0; sem.len()],
                    };
                    u.record(&sem, &sub)?;
                }
            }
            if let Some(c) = teacher_cosine {
                cos += c * len as f64;
                cos_n += len as f64;
            }
            start += len;
        }
        let mut metrics = vec![];
        if recon_seen {
            metrics.push(("psnr", psnr / n as f64));
            if self.images.size()[2] >= 11 && self.images.size()[3] >= 11 {
                metrics.push(("ssim", ssim / n as f64));
            }
            if let Some((_, reference)) = &self.fid {
                metrics.push(("rfid", reference.fid(&fid_stats)?));
            }
        }
        if let Some((u, m, pixel)) = usage {
            let sem = u.semantic().summary();
            let uni = u.unified().summary();
            metrics.push(("usage_semantic", sem.fraction));
            metrics.push(("perplexity_semantic", sem.perplexity));
            if pixel {
                metrics.push(("usage_unified", uni.fraction));
                // The sub-codes used within the semantic codes that were used.
                let groups = (sem.used * m).max(1) as f64;
                metrics.push(("usage_pixel", uni.used as f64 / groups));
            }
        }
        if cos_n > 0.0 {
            metrics.push(("teacher_cosine", cos / cos_n));
        }
        Ok(Measured { metrics, grid })
    }
}

/// `RUN/val/step-XXXXXXXX.png`.
fn grid_path(run: &Path, step: u64) -> std::path::PathBuf {
    run.join("val").join(format!("step-{step:08}.png"))
}

impl Trainer<'_> {
    /// Validation at step `done` (1-based): rank 0 measures and logs, every rank meets at the
    /// barrier afterwards.
    pub(super) fn validate(&mut self, done: u64) -> Result<Option<String>> {
        let line = match (self.run.is_some(), self.val) {
            (true, Some(val)) => self.validate_on(val, done)?,
            _ => None,
        };
        if let Some(d) = &self.dist {
            d.validation_barrier(done)?;
        }
        Ok(line)
    }

    fn validate_on(&mut self, val: &Validation, done: u64) -> Result<Option<String>> {
        let t0 = std::time::Instant::now();
        let ema = self.ema.is_some();
        if let Some(e) = self.ema.as_mut() {
            e.swap()?;
        }
        let measured = val.measure(&mut *self.task, self.device, self.amp);
        if let Some(e) = self.ema.as_mut() {
            e.swap()?;
        }
        let m = measured?;
        if m.metrics.is_empty() {
            return Ok(None);
        }
        let mut rec = serde_json::json!({
            "kind": "val",
            "step": done,
            "images": val.len(),
            "weights": if ema { "ema" } else { "live" },
        });
        for (k, v) in &m.metrics {
            rec[*k] = serde_json::json!(v);
        }
        let run_path = self.run_path.clone();
        let mut png = None;
        if !m.grid.is_empty() {
            let path = grid_path(&run_path, done);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            let cols: Vec<&Tensor> = m.grid.iter().collect();
            crate::report::save_grid(&cols, &path)?;
            rec["grid"] = serde_json::json!(format!("val/step-{done:08}.png"));
            png = Some(path);
        }
        let secs = t0.elapsed().as_secs_f64();
        rec["seconds"] = serde_json::json!(secs);
        if let Some(run) = self.run.as_mut() {
            run.log(&rec)?;
        }
        if let Some(tb) = self.tb.as_mut() {
            let scalars: Vec<(String, f64)> = m
                .metrics
                .iter()
                .map(|(k, v)| (format!("val/{k}"), *v))
                .collect();
            tb.scalars(done, &scalars)?;
            if let Some(p) = &png {
                let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
                let (w, h) = image::image_dimensions(p).map_err(|e| Error::Render {
                    path: p.clone(),
                    msg: e.to_string(),
                })?;
                tb.image(done, "val/reconstructions", &bytes, h, w)?;
            }
            tb.flush()?;
        }
        let parts: Vec<String> = m
            .metrics
            .iter()
            .map(|(k, v)| match *k {
                "psnr" => format!("psnr {v:.2} dB"),
                k if k.starts_with("usage") => format!("{k} {:.1}%", v * 100.0),
                k => format!("{k} {v:.4}"),
            })
            .collect();
        let grid = png.map_or(String::new(), |p| format!(" -> {}", p.display()));
        Ok(Some(format!(
            "val step {done}: {} ({} images, {} weights, {secs:.1} s){grid}",
            parts.join(", "),
            val.len(),
            if ema { "EMA" } else { "live" }
        )))
    }
}
