//! [`LlavaTask`]: the trainer's view of a [`LlavaModel`]: the trained tensors are the
//! projector's (`model.mm_projector.{0,2}.*`) plus, in stage 2, the LLM's (HF names for
//! `llm.train = "full"`, PEFT names for LoRA). Checkpoints hold only these (and their optimizer
//! moments): the frozen tokenizer and base LLM are re-read from their files.

use super::model::LlavaModel;
use crate::error::Result;
use crate::optim::Param;
use crate::trainer::{Batch, LossOut, Task};
use semhitok_mllm::llm::LmParam;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// A LLaVA stage as a [`Task`].
#[derive(Debug)]
pub struct LlavaTask {
    pub model: LlavaModel,
    /// The LLM's trained tensors (empty in stage 1).
    pub lm_params: Vec<LmParam>,
}

impl LlavaTask {
    pub fn new(model: LlavaModel, lm_params: Vec<LmParam>) -> Self {
        Self { model, lm_params }
    }

    /// Trained tensors by name.
    pub fn trained(&self) -> BTreeMap<String, Tensor> {
        let mut m: BTreeMap<String, Tensor> = self.model.projector_state().into_iter().collect();
        for p in &self.lm_params {
            m.insert(p.name.clone(), p.var.shallow_clone());
        }
        m
    }
}

impl Task for LlavaTask {
    fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self
            .model
            .projector_params()
            .into_iter()
            .map(|(name, var, role)| Param { name, var, role })
            .collect();
        v.extend(self.lm_params.iter().map(|p| Param {
            name: p.name.clone(),
            var: p.var.shallow_clone(),
            role: p.role,
        }));
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn state(&self) -> BTreeMap<String, Tensor> {
        self.trained()
    }

    fn loss(&mut self, batch: &Batch, _step: u64) -> Result<LossOut> {
        let tb = batch.tokens()?;
        let (loss, count) = self.model.loss(
            &tb.input_ids,
            &tb.labels,
            &tb.attention_mask,
            tb.images.as_ref(),
        )?;
        Ok(LossOut {
            parts: vec![
                ("ce", loss.detach()),
                ("loss_tokens", count.to_kind(Kind::Float)),
            ],
            total: loss,
            disc_inputs: None,
        })
    }
}
