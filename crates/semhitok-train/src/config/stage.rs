//! The training stage of a config (`run.stage`) and the config type each stage belongs to.

use serde::{Deserialize, Serialize};

/// Training stage (issue 6 §1): the four tokenizer stages (read from a [`TrainConfig`](super::TrainConfig)) and the
/// LLM stages around the tokenizer, each with its own config type (see [`Stage::config_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Teacher frozen; trains the SPC head, semantic codebook (EMA) and semantic decoder.
    Spc,
    /// SPC loaded and frozen; trains pixel encoder, pixel sub-codebooks, fusion, pixel decoder
    /// (+ discriminator from `disc.start_step`).
    Pre,
    /// Everything frozen but the pixel decoder (optionally re-initialised larger).
    DecoderFt,
    /// The "texture incorporation" baseline: one codebook trained with semantic and pixel
    /// losses together (MUSE-VL style).
    Joint,
    /// LLaVA-1.5 stage 1: only the MLP projector trains (tokenizer and LLM frozen).
    LlavaPretrain,
    /// LLaVA-1.5 stage 2: projector + LLM (full or LoRA, `[llm] train`).
    LlavaFinetune,
    /// Autoregressive text-to-image: the LLM with the visual-token vocabulary.
    T2i,
}

/// Which config type (and `semhitok train` path) a [`Stage`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// [`TrainConfig`](super::TrainConfig) (`stages::run_stage`).
    Tokenizer,
    /// The LLaVA training config (`crate::llava::run`).
    Llava,
    /// The text-to-image training config (`crate::t2i::run`).
    T2i,
}

impl Stage {
    /// Every stage, in declaration order.
    pub const ALL: [Stage; 7] = [
        Stage::Spc,
        Stage::Pre,
        Stage::DecoderFt,
        Stage::Joint,
        Stage::LlavaPretrain,
        Stage::LlavaFinetune,
        Stage::T2i,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Spc => "spc",
            Stage::Pre => "pre",
            Stage::DecoderFt => "decoder-ft",
            Stage::Joint => "joint",
            Stage::LlavaPretrain => "llava-pretrain",
            Stage::LlavaFinetune => "llava-finetune",
            Stage::T2i => "t2i",
        }
    }

    /// The config type that describes a run of this stage.
    pub fn config_kind(self) -> ConfigKind {
        match self {
            Stage::Spc | Stage::Pre | Stage::DecoderFt | Stage::Joint => ConfigKind::Tokenizer,
            Stage::LlavaPretrain | Stage::LlavaFinetune => ConfigKind::Llava,
            Stage::T2i => ConfigKind::T2i,
        }
    }

    /// A tokenizer stage (its run is described by a [`TrainConfig`](super::TrainConfig)).
    pub fn is_tokenizer(self) -> bool {
        self.config_kind() == ConfigKind::Tokenizer
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Stage::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Stage::ALL.iter().map(|st| st.as_str()).collect();
                format!("unknown stage `{s}` (expected one of {})", names.join(", "))
            })
    }
}
