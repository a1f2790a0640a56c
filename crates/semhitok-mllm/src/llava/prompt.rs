//! LLaVA-format conversations -> input ids and labels (one [`IMAGE_TOKEN_INDEX`] for `<image>`,
//! [`IGNORE_INDEX`] wherever no loss is taken).
//!
//! Reference: haotian-liu/LLaVA (c121f04) `llava/mm_utils.py::tokenizer_image_token`,
//! `llava/train/train.py::{preprocess_plain, preprocess_v1}`. The v1 labels are LLaVA's own
//! construction, kept exactly (golden test `mllm::llava::prompts_match_llava`): the conversation
//! is tokenized whole, then each round `r` (split at `sep2 = "</s>"`) is masked over
//! `len(tok(instruction_r)) - 2` tokens and advanced by `len(tok(r))` tokens, counting each
//! chunk's BOS in place of the `</s>` the split removed; when the rounds do not add up to the
//! sequence length (LLaVA's "tokenization mismatch") every label is ignored and the example is
//! counted. With a `legacy = false` SentencePiece tokenizer (Vicuna-v1.5's tokenizer_config;
//! [`TextTokenizer::legacy`]) LLaVA's correction for transformers >= 4.34 applies: rounds after
//! the first count one token less in both lengths (golden `golden-nonlegacy.json`).
//!
//! [`Template::Chat`] (the LLM's own template, e.g. SmolLM2/Qwen ChatML) has no LLaVA reference
//! code; its labels are built from the rendered prefixes: the text up to each assistant turn's
//! header (rendered with `add_generation_prompt`) is ignored, the rest of that turn (answer and
//! end-of-turn tokens) is the target.

use super::template::{image_first, plain_prompt, vicuna_v1_prompt, Template, VICUNA_V1_ROLES};
use super::template::{VICUNA_V1_SEP, VICUNA_V1_SEP2};
use super::{IGNORE_INDEX, IMAGE_TOKEN_INDEX};
use crate::chat::{ChatTemplate, Message, Role as ChatRole};
use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;
use semhitok_data::llava::{Role, Turn, IMAGE_TOKEN};

/// One conversation as the LLM sees it, before the image features are spliced in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids; one [`IMAGE_TOKEN_INDEX`] where the image goes.
    pub input_ids: Vec<i64>,
    /// Targets aligned with `input_ids` (unshifted); [`IGNORE_INDEX`] = no loss.
    pub labels: Vec<i64>,
    /// LLaVA's tokenization-mismatch rule fired: every label is ignored.
    pub mismatch: bool,
}

impl Example {
    /// Whether the conversation has an image placeholder.
    pub fn has_image(&self) -> bool {
        self.input_ids.contains(&IMAGE_TOKEN_INDEX)
    }
    /// Tokens that carry a loss.
    pub fn n_targets(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Builds [`Example`]s and generation prompts for one tokenizer and template.
#[derive(Debug)]
pub struct PromptBuilder<'a> {
    tokenizer: &'a TextTokenizer,
    template: Template,
    chat: Option<&'a ChatTemplate>,
    bos: Option<i64>,
    /// `tokenizer.model_max_length` of LLaVA's mismatch rule (checked only below it).
    max_len: usize,
}

impl<'a> PromptBuilder<'a> {
    /// `bos`: the token the tokenizer prepends to every `tokenizer(text)` call (Llama/Vicuna `<s>`;
    /// `None` for SmolLM/Qwen); `chat`: the LLM's template, needed by [`Template::Chat`];
    /// `max_len`: the model's sequence limit.
    pub fn new(
        tokenizer: &'a TextTokenizer,
        template: Template,
        chat: Option<&'a ChatTemplate>,
        bos: Option<u32>,
        max_len: usize,
    ) -> Result<Self> {
        let what = || format!("template {}", template.as_str());
        match template {
            Template::VicunaV1 if bos.is_none() => {
                return Err(Error::Prompt {
                    what: what(),
                    msg: "needs a tokenizer that prepends a BOS token (Llama / Vicuna \
                          SentencePiece): LLaVA's v1 round offsets count it; use template = \
                          \"chat\" for models with their own chat template"
                        .into(),
                })
            }
            Template::Chat if chat.is_none() => {
                return Err(Error::Prompt {
                    what: what(),
                    msg: "the LLM ships no chat template; use vicuna_v1 or plain".into(),
                })
            }
            Template::VicunaV1 if tokenizer.token_to_id(VICUNA_V1_SEP2).is_none() => {
                return Err(Error::Prompt {
                    what: what(),
                    msg: format!("the tokenizer has no {VICUNA_V1_SEP2} token"),
                })
            }
            _ => {}
        }
        Ok(Self {
            tokenizer,
            template,
            chat,
            bos: bos.map(i64::from),
            max_len,
        })
    }

    /// The template in use.
    pub fn template(&self) -> Template {
        self.template
    }

