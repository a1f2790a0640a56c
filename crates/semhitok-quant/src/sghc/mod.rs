//! Semantic-Guided Hierarchical Codebook (SGHC): pixel sub-codebooks indexed by semantic code.
//!
//! The pixel codebook is `[K_sem, m, D_pix]`. A token whose semantic code is `k` is quantized
//! only against the `m` codes of sub-codebook `k` (paper, Sec. 3.3); its unified id is
//! `u = k * m + j` in `0..K_sem * m` (196,608 for the paper's 16384 x 12).
//!
//! The search reads each token's `m x D_pix` sub-codebook directly, so it never gathers an
//! `[N, m, D_pix]` copy (as the peers' `codebook[idx]` + argmin does) nor touches the other codes.

mod lookup;
mod packed;
mod search;
mod unified;

pub use lookup::{lookup_pixel, lookup_semantic, lookup_unified, lookup_unified_pixel};
pub use packed::PackedPixelCodebook;
pub use search::{sghc_nearest, sghc_nearest_with, SghcNearest};
pub use unified::UnifiedIndex;
