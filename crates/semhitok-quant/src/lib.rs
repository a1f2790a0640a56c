//! SemHiTok codebook math on the CPU (no LibTorch): nearest-code search, SGHC hierarchical
//! search, unified ids, codebook learning and usage statistics.
//!
//! This crate is the reference the tch side (`semhitok-nn`) is tested against, the CPU
//! tokenizer path, and a library usable alone. Paper: SemHiTok (Chen et al. 2025), Sec. 3.2-3.3.
//!
//! # Conventions
//! Every search returns plain `Vec<u32>` ids and `Vec<f32>` scores (cosine similarity, or
//! squared distance for [`Metric::SquaredL2`]); ties always go to the lowest index, so results
//! are deterministic and comparable with `argmax`/`argmin` of a brute-force matrix (up to float
//! rounding between near-equal candidates). The thread count is rayon's (global pool or
//! `ThreadPool::install`).
//!
//! Inputs are `ndarray` views (any memory layout; non-contiguous views are copied once) with
//! shapes written `[N, D]` (N tokens, D dimension), `[K, D]` (codebook), `[K_sem, m, D_pix]`
//! (pixel codebook). From a tch tensor, use `Vec::<f32>::try_from(t.contiguous().view(-1))` and
//! [`ndarray::ArrayView2::from_shape`]. Ids are `u32`. Every bad input (shape, id range,
//! NaN/inf) is an [`Error`] naming the offending value; no function panics on user input.
//!
//! # Map
//! - [`search`]: [`Metric`] (`Cosine` = argmax of normalized dot product, `SquaredL2` = argmin
//!   of `|q - c|^2`), [`PackedCodebook`] (pack `[K, D]` once) with
//!   [`PackedCodebook::nearest`] (`[N, D]` -> ids `[N]`, scores `[N]`) and
//!   [`PackedCodebook::top_k`] (`[N, k]`), and the one-shot [`nearest`]. Fused and cache-blocked:
//!   the `[N, K]` score matrix never exists; ties go to the lowest index.
//! - [`sghc`]: [`UnifiedIndex`] (`u = k * m + j`, checked [`UnifiedIndex::encode`]/[`UnifiedIndex::decode`]
//!   and slice versions), [`sghc_nearest`] (each token searched only in its semantic code's
//!   sub-codebook, straight from the raw `[K_sem, m, D_pix]` array: the training path, where the
//!   codebook changes every step), [`PackedPixelCodebook`] (packed once, transposed per
//!   sub-codebook: the tokenizer's inference path), lookups [`lookup_semantic`], [`lookup_pixel`], [`lookup_unified_pixel`],
//!   [`lookup_unified`] (`[semantic | pixel]`, the pixel decoder's input).
//! - [`ema`]: [`CodeStats`] (scatter counts/sums, mergeable), [`EmaConfig`] / [`EmaState`]
//!   (VQKD-style EMA with Laplace smoothing and l2 re-normalization), [`dead_codes`], [`restart_codes`].
//! - [`kmeans`]: [`spherical_kmeans`] with k-means++ seeding ([`kmeans_plus_plus`]), 10 iterations by default.
//! - [`usage`]: exact [`CodeUsage`] (counts, fraction, perplexity) and [`SghcUsage`] (unified,
//!   semantic and per-group histogram); both merge associatively.
//! - [`io`]: safetensors [`io::save`] / [`io::load`] with name, shape and dtype checks.
//!
//! # Example
//! ```
//! use ndarray::array;
//! use semhitok_quant::{Metric, PackedCodebook, UnifiedIndex, sghc_nearest};
//! let codes = array![[1.0f32, 0.0], [0.0, 1.0], [-1.0, 0.0]];
//! let packed = PackedCodebook::new(codes.view(), Metric::Cosine)?;
//! let q = array![[0.9f32, 0.1], [0.1, 0.9]];
//! let found = packed.nearest(q.view())?;
//! assert_eq!(found.ids, vec![0, 1]);
//!
//! let pixel = ndarray::Array3::<f32>::from_shape_fn((3, 2, 2), |(k, j, d)| (k + j + d) as f32);
//! let sub = sghc_nearest(q.view(), &found.ids, pixel.view(), Metric::SquaredL2)?;
//! let index = UnifiedIndex::new(3, 2)?;
//! assert_eq!(index.decode(sub.unified[1])?, (1, sub.sub_ids[1]));
//! # Ok::<(), semhitok_quant::Error>(())
//! ```

mod check;
pub mod ema;
mod error;
pub mod io;
mod kernel;
pub mod kmeans;
pub mod search;
pub mod sghc;
pub mod usage;

pub use ema::{dead_codes, restart_codes, CodeStats, EmaConfig, EmaState};
pub use error::{Error, Result};
pub use kernel::Kernel;
pub use kmeans::{kmeans_plus_plus, spherical_kmeans, KMeansConfig};
pub use search::{nearest, Metric, Nearest, PackedCodebook, TopK};
pub use sghc::{
    lookup_pixel, lookup_semantic, lookup_unified, lookup_unified_pixel, sghc_nearest,
    sghc_nearest_with, PackedPixelCodebook, SghcNearest, UnifiedIndex,
};
pub use usage::{CodeUsage, SghcUsage, UsageSummary};
