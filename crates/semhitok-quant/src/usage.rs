//! Exact codebook-usage statistics (per-code counts, never a rolling window).
//!
//! LlamaGen and TokenFlow count unique ids in a window of 65,536 / 131,072 recent ids; a window
//! shorter than the vocabulary cannot show full usage (at most 33% of 196,608 for 65,536). These
//! accumulators keep one `u64` count per code; merging adds counts, so it is associative and
//! commutative and workers can combine their accumulators (or all-reduce the counts).

use crate::check::ids_below;
use crate::error::{Error, Result};
use crate::sghc::UnifiedIndex;
use serde::{Deserialize, Serialize};

/// Per-code hit counts over a codebook of size K.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeUsage {
    counts: Vec<u64>,
}

/// Summary of a [`CodeUsage`], ready for logging.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UsageSummary {
    /// Codebook size.
    pub size: usize,
    /// Codes hit at least once.
    pub used: usize,
    /// `used / size`.
    pub fraction: f64,
    /// `exp(entropy)` of the empirical code distribution (0 when nothing was recorded).
    pub perplexity: f64,
    /// Number of recorded ids.
    pub total: u64,
}

impl CodeUsage {
    /// An empty accumulator over `k` codes.
    pub fn new(k: usize) -> CodeUsage {
        CodeUsage { counts: vec![0; k] }
    }

    /// From existing counts (e.g. all-reduced across workers).
    pub fn from_counts(counts: Vec<u64>) -> CodeUsage {
        CodeUsage { counts }
    }

    /// Counts ids; errors (recording nothing) when an id is `>= K`, naming it and its position.
    pub fn record(&mut self, ids: &[u32]) -> Result<()> {
        ids_below(ids, self.counts.len(), "usage ids")?;
        for &i in ids {
            self.counts[i as usize] += 1;
        }
        Ok(())
    }

    /// Adds another accumulator of the same size.
    pub fn merge(&mut self, other: &CodeUsage) -> Result<()> {
        if other.counts.len() != self.counts.len() {
            return Err(Error::SizeMismatch {
                what: "usage merge".into(),
                left: format!("K = {}", self.counts.len()),
                right: format!("K = {}", other.counts.len()),
            });
        }
        self.counts
            .iter_mut()
            .zip(&other.counts)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Per-code counts `[K]`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Codebook size K.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// True when K = 0.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Total number of recorded ids.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Codes hit at least once.
    pub fn used(&self) -> usize {
        self.counts.iter().filter(|&&c| c > 0).count()
    }

    /// Codes never hit (dead-code candidates), ascending.
    pub fn unused(&self) -> Vec<u32> {
        (0..self.counts.len() as u32)
            .filter(|&i| self.counts[i as usize] == 0)
            .collect()
    }

    /// `used / K` (0 for K = 0).
    pub fn fraction(&self) -> f64 {
        if self.counts.is_empty() {
            0.0
        } else {
            self.used() as f64 / self.counts.len() as f64
        }
    }

    /// `exp(-sum p log p)` with `p = count / total`; 0 when nothing was recorded.
    pub fn perplexity(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let t = total as f64;
        let h: f64 = self
            .counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / t;
                -p * p.ln()
            })
            .sum();
        h.exp()
    }

    /// All summary numbers at once.
    pub fn summary(&self) -> UsageSummary {
        UsageSummary {
            size: self.len(),
            used: self.used(),
            fraction: self.fraction(),
            perplexity: self.perplexity(),
            total: self.total(),
        }
    }
}

/// Usage over the SGHC vocabulary: exact counts per unified id, from which the semantic counts
/// and the per-group histogram are derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SghcUsage {
    index: UnifiedIndex,
    unified: CodeUsage,
}

impl SghcUsage {
    /// An empty accumulator over `index.vocab_size()` unified ids.
    pub fn new(index: UnifiedIndex) -> SghcUsage {
        SghcUsage {
            index,
            unified: CodeUsage::new(index.vocab_size()),
        }
    }

    /// The id space.
    pub fn index(&self) -> UnifiedIndex {
        self.index
    }

    /// Counts unified ids; errors name the first id `>= K_sem * m`.
    pub fn record_unified(&mut self, unified: &[u32]) -> Result<()> {
        self.unified.record(unified)
    }

    /// Counts (semantic id, sub-code id) pairs.
    pub fn record(&mut self, sem: &[u32], sub: &[u32]) -> Result<()> {
        let u = self.index.encode_all(sem, sub)?;
        self.unified.record(&u)
    }

    /// Adds another accumulator over the same id space.
    pub fn merge(&mut self, other: &SghcUsage) -> Result<()> {
        if other.index != self.index {
            return Err(Error::SizeMismatch {
                what: "SGHC usage merge".into(),
                left: format!("{:?}", self.index),
                right: format!("{:?}", other.index),
            });
        }
        self.unified.merge(&other.unified)
    }

    /// Usage of the `K_sem * m` unified vocabulary.
    pub fn unified(&self) -> &CodeUsage {
        &self.unified
    }

    /// Usage of the semantic codebook (counts summed over each group of m sub-codes).
    pub fn semantic(&self) -> CodeUsage {
        let m = self.index.m();
        CodeUsage::from_counts(
            self.unified
                .counts()
                .chunks_exact(m)
                .map(|g| g.iter().sum())
                .collect(),
        )
    }

    /// `hist[u]` = number of semantic codes with exactly `u` of their m sub-codes used; length m + 1.
    pub fn group_histogram(&self) -> Vec<u64> {
        let m = self.index.m();
        let mut hist = vec![0u64; m + 1];
        for g in self.unified.counts().chunks_exact(m) {
            hist[g.iter().filter(|&&c| c > 0).count()] += 1;
        }
        hist
    }
}
