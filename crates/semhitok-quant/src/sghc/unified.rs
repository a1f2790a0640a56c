//! The unified id space `u = k * m + j` (one definition: the tch side and semhitok-mllm
//! convert through it).

use crate::check::{ids_below, len_eq};
use crate::error::{invalid, Error, Result};
use serde::{Deserialize, Serialize};

/// The unified id space `u = k * m + j` for `k < K_sem`, `j < m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnifiedIndex {
    k_sem: u32,
    m: u32,
}

impl UnifiedIndex {
    /// `K_sem` semantic codes with `m` pixel codes each. Errors unless both are >= 1 and
    /// `K_sem * m` fits in a u32.
    pub fn new(k_sem: usize, m: usize) -> Result<UnifiedIndex> {
        if k_sem == 0 || k_sem > u32::MAX as usize {
            return Err(invalid("K_sem", k_sem, "must be in 1..2^32"));
        }
        if m == 0 || m > u32::MAX as usize {
            return Err(invalid("m (sub-codebook size)", m, "must be in 1..2^32"));
        }
        if (k_sem as u64) * (m as u64) > u64::from(u32::MAX) {
            return Err(invalid(
                "K_sem * m",
                (k_sem as u64) * (m as u64),
                "the unified vocabulary must fit in u32",
            ));
        }
        Ok(UnifiedIndex {
            k_sem: k_sem as u32,
            m: m as u32,
        })
    }

    /// The paper's 256px configuration: 16384 semantic codes x 12 pixel codes = 196,608 ids.
    pub fn paper() -> UnifiedIndex {
        UnifiedIndex {
            k_sem: 16384,
            m: 12,
        }
    }

    /// Number of semantic codes `K_sem`.
    pub fn k_sem(&self) -> usize {
        self.k_sem as usize
    }

    /// Sub-codebook size `m`.
    pub fn m(&self) -> usize {
        self.m as usize
    }

    /// Unified vocabulary size `K_sem * m`.
    pub fn vocab_size(&self) -> usize {
        self.k_sem as usize * self.m as usize
    }

    /// `u = k * m + j`; errors name `k` or `j` when out of range.
    pub fn encode(&self, k: u32, j: u32) -> Result<u32> {
        if k >= self.k_sem {
            return Err(Error::IdOutOfRange {
                what: "semantic id".into(),
                id: k.into(),
                bound: self.k_sem.into(),
            });
        }
        if j >= self.m {
            return Err(Error::IdOutOfRange {
                what: "pixel sub-code id".into(),
                id: j.into(),
                bound: self.m.into(),
            });
        }
        Ok(self.compose(k, j))
    }

    /// The rule itself, `k * m + j`, for ids already checked (`k < K_sem`, `j < m`): the one
    /// place it is written; every other conversion calls it or [`Self::split`].
    pub(crate) fn compose(&self, k: u32, j: u32) -> u32 {
        k * self.m + j
    }

    /// The inverse rule, `(u / m, u % m)`, for an id already checked (`u < K_sem * m`).
    pub(crate) fn split(&self, u: u32) -> (u32, u32) {
        (u / self.m, u % self.m)
    }

    /// `(k, j) = (u / m, u % m)`; errors name `u` when `u >= K_sem * m`.
    pub fn decode(&self, u: u32) -> Result<(u32, u32)> {
        if u as usize >= self.vocab_size() {
            return Err(Error::IdOutOfRange {
                what: "unified id".into(),
                id: u.into(),
                bound: self.vocab_size() as u64,
            });
        }
        Ok(self.split(u))
    }

    /// Element-wise [`Self::encode`]; errors name the position of the first bad id.
    pub fn encode_all(&self, sem: &[u32], sub: &[u32]) -> Result<Vec<u32>> {
        len_eq(
            "pixel sub-code ids",
            sub.len(),
            sem.len(),
            "one per semantic id",
        )?;
        ids_below(sem, self.k_sem(), "semantic ids")?;
        ids_below(sub, self.m(), "pixel sub-code ids")?;
        Ok(sem
            .iter()
            .zip(sub)
            .map(|(&k, &j)| self.compose(k, j))
            .collect())
    }

    /// Element-wise [`Self::decode`] -> (semantic ids, sub-code ids).
    pub fn decode_all(&self, unified: &[u32]) -> Result<(Vec<u32>, Vec<u32>)> {
        ids_below(unified, self.vocab_size(), "unified ids")?;
        Ok(unified.iter().map(|&u| self.split(u)).unzip())
    }
}