    /// `tokenizer(text).input_ids`: BOS (when the tokenizer adds one) + the text's tokens.
    fn tok(&self, text: &str) -> Result<Vec<i64>> {
        let mut ids: Vec<i64> = self.bos.into_iter().collect();
        ids.extend(self.tokenizer.encode(text)?.into_iter().map(i64::from));
        Ok(ids)
    }

    /// `tokenizer_image_token`: each `<image>`-separated chunk tokenized with its BOS, the first
    /// BOS kept, the others dropped, one [`IMAGE_TOKEN_INDEX`] between chunks.
    pub fn tokenizer_image_token(&self, prompt: &str) -> Result<Vec<i64>> {
        let chunks = prompt
            .split(IMAGE_TOKEN)
            .map(|c| self.tok(c))
            .collect::<Result<Vec<_>>>()?;
        let mut ids = vec![];
        let offset = match (chunks[0].first(), self.bos) {
            (Some(&f), Some(b)) if f == b => {
                ids.push(b);
                1
            }
            _ => 0,
        };
        for (i, c) in chunks.iter().enumerate() {
            if i > 0 {
                ids.push(IMAGE_TOKEN_INDEX);
            }
            ids.extend_from_slice(&c[offset.min(c.len())..]);
        }
        Ok(ids)
    }

    /// Tokens without any BOS (segments of a chat-template conversation), `<image>` -> one
    /// [`IMAGE_TOKEN_INDEX`].
    fn tok_segment(&self, text: &str) -> Result<Vec<i64>> {
        let mut ids = vec![];
        for (i, c) in text.split(IMAGE_TOKEN).enumerate() {
            if i > 0 {
                ids.push(IMAGE_TOKEN_INDEX);
            }
            ids.extend(self.tokenizer.encode(c)?.into_iter().map(i64::from));
        }
        Ok(ids)
    }

    /// A training example from a validated LLaVA record's turns (`human` first, alternating).
    /// `id` names the record in errors.
    pub fn example(&self, turns: &[Turn], id: &str) -> Result<Example> {
        let bad = |msg: String| Error::Prompt {
            what: format!("record {id}, template {}", self.template.as_str()),
            msg,
        };
        if turns.is_empty() {
            return Err(bad("no turns".into()));
        }
        for (j, t) in turns.iter().enumerate() {
            let want = if j % 2 == 0 { Role::Human } else { Role::Gpt };
            if t.from != want {
                return Err(bad(format!("turn {j} is {:?}, expected {want:?}", t.from)));
            }
        }
        let has_image = turns.iter().any(|t| t.value.contains(IMAGE_TOKEN));
        let values: Vec<String> = turns
            .iter()
            .map(|t| {
                if has_image {
                    image_first(&t.value)
                } else {
                    t.value.clone()
                }
            })
            .collect();
        match self.template {
            Template::Plain => self.plain(&values, has_image).map_err(|m| bad(m)),
            Template::VicunaV1 => self.v1(&values),
            Template::Chat => self.chat(&values).map_err(|e| match e {
                Error::Prompt { msg, .. } => bad(msg),
                e => e,
            }),
        }
    }

    /// `preprocess_plain`: the first turn replaced by `<image>`, then the caption and `"\n"`;
    /// the `<image>` prefix (with BOS) is masked.
    fn plain(&self, values: &[String], has_image: bool) -> std::result::Result<Example, String> {
        if values.len() != 2 || !has_image || !values[0].contains(IMAGE_TOKEN) {
            return Err(format!(
                "plain needs one human turn with {IMAGE_TOKEN} and one answer, got {} turns{}",
                values.len(),
                if has_image { "" } else { " without an image" }
            ));
        }
        let conversation = format!("{IMAGE_TOKEN}{}{}", values[1], super::template::PLAIN_SEP);
        let input_ids = self
            .tokenizer_image_token(&conversation)
            .map_err(|e| e.to_string())?;
        let n = self
            .tokenizer_image_token(IMAGE_TOKEN)
            .map_err(|e| e.to_string())?
            .len();
        let mut labels = input_ids.clone();
        let n = n.min(labels.len());
        labels[..n].fill(IGNORE_INDEX);
        Ok(Example {
            input_ids,
            labels,
            mismatch: false,
        })
    }

