//! Autoregressive text-to-image on SemHiTok ids (issue 18): training, generation and the
//! Fashion-MNIST evaluation.
//!
//! - [`classifier`]: the Fashion-MNIST CNN that judges generated images (`semhitok
//!   fmnist-classifier`).
//! - [`judge`]: class accuracy and FID of generated images against the test split (`semhitok
//!   t2i-score`).

pub mod classifier;
pub mod judge;
