//! The LLM's text tokenizer: a Hugging Face `tokenizer.json` (e.g. the embedded Qwen2.5 one) or
//! one built from GGUF metadata ([`crate::gguf::tokenizer`]).

use crate::error::{Error, Result};
use std::path::Path;

/// A text tokenizer. (Visual tokens start at the model's embedding row count, which can exceed
/// the tokenizer's size: [`crate::vocab::VisualVocab::for_model`].)
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: String,
    /// SentencePiece with transformers' `legacy = false` (slow `LlamaTokenizer.tokenize`): `▁`
    /// before the text, a lone leading `▁` before a special token dropped ([`Self::from_spm`]).
    spm_non_legacy: bool,
}

impl TextTokenizer {
    /// Load `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let p = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        Ok(Self {
            inner,
            path: p,
            spm_non_legacy: false,
        })
    }
    /// A SentencePiece `tokenizer.model` as transformers' slow `LlamaTokenizer(legacy=legacy)`
    /// tokenizes (see [`crate::spm`]); `origin` names it in errors.
    pub fn from_spm(model: &crate::spm::SpmModel, origin: &str, legacy: bool) -> Result<Self> {
        Ok(Self {
            inner: model.to_tokenizer_with(origin, legacy)?,
            path: origin.to_string(),
            spm_non_legacy: !legacy && model.add_dummy_prefix,
        })
    }
    /// `false` for a SentencePiece tokenizer with transformers' `legacy = false` (LLaVA's
    /// `preprocess_v1` then corrects its round offsets by one token); `true` otherwise.
    pub fn legacy(&self) -> bool {
        !self.spm_non_legacy
    }
    /// Wrap a built tokenizer (e.g. from GGUF metadata); `origin` names it in errors.
    pub fn from_tokenizer(inner: tokenizers::Tokenizer, origin: &str) -> Self {
        Self {
            inner,
            path: origin.to_string(),
            spm_non_legacy: false,
        }
    }
    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
    /// Id of a token string (added/special tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
    /// Token ids -> text with special tokens left out (what a chat answer prints).
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }
    /// Number of text tokens, added/special tokens included.
    pub fn vocab_size(&self) -> u32 {
        self.inner.get_vocab_size(true) as u32
    }
    /// Text -> token ids (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if self.spm_non_legacy {
            return self.encode_non_legacy(text);
        }
        self.encode_raw(text)
    }
    fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                msg: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }
    /// transformers' `LlamaTokenizer.tokenize` with `legacy = False`: `"▁" + text` (with `▁`
    /// in the text read as spaces) through the pre-tokenizer that prefixes only the first
    /// section; a leading lone `▁` followed by a special token is dropped.
    fn encode_non_legacy(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(vec![]);
        }
        let mut ids = self.encode_raw(&format!("▁{}", text.replace('▁', " ")))?;
        if ids.len() > 1 && self.inner.id_to_token(ids[0]).as_deref() == Some("▁") {
            let special = self
                .inner
                .id_to_token(ids[1])
                .is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t));
            if special {
                ids.remove(0);
            }
        }
        Ok(ids)
    }
    /// Token ids -> text (ids must be text tokens).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }
}
