//! The LLM vocabulary extended by SemHiTok's unified visual ids.
//!
//! Layout (token ids of the extended LLM; `rows` = the model's embedding row count, i.e.
//! `vocab_size` of its `config.json`, **not** the tokenizer's size):
//! ```text
//! [0, rows)                     the LLM's own rows (text tokens, and padding rows no token uses)
//! [rows, rows + K * m)          visual token of unified id u = k * m + j
//! rows + K * m                  <boi>  begin of image
//! rows + K * m + 1              <eoi>  end of image
//! ```
//! Qwen2.5 has 151,936 rows for 151,665 tokens: the 271 rows no token uses were never trained,
//! so the new rows start after them and none of them becomes a visual token. With the paper's
//! K = 16384, m = 12 that is 196,608 visual tokens.

use crate::error::{Error, Result};
use crate::llm::LlamaConfig;
use semhitok_quant::UnifiedIndex;
use serde::{Deserialize, Serialize};

/// The extended vocabulary. Construct with [`VisualVocab::new`] (checked) or
/// [`VisualVocab::for_model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisualVocab {
    /// Embedding rows of the LLM before the extension.
    rows: u32,
    k_sem: u32,
    m: u32,
}

impl VisualVocab {
    /// `rows`: embedding rows of the LLM before the extension (`vocab_size` in its config.json);
    /// `k_sem`: semantic codebook size; `m`: pixel sub-codebook size. Errors if any is zero or
    /// the total does not fit in `u32`.
    pub fn new(rows: u32, k_sem: u32, m: u32) -> Result<Self> {
        if rows == 0 || k_sem == 0 || m == 0 {
            return Err(Error::Config(format!(
                "vocab sizes must be positive: rows={rows}, K={k_sem}, m={m}"
            )));
        }
        // The unified-id rule itself (and its u32 bound) is semhitok-quant's.
        UnifiedIndex::new(k_sem as usize, m as usize)?;
        let total = rows as u64 + 2 + k_sem as u64 * m as u64;
        if total > u32::MAX as u64 {
            return Err(Error::Config(format!(
                "extended vocabulary of {total} tokens does not fit in u32"
            )));
        }
        Ok(Self { rows, k_sem, m })
    }
    /// The vocabulary on top of a model that has not been extended yet: the new rows start at
    /// its `vocab_size` (embedding rows).
    pub fn for_model(cfg: &LlamaConfig, k_sem: u32, m: u32) -> Result<Self> {
        let rows = u32::try_from(cfg.vocab_size).map_err(|_| {
            Error::Config(format!("vocab_size {} does not fit in u32", cfg.vocab_size))
        })?;
        Self::new(rows, k_sem, m)
    }
    /// The paper's SemHiTok vocabulary (K = 16384, m = 12) on top of `rows` embedding rows.
    pub fn paper(rows: u32) -> Result<Self> {
        Self::new(rows, 16384, 12)
    }
    /// Embedding rows of the LLM before the extension (text ids are below this).
    pub fn rows(&self) -> u32 {
        self.rows
    }
    /// Semantic codebook size K.
    pub fn k_sem(&self) -> u32 {
        self.k_sem
    }
    /// Pixel sub-codebook size m.
    pub fn m(&self) -> u32 {
        self.m
    }
    /// Number of unified visual ids, K * m.
    pub fn n_visual(&self) -> u32 {
        self.k_sem * self.m
    }
    /// Rows the extension adds: K * m visual tokens, `<boi>`, `<eoi>` (what `extend_vocab` takes).
    pub fn n_new(&self) -> u32 {
        self.n_visual() + 2
    }
    /// Size of the whole extended vocabulary (the LLM's new embedding / lm_head rows).
    pub fn total(&self) -> u32 {
        self.rows + self.n_new()
    }
    /// First visual token id (= `rows`).
    pub fn visual_start(&self) -> u32 {
        self.rows
    }
    /// `<boi>` token id.
    pub fn boi(&self) -> u32 {
        self.rows + self.n_visual()
    }
    /// `<eoi>` token id.
    pub fn eoi(&self) -> u32 {
        self.rows + self.n_visual() + 1
    }
    /// Token-id range of the visual tokens.
    pub fn visual_range(&self) -> std::ops::Range<u32> {
        self.rows..self.rows + self.n_visual()
    }
    /// Unified id -> LLM token id.
    pub fn token_of(&self, unified: u32) -> Result<u32> {
        if unified >= self.n_visual() {
            return Err(Error::OutOfRange {
                what: "unified id",
                value: unified as i64,
                lo: 0,
                hi: self.n_visual() as i64,
            });
        }
        Ok(self.rows + unified)
    }
    /// LLM token id -> unified id (errors for text and special tokens).
    pub fn unified_of(&self, token: u32) -> Result<u32> {
        let r = self.visual_range();
        if !r.contains(&token) {
            return Err(Error::OutOfRange {
                what: "visual token id",
                value: token as i64,
                lo: r.start as i64,
                hi: r.end as i64,
            });
        }
        Ok(token - r.start)
    }
    /// The unified-id rule `u = k * m + j` of this vocabulary (semhitok-quant's definition).
    pub fn unified_index(&self) -> Result<UnifiedIndex> {
        Ok(UnifiedIndex::new(self.k_sem as usize, self.m as usize)?)
    }
    /// `(semantic id k, pixel id j)` -> LLM token id.
    pub fn token_of_pair(&self, k: u32, j: u32) -> Result<u32> {
        self.token_of(self.unified_index()?.encode(k, j)?)
    }
}
