//! The LLM vocabulary extended by SemHiTok's unified visual ids.
//!
//! Layout (token ids of the extended LLM):
//! ```text
//! [0, text)                     text tokens (the LLM's own tokenizer, added tokens included)
//! text + 0                      <boi>  begin of image
//! text + 1                      <eoi>  end of image
//! [text + 2, text + 2 + K * m)  visual token of unified id u = k * m + j
//! ```
//! With the paper's K = 16384, m = 12 that is 196,608 visual tokens, comparable to the
//! Qwen2 vocabulary (151,646) the paper cites as the scale of an LLM vocabulary.

use crate::error::{Error, Result};
use semhitok_quant::UnifiedIndex;
use serde::{Deserialize, Serialize};

/// The extended vocabulary. Construct with [`VisualVocab::new`] (checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisualVocab {
    text: u32,
    k_sem: u32,
    m: u32,
}

impl VisualVocab {
    /// `text`: size of the LLM's text vocabulary; `k_sem`: semantic codebook size; `m`: pixel
    /// sub-codebook size. Errors if any is zero or the total does not fit in `u32`.
    pub fn new(text: u32, k_sem: u32, m: u32) -> Result<Self> {
        if text == 0 || k_sem == 0 || m == 0 {
            return Err(Error::Config(format!(
                "vocab sizes must be positive: text={text}, K={k_sem}, m={m}"
            )));
        }
        // The unified-id rule itself (and its u32 bound) is semhitok-quant's.
        UnifiedIndex::new(k_sem as usize, m as usize)?;
        let total = text as u64 + 2 + k_sem as u64 * m as u64;
        if total > u32::MAX as u64 {
            return Err(Error::Config(format!(
                "extended vocabulary of {total} tokens does not fit in u32"
            )));
        }
        Ok(Self { text, k_sem, m })
    }
    /// The paper's SemHiTok vocabulary (K = 16384, m = 12) on top of `text` tokens.
    pub fn paper(text: u32) -> Result<Self> {
        Self::new(text, 16384, 12)
    }
    /// Size of the text vocabulary.
    pub fn text_size(&self) -> u32 {
        self.text
    }
    /// Number of unified visual ids, K * m.
    pub fn n_visual(&self) -> u32 {
        self.k_sem * self.m
    }
    /// Size of the whole extended vocabulary (the LLM's new embedding / lm_head rows).
    pub fn total(&self) -> u32 {
        self.text + 2 + self.n_visual()
    }
    /// `<boi>` token id.
    pub fn boi(&self) -> u32 {
        self.text
    }
    /// `<eoi>` token id.
    pub fn eoi(&self) -> u32 {
        self.text + 1
    }
    /// Token-id range of the visual tokens.
    pub fn visual_range(&self) -> std::ops::Range<u32> {
        self.text + 2..self.total()
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
        Ok(self.text + 2 + unified)
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
    /// Text-to-image training sequence: `text ++ <boi> ++ visual(ids) ++ <eoi>`, plus the loss
    /// mask (true where the next-token loss applies: the visual tokens and `<eoi>`).
    pub fn t2i_sequence(&self, text: &[u32], unified_ids: &[u32]) -> Result<(Vec<u32>, Vec<bool>)> {
        if let Some(&t) = text.iter().find(|&&t| t >= self.text) {
            return Err(Error::OutOfRange {
                what: "text token id",
                value: t as i64,
                lo: 0,
                hi: self.text as i64,
            });
        }
        let mut seq = Vec::with_capacity(text.len() + unified_ids.len() + 2);
        seq.extend_from_slice(text);
        seq.push(self.boi());
        for &u in unified_ids {
            seq.push(self.token_of(u)?);
        }
        seq.push(self.eoi());
        let n_text = text.len() + 1;
        let mask = (0..seq.len()).map(|i| i >= n_text).collect();
        Ok((seq, mask))
    }
}