    /// `preprocess_v1`.
    fn v1(&self, values: &[String]) -> Result<Example> {
        let messages: Vec<(&str, Option<&str>)> = values
            .iter()
            .enumerate()
            .map(|(j, v)| (VICUNA_V1_ROLES[j % 2], Some(v.as_str())))
            .collect();
        let conversation = vicuna_v1_prompt(&messages);
        // (text-only records are tokenized with `truncation=True, max_length`; with an image,
        // the collator truncates later: both are the caller's `truncate` here.)
        let input_ids = self.tokenizer_image_token(&conversation)?;
        let mut labels = input_ids.clone();
        let total_len = input_ids.len();
        let sep = format!("{VICUNA_V1_SEP}{}: ", VICUNA_V1_ROLES[1]);
        let mut cur_len = 1usize;
        fn mask(labels: &mut [i64], lo: usize, hi: usize) {
            let (lo, hi) = (lo.min(labels.len()), hi.min(labels.len()));
            labels[lo..hi.max(lo)].fill(IGNORE_INDEX);
        }
        mask(&mut labels, 0, cur_len);
        for (i, rou) in conversation.split(VICUNA_V1_SEP2).enumerate() {
            if rou.is_empty() {
                break;
            }
            let parts: Vec<&str> = rou.split(sep.as_str()).collect();
            if parts.len() != 2 {
                break;
            }
            let instruction = format!("{}{sep}", parts[0]);
            let mut round_len = self.tokenizer_image_token(rou)?.len();
            let mut instruction_len = self
                .tokenizer_image_token(&instruction)?
                .len()
                .saturating_sub(2);
            // train.py: `if i != 0 and not tokenizer.legacy and IS_TOKENIZER_GREATER_THAN_0_14`.
            if i != 0 && !self.tokenizer.legacy() {
                round_len = round_len.saturating_sub(1);
                instruction_len = instruction_len.saturating_sub(1);
            }
            mask(&mut labels, cur_len, cur_len + instruction_len);
            cur_len += round_len;
        }
        mask(&mut labels, cur_len, usize::MAX);
        let mismatch = cur_len < self.max_len && cur_len != total_len;
        if mismatch {
            labels.fill(IGNORE_INDEX);
        }
        Ok(Example {
            input_ids,
            labels,
            mismatch,
        })
    }

    fn chat_messages(values: &[String]) -> Vec<Message> {
        values
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let role = if j % 2 == 0 {
                    ChatRole::User
                } else {
                    ChatRole::Assistant
                };
                Message::new(role, v.clone())
            })
            .collect()
    }

    /// The model's chat template: prefixes rendered turn by turn; each assistant turn's text
    /// after its header is the target.
    fn chat(&self, values: &[String]) -> Result<Example> {
        let chat = self.chat.expect("checked in new");
        let msgs = Self::chat_messages(values);
        let mut input_ids: Vec<i64> = self.bos.into_iter().collect();
        let mut labels = vec![IGNORE_INDEX; input_ids.len()];
        let mut done = String::new();
        let not_prefix = |i: usize| Error::Prompt {
            what: "chat template".into(),
            msg: format!(
                "the rendering of the first {i} messages is not a prefix of the longer \
                 conversation's; its labels cannot be placed"
            ),
        };
        for i in (1..msgs.len()).step_by(2) {
            let head = chat.render(&msgs[..i], true)?;
            let full = chat.render(&msgs[..=i], false)?;
            let prompt_part = head
                .strip_prefix(done.as_str())
                .ok_or_else(|| not_prefix(i))?;
            let answer_part = full
                .strip_prefix(head.as_str())
                .ok_or_else(|| not_prefix(i))?;
            let p = self.tok_segment(prompt_part)?;
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, p.len()));
            input_ids.extend(p);
            let a = self.tok_segment(answer_part)?;
            labels.extend(a.iter().map(|&t| {
                if t == IMAGE_TOKEN_INDEX {
                    IGNORE_INDEX
                } else {
                    t
                }
            }));
            input_ids.extend(a);
            done = full;
        }
        Ok(Example {
            input_ids,
            labels,
            mismatch: false,
        })
    }

    /// The prompt the model answers `question` from (the image placed first, as in training):
    /// vicuna_v1 `"... USER: <image>\n{q} ASSISTANT:"`, plain `"<image>\n{q}\n"`, or the chat
    /// template with its generation prompt. Ids include BOS where the tokenizer adds one.
    pub fn generation_prompt(&self, question: &str, with_image: bool) -> Result<Vec<i64>> {
        let q = if with_image && !question.contains(IMAGE_TOKEN) {
            format!("{IMAGE_TOKEN}\n{question}")
        } else {
            question.to_string()
        };
        let q = image_first(&q);
        match self.template {
            Template::VicunaV1 => {
                let p =
                    vicuna_v1_prompt(&[(VICUNA_V1_ROLES[0], Some(&q)), (VICUNA_V1_ROLES[1], None)]);
                self.tokenizer_image_token(&p)
            }
            Template::Plain => self.tokenizer_image_token(&plain_prompt(&[Some(&q), None])),
            Template::Chat => {
                let chat = self.chat.expect("checked in new");
                let text = chat.render(&[Message::new(ChatRole::User, q)], true)?;
                let mut ids: Vec<i64> = self.bos.into_iter().collect();
                ids.extend(self.tok_segment(&text)?);
                Ok(ids)
            }
        }
    }
}
