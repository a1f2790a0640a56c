//! How semantic and pixel codes are combined before the pixel decoder (SemHiTok paper Sec. 3.2 and
//! the Tab. 5 ablation): concatenation along channels (the default), pixel codes only ("w/o sem"),
//! concatenation along length, and semantic codes only (the semantic-only decoder baseline).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Fusion of semantic codes `[B, N, D_sem]` and pixel codes `[B, N, D_pix]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    /// `[sem | pix]` along channels -> `[B, N, D_sem + D_pix]` (paper default).
    ChannelConcat,
    /// Pixel codes only -> `[B, N, D_pix]` (ablation "w/o sem").
    PixelOnly,
    /// Both along the length, each zero-padded to `max(D_sem, D_pix)` -> `[B, 2N, max]`
    /// (ablation; the decoder reads pixels from the second half).
    LengthConcat,
    /// Semantic codes only -> `[B, N, D_sem]` (the semantic-only decoder baseline).
    SemanticOnly,
}

impl Fusion {
    /// Token dimension of the fused sequence.
    pub fn out_dim(self, d_sem: i64, d_pix: i64) -> i64 {
        match self {
            Fusion::ChannelConcat => d_sem + d_pix,
            Fusion::PixelOnly => d_pix,
            Fusion::LengthConcat => d_sem.max(d_pix),
            Fusion::SemanticOnly => d_sem,
        }
    }

    /// Length multiplier T of the fused sequence (`T * N` tokens).
    pub fn groups(self) -> i64 {
        match self {
            Fusion::LengthConcat => 2,
            _ => 1,
        }
    }

    /// sem: `[B, N, D_sem]`, pix: `[B, N, D_pix]` -> `[B, T*N, out_dim]` (fp32).
    pub fn fuse(self, sem: &Tensor, pix: &Tensor) -> Result<Tensor> {
        let (b, n, ds) = sem.size3()?;
        let (b2, n2, dp) = pix.size3()?;
        if (b, n) != (b2, n2) {
            return Err(Error::shape(
                "fusion pixel codes",
                format!("[{b}, {n}, D_pix] (as the semantic codes)"),
                pix,
            ));
        }
        let sem = sem.f_to_kind(Kind::Float)?;
        let pix = pix.f_to_kind(Kind::Float)?;
        Ok(match self {
            Fusion::ChannelConcat => Tensor::f_cat(&[sem, pix], -1)?,
            Fusion::PixelOnly => pix,
            Fusion::SemanticOnly => sem,
            Fusion::LengthConcat => {
                let d = ds.max(dp);
                let sem = sem.f_constant_pad_nd([0, d - ds])?;
                let pix = pix.f_constant_pad_nd([0, d - dp])?;
                Tensor::f_cat(&[sem, pix], 1)?
            }
        })
    }
}
