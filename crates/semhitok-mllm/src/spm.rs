//! SentencePiece `tokenizer.model` (the only tokenizer file of Llama-2 / Vicuna folders) as a
//! `tokenizers` tokenizer.
//!
//! The file is a protobuf `ModelProto` (sentencepiece `sentencepiece_model.proto`); this reads
//! the fields a tokenizer needs: `pieces` (1: piece 1, score 2, type 3), `trainer_spec` (2:
//! model_type 3, byte_fallback 35) and `normalizer_spec` (3: name 1, add_dummy_prefix 3,
//! remove_extra_whitespaces 4). The conversion follows transformers' `LlamaConverter`: BPE over
//! the pieces with merges ranked by the merged piece's score (Unigram models use the scores
//! directly), byte fallback to `<0xXX>` pieces, normalizer "prepend ▁ + spaces to ▁", control
//! pieces (`<s>`, `</s>`) and the unknown piece (`<unk>`) special, as transformers' tokenizers
//! have them. Only the `identity` normalization without extra-whitespace removal is supported
//! (Llama-2's); other specs are refused by name.
//!
//! `legacy` is transformers' `LlamaTokenizer(legacy=...)` (a `tokenizer_config.json` key;
//! Vicuna-7B v1.5 sets `false`): with `legacy = true` (transformers' default) every chunk between
//! special tokens gets SentencePiece's dummy prefix `▁` (`"</s> USER"` -> `</s> ▁ ▁USER`); with
//! `legacy = false` only the start of the text does (`"</s> USER"` -> `</s> ▁USER`,
//! `"<s>Hi"` -> `<s> Hi`). [`SpmModel::to_tokenizer_with`]`(path, false)` builds the converter's
//! fast form of that (a `Metaspace` pre-tokenizer with `prepend_scheme = "first"`, what
//! transformers' `LlamaConverter` writes); [`crate::tokenizer::TextTokenizer::from_spm`] adds the
//! slow tokenizer's text handling on top (golden: `tests/fixtures/llava/legacy.json`).

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormSequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, Tokenizer};

/// Piece types of `SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub ty: PieceType,
}

/// The parts of `ModelProto` read here.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    pub pieces: Vec<Piece>,
    /// 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    pub byte_fallback: bool,
    pub normalizer: String,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
}

