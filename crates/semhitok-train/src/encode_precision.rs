//! `--precision` of `semhitok tokenize` / `semhitok encode`: which part of the encode path runs in
//! bf16 on CUDA ([`semhitok_nn::pretrained::Bf16Encode`]).

use crate::error::Result;
use semhitok_nn::pretrained::{Bf16Encode, Tokenizer};

/// The encode precision a user picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EncodePrecision {
    /// fp32 everywhere: the canonical ids (equal on CPU and CUDA).
    #[default]
    Fp32,
    /// The teacher in bf16 (CUDA).
    Bf16Teacher,
    /// Teacher, SPC head and pixel encoder in bf16, searches fp32 (CUDA).
    Bf16,
}

impl EncodePrecision {
    /// Sets `tok` to this precision and returns the name of what is in effect, for the run's
    /// metadata: `"fp32"` on the CPU whatever was asked (bf16 applies to CUDA only).
    pub fn apply(self, tok: &mut Tokenizer) -> Result<&'static str> {
        match self {
            Self::Fp32 => {}
            Self::Bf16Teacher => {
                crate::amp::set_cuda_autocast_bf16();
                tok.use_bf16_teacher()?
            }
            Self::Bf16 => {
                crate::amp::set_cuda_autocast_bf16();
                tok.use_bf16_encoders()?
            }
        }
        Ok(match tok.bf16_mode() {
            Bf16Encode::Off => "fp32",
            Bf16Encode::Teacher => "bf16-teacher",
            Bf16Encode::Encoders => "bf16",
        })
    }
}
