//! The LLM's text tokenizer (a Hugging Face `tokenizer.json`, e.g. the embedded Qwen2.5 one).

use crate::error::{Error, Result};
use crate::vocab::VisualVocab;
use std::path::Path;

/// A text tokenizer whose full size (added tokens included) is where visual tokens start.
#[derive(Debug)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: String,
}

impl TextTokenizer {
    /// Load `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let p = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        Ok(Self { inner, path: p })
    }
    /// Number of text tokens, added/special tokens included.
    pub fn vocab_size(&self) -> u32 {
        self.inner.get_vocab_size(true) as u32
    }
    /// The extended vocabulary for a SemHiTok with `k_sem` semantic codes and `m` pixel codes each.
    pub fn extended_vocab(&self, k_sem: u32, m: u32) -> Result<VisualVocab> {
        VisualVocab::new(self.vocab_size(), k_sem, m)
    }
    /// Text -> token ids (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                msg: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }
    /// Token ids -> text (ids must be text tokens).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }
}