struct Pb<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Pb<'a> {
    fn err(&self) -> Error {
        Error::Tokenizer {
            path: self.path.to_string(),
            msg: format!(
                "malformed SentencePiece model protobuf at byte {}",
                self.pos
            ),
        }
    }
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos).ok_or_else(|| self.err())?;
            self.pos += 1;
            v |= ((byte & 0x7F) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err())
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| self.err())?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    /// Next (field number, wire value): varint / fixed as u64, length-delimited as bytes.
    fn field(&mut self) -> Result<Option<(u64, Wire<'a>)>> {
        if self.pos >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let w = match key & 7 {
            0 => Wire::Int(self.varint()?),
            1 => Wire::Int(u64::from_le_bytes(
                self.bytes(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let n = self.varint()? as usize;
                Wire::Bytes(self.bytes(n)?)
            }
            5 => Wire::Int(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")) as u64),
            _ => return Err(self.err()),
        };
        Ok(Some((key >> 3, w)))
    }
}

enum Wire<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

impl SpmModel {
    /// Parse `tokenizer.model`.
    pub fn open(path: &Path) -> Result<Self> {
        let p = path.display().to_string();
        let b = std::fs::read(path).map_err(|e| Error::Tokenizer {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        Self::parse(&b, &p)
    }

    /// Parse a serialized `ModelProto`; `path` names it in errors.
    pub fn parse(b: &[u8], path: &str) -> Result<Self> {
        let mut m = SpmModel {
            pieces: vec![],
            model_type: 1,
            byte_fallback: false,
            normalizer: "nmt_nfkc".into(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
        };
        let mut top = Pb { b, pos: 0, path };
        while let Some((f, w)) = top.field()? {
            let Wire::Bytes(sub) = w else { continue };
            let mut pb = Pb {
                b: sub,
                pos: 0,
                path,
            };
            match f {
                1 => {
                    let mut piece = Piece {
                        piece: String::new(),
                        score: 0.0,
                        ty: PieceType::Normal,
                    };
                    while let Some((g, v)) = pb.field()? {
                        match (g, v) {
                            (1, Wire::Bytes(s)) => {
                                piece.piece = String::from_utf8(s.to_vec()).map_err(|_| pb.err())?
                            }
                            (2, Wire::Int(x)) => piece.score = f32::from_bits(x as u32),
                            (3, Wire::Int(x)) => {
                                piece.ty = match x {
                                    1 => PieceType::Normal,
                                    2 => PieceType::Unknown,
                                    3 => PieceType::Control,
                                    4 => PieceType::UserDefined,
                                    5 => PieceType::Unused,
                                    6 => PieceType::Byte,
                                    _ => return Err(pb.err()),
                                }
                            }
                            _ => {}
                        }
                    }
                    m.pieces.push(piece);
                }
                2 => {
                    while let Some((g, v)) = pb.field()? {
                        match (g, v) {
                            (3, Wire::Int(x)) => m.model_type = x,
                            (35, Wire::Int(x)) => m.byte_fallback = x != 0,
                            _ => {}
                        }
                    }
                }
                3 => {
                    while let Some((g, v)) = pb.field()? {
                        match (g, v) {
                            (1, Wire::Bytes(s)) => {
                                m.normalizer = String::from_utf8_lossy(s).into_owned()
                            }
                            (3, Wire::Int(x)) => m.add_dummy_prefix = x != 0,
                            (4, Wire::Int(x)) => m.remove_extra_whitespaces = x != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err(Error::Tokenizer {
                path: path.into(),
                msg: "no pieces: not a SentencePiece model".into(),
            });
        }
        Ok(m)
    }

    /// The equivalent `tokenizers` tokenizer with `legacy = true`.
    pub fn to_tokenizer(&self, path: &str) -> Result<Tokenizer> {
        self.to_tokenizer_with(path, true)
    }

    /// The equivalent `tokenizers` tokenizer; `legacy` as transformers' (module docs).
    pub fn to_tokenizer_with(&self, path: &str, legacy: bool) -> Result<Tokenizer> {
        let terr = |msg: String| Error::Tokenizer {
            path: path.into(),
            msg,
        };
        if self.normalizer != "identity" || self.remove_extra_whitespaces {
            return Err(terr(format!(
                "normalizer {:?} (remove_extra_whitespaces = {}) is not supported: only identity \
                 without whitespace removal (Llama-2's)",
                self.normalizer, self.remove_extra_whitespaces
            )));
        }
        let unk = self.pieces.iter().position(|p| p.ty == PieceType::Unknown);
        let mut tk = match self.model_type {
            2 => {
                let vocab: HashMap<String, u32> = self
                    .pieces
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.piece.clone(), i as u32))
                    .collect();
                // transformers' SentencePieceExtractor: every split of a piece into two pieces of
                // the vocabulary is a merge, ranked by the merged piece's score (higher first),
                // ties by the ids of the two halves.
                let mut merges: Vec<(f32, u32, u32, String, String)> = vec![];
                for p in &self.pieces {
                    let s = &p.piece;
                    for (cut, _) in s.char_indices().skip(1) {
                        let (l, r) = s.split_at(cut);
                        if let (Some(&il), Some(&ir)) = (vocab.get(l), vocab.get(r)) {
                            merges.push((p.score, il, ir, l.to_string(), r.to_string()));
                        }
                    }
                }
                merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
                let merges: Vec<(String, String)> =
                    merges.into_iter().map(|m| (m.3, m.4)).collect();
                let vocab: tokenizers::models::bpe::Vocab = vocab.into_iter().collect();
                let mut b = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(self.byte_fallback)
                    .fuse_unk(true);
                if let Some(u) = unk {
                    b = b.unk_token(self.pieces[u].piece.clone());
                }
                Tokenizer::new(b.build().map_err(|e| terr(format!("BPE: {e}")))?)
            }
            1 => {
                let vocab: Vec<(String, f64)> = self
                    .pieces
                    .iter()
                    .map(|p| (p.piece.clone(), p.score as f64))
                    .collect();
                let u = Unigram::from(vocab, unk, self.byte_fallback)
                    .map_err(|e| terr(format!("Unigram: {e}")))?;
                Tokenizer::new(u)
            }
            t => {
                return Err(terr(format!(
                    "model_type {t} is not supported (1 unigram, 2 BPE)"
                )))
            }
        };
        if legacy {
            let mut norms: Vec<NormalizerWrapper> = vec![];
            if self.add_dummy_prefix {
                norms.push(Prepend::new("▁".into()).into());
            }
            norms.push(
                Replace::new(" ", "▁")
                    .map_err(|e| terr(e.to_string()))?
                    .into(),
            );
            tk.with_normalizer(Some(NormSequence::new(norms)));
        } else {
            // transformers' LlamaConverter for legacy = false: no normalizer; spaces -> ▁ and the
            // dummy prefix only on the text's first section (not after special tokens).
            let scheme = if self.add_dummy_prefix {
                PrependScheme::First
            } else {
                PrependScheme::Never
            };
            tk.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
        }
        let mut decs: Vec<DecoderWrapper> = vec![
            tokenizers::decoders::DecoderWrapper::Replace(
                tokenizers::normalizers::Replace::new("▁", " ").map_err(|e| terr(e.to_string()))?,
            ),
            ByteFallback::default().into(),
            Fuse::default().into(),
        ];
        if self.add_dummy_prefix {
            decs.push(Strip::new(' ', 1, 0).into());
        }
        tk.with_decoder(Some(DecoderSequence::new(decs)));
        let special: Vec<AddedToken> = self
            .pieces
            .iter()
            .filter(|p| matches!(p.ty, PieceType::Control | PieceType::Unknown))
            .map(|p| AddedToken::from(p.piece.clone(), true))
            .collect();
        tk.add_special_tokens(&special);
        Ok(tk)
    }
}
