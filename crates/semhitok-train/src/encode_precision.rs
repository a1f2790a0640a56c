//! `--precision` of `semhitok tokenize` / `semhitok encode`: which part of the encode path runs in
//! bf16 on CUDA ([`semhitok_nn::pretrained::Bf16Encode`]).

use crate::error::Result;
use clap::ValueEnum;
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
    /// The tokenizer's bf16 mode for this precision.
    pub fn mode(self) -> Bf16Encode {
        match self {
            Self::Fp32 => Bf16Encode::Off,
            Self::Bf16Teacher => Bf16Encode::Teacher,
            Self::Bf16 => Bf16Encode::Encoders,
        }
    }

    /// Sets `tok` to this precision and returns the name of what is in effect (the `--precision`
    /// value), for the run's metadata: `"fp32"` on the CPU whatever was asked (bf16 applies to
    /// CUDA only).
    pub fn apply(self, tok: &mut Tokenizer) -> Result<String> {
        if self.mode() != Bf16Encode::Off {
            crate::amp::set_cuda_autocast_bf16();
            tok.use_bf16(self.mode())?;
        }
        let effective = if tok.bf16_mode() == Bf16Encode::Off {
            Self::Fp32
        } else {
            self
        };
        Ok(effective
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_modes_are_the_documented_ones() {
        let got: Vec<(String, Bf16Encode)> = EncodePrecision::value_variants()
            .iter()
            .map(|p| {
                (
                    p.to_possible_value().unwrap().get_name().to_string(),
                    p.mode(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("fp32".to_string(), Bf16Encode::Off),
                ("bf16-teacher".to_string(), Bf16Encode::Teacher),
                ("bf16".to_string(), Bf16Encode::Encoders),
            ]
        );
    }
}
