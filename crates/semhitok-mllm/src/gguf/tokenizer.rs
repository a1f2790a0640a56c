//! The text tokenizer stored in GGUF metadata, as a `tokenizers` tokenizer (no tokenizer.json
//! needed).
//!
//! `tokenizer.ggml.model = gpt2` is byte-level BPE: `tokenizer.ggml.tokens` (already spelled in
//! GPT-2's byte alphabet), `tokenizer.ggml.merges` (`"a b"`), `tokenizer.ggml.token_type`
//! (3 = control: special tokens such as `<|im_start|>`; 4 = user defined: added, not special).
//! The pre-tokenizer depends on `tokenizer.ggml.pre` (llama.cpp `llama-vocab.cpp`):
//! - `smollm`, `starcoder`, `refact`: every digit on its own (HF `Digits(individual_digits)`),
//!   then GPT-2 byte-level; plain byte-level would merge digit runs the model never saw.
//! - `default`, `gpt2`: GPT-2 byte-level.
//! - `qwen2`, `llama-bpe` (Llama 3): their split regex, then byte-level without its own regex.
//! Any other value is refused: silently using the wrong split gives wrong ids.

use super::reader::{GgufFile, Value};
use crate::error::{Error, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Tokenizer};

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer a GGUF `pre` value stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreSplit {
    /// Digits isolated, then GPT-2 byte-level (`smollm`, `starcoder`, `refact`).
    DigitsThenByteLevel,
    /// GPT-2 byte-level (`default`, `gpt2`).
    ByteLevel,
    /// Qwen2's regex.
    Qwen2,
    /// Llama 3's regex.
    Llama3,
}

impl PreSplit {
    /// From `tokenizer.ggml.pre`; `None` for unknown values.
    pub fn from_pre(pre: &str) -> Option<Self> {
        Some(match pre {
            "smollm" | "starcoder" | "refact" => Self::DigitsThenByteLevel,
            "default" | "gpt2" => Self::ByteLevel,
            "qwen2" | "deepseek-r1-qwen" => Self::Qwen2,
            "llama-bpe" | "llama3" | "llama-v3" => Self::Llama3,
            _ => return None,
        })
    }
}

/// What the GGUF says about special tokens besides the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTokenizerInfo {
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (default false for gpt2 vocabularies).
    pub add_bos: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// The token strings by id.
    pub tokens: Vec<String>,
}

fn terr(f: &GgufFile, msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        path: f.path.clone(),
        msg: msg.to_string(),
    }
}

fn strings(f: &GgufFile, key: &str) -> Result<Vec<String>> {
    let a = f
        .require(key)?
        .as_array()
        .ok_or_else(|| terr(f, format!("{key} is not an array")))?;
    a.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| terr(f, format!("{key}[{i}] is not a string")))
        })
        .collect()
}

/// Build the tokenizer and its special-token info.
pub fn tokenizer(f: &GgufFile) -> Result<(Tokenizer, GgufTokenizerInfo)> {
    let model = f
        .require("tokenizer.ggml.model")?
        .as_str()
        .unwrap_or_default()
        .to_string();
    if model != "gpt2" {
        return Err(terr(
            f,
            format!("tokenizer.ggml.model = {model:?}: only gpt2 (byte-level BPE) is supported"),
        ));
    }
    let pre_name = f
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let pre = PreSplit::from_pre(pre_name).ok_or_else(|| {
        terr(
            f,
            format!(
                "tokenizer.ggml.pre = {pre_name:?} is not supported \
                 (smollm, starcoder, refact, default, gpt2, qwen2, llama-bpe)"
            ),
        )
    })?;
    let tokens = strings(f, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(f, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    terr(
                        f,
                        format!("tokenizer.ggml.merges[{i}] = {m:?} has no space"),
                    )
                })
        })
        .collect::<Result<_>>()?;
    let types: Vec<i64> = match f.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => v
            .as_array()
            .ok_or_else(|| terr(f, "tokenizer.ggml.token_type is not an array"))?
            .iter()
            .map(|x| x.as_i64().unwrap_or(1))
            .collect(),
    };
    if types.len() != tokens.len() {
        return Err(terr(
            f,
            format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            ),
        ));
    }
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| terr(f, format!("BPE: {e}")))?;
    let mut tk = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tok: PreTokenizerWrapper = match pre {
        PreSplit::ByteLevel => byte_level.into(),
        PreSplit::DigitsThenByteLevel => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        PreSplit::Qwen2 | PreSplit::Llama3 => {
            let re = if pre == PreSplit::Qwen2 {
                QWEN2_SPLIT
            } else {
                LLAMA3_SPLIT
            };
            let split = Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| terr(f, format!("split regex: {e}")))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
    };
    tk.with_pre_tokenizer(Some(pre_tok));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tk.add_special_tokens(&special);
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 4)
        .map(|(s, _)| AddedToken::from(s.clone(), false))
        .collect();
    tk.add_tokens(&user);
    let id = |k: &str| f.get(k).and_then(Value::as_u64).map(|x| x as u32);
    let info = GgufTokenizerInfo {
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        add_bos: f
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        chat_template: f
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_string),
        tokens,
    };
    Ok((tk, info))
}
