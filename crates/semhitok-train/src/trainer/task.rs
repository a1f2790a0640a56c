//! What a stage plugs into the [`Trainer`](super::Trainer): a [`Task`] (parameters, state,
//! losses) and a [`Batches`] source (training inputs with a resumable position).

use super::Batch;
use crate::dist::Dist;
use crate::error::Result;
use crate::optim::Param;
use std::collections::BTreeMap;
use tch::{Device, Tensor};

/// Losses of one micro-batch.
#[derive(Debug)]
pub struct LossOut {
    /// The scalar that is back-propagated.
    pub total: Tensor,
    /// Named components (detached scalars), logged to metrics.jsonl.
    pub parts: Vec<(&'static str, Tensor)>,
    /// (real, reconstruction) detached, for the discriminator step; `None` without a GAN.
    pub disc_inputs: Option<(Tensor, Tensor)>,
}

/// What validation measures of one batch of held-out images ([`Task::validate`]).
#[derive(Debug)]
pub struct ValOut {
    /// Reconstructions `[B, 3, H, W]` in [-1, 1] (`None`: the stage reconstructs no pixels,
    /// e.g. `spc`).
    pub recon: Option<Tensor>,
    /// The code ids of the batch (`None`: no codebook).
    pub codes: Option<ValCodes>,
    /// Mean cosine of the decoded semantic features to the teacher's (`None`: not measured).
    pub teacher_cosine: Option<f64>,
}

/// Code ids of a validation batch, for the codebook usage.
#[derive(Debug)]
pub struct ValCodes {
    /// Semantic ids `[B, N]` in `[0, k)`.
    pub semantic: Tensor,
    /// Pixel (sub-codebook) ids `[B, N]` in `[0, m)` (`None`: the model decodes without the
    /// pixel branch).
    pub pixel: Option<Tensor>,
    /// Semantic codebook size `K` and pixel codes per semantic code `m`.
    pub k: usize,
    pub m: usize,
}

/// A source of training batches with a serializable position.
pub trait Batches {
    /// Next batch on `device`: images `[B, 3, H, W]` in [-1, 1] for the tokenizer stages,
    /// token sequences for the LLM ones.
    fn next_batch(&mut self, device: Device) -> Result<Batch>;
    /// The iterator state (JSON) after the batches returned so far.
    fn state(&self) -> serde_json::Value;
    /// Continue from a state produced by [`Batches::state`] (or by [`Batches::merge_states`]).
    fn restore(&mut self, state: &serde_json::Value) -> Result<()>;
    /// One state for a data-parallel checkpoint from every rank's [`Batches::state`] (in rank
    /// order), from which each rank resumes its own position. The default keeps rank 0's, right
    /// for sources whose position does not depend on the rank (synthetic data).
    fn merge_states(&self, states: &[serde_json::Value]) -> Result<serde_json::Value> {
        Ok(states.first().cloned().unwrap_or(serde_json::Value::Null))
    }
}

/// One training stage.
pub trait Task {
    /// Parameters of the generator-side optimizer (sorted by name, stable across runs).
    fn params(&self) -> Vec<Param>;
    /// Parameters of the discriminator optimizer (empty: no discriminator).
    fn disc_params(&self) -> Vec<Param> {
        vec![]
    }
    /// Every tensor that defines the model state (trainable, frozen and buffers such as EMA
    /// codebooks and discriminator weights), by name. Checkpointed under `model.`.
    fn state(&self) -> BTreeMap<String, Tensor>;
    /// Forward + losses on one micro-batch at optimizer step `step`.
    /// ([`Batch::images`] / [`Batch::tokens`] give the variant the task trains on, or an error.)
    fn loss(&mut self, batch: &Batch, step: u64) -> Result<LossOut>;
    /// Discriminator loss on one (real, fake) pair at `step` (`None`: no discriminator update).
    fn disc_loss(&mut self, _real: &Tensor, _fake: &Tensor, _step: u64) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Transient state outside the model that a resume needs, by name (shapes may vary between
    /// checkpoints: e.g. the vectors an SPC has collected for its k-means initialisation).
    /// Checkpointed under `task.`; [`Task::restore_extra_state`] gets them back (empty map: none).
    fn extra_state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![])
    }
    /// Restore what [`Task::extra_state`] returned (names without the `task.` prefix).
    fn restore_extra_state(&mut self, _tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
    /// Join a data-parallel run (called once by the trainer, before the first step): e.g.
    /// all-reduce codebook statistics in `after_step` and all-gather the k-means vectors.
    fn attach_dist(&mut self, _dist: &Dist) {}
    /// Validation forward of held-out images `[B, 3, H, W]` in [-1, 1]: evaluation mode, no
    /// gradient, nothing collected or updated (no codebook statistics, no k-means vectors), so
    /// training continues exactly as without it. `None` (the default): nothing to validate.
    fn validate(&mut self, _images: &Tensor) -> Result<Option<ValOut>> {
        Ok(None)
    }
    /// Called after each optimizer step (e.g. codebook EMA bookkeeping).
    fn after_step(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }
}
