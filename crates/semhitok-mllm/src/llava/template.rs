//! Conversation templates of LLaVA-1.5 and the model's own chat template.
//!
//! Reference: haotian-liu/LLaVA `llava/conversation.py` (c121f04): `conv_llava_plain`
//! (`SeparatorStyle.PLAIN`, `sep = "\n"`) for stage 1 and `conv_vicuna_v1`
//! (`SeparatorStyle.TWO`, roles `USER`/`ASSISTANT`, `sep = " "`, `sep2 = "</s>"`, the system prompt
//! below) for stage 2 and evaluation; `train.py::preprocess_multimodal` moves the `<image>`
//! placeholder to the front of its turn followed by `"\n"`. [`Template::Chat`] is the LLM's own
//! Jinja chat template (Qwen/SmolLM ChatML), rendered by [`crate::chat`].

use semhitok_data::llava::IMAGE_TOKEN;

/// `conv_vicuna_v1.system`.
pub const VICUNA_V1_SYSTEM: &str = "A chat between a curious user and an artificial intelligence \
assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";
/// `conv_vicuna_v1.roles`.
pub const VICUNA_V1_ROLES: [&str; 2] = ["USER", "ASSISTANT"];
/// `conv_vicuna_v1.sep` (after the system prompt and after each human turn).
pub const VICUNA_V1_SEP: &str = " ";
/// `conv_vicuna_v1.sep2` (after each assistant turn; Vicuna's eos as text).
pub const VICUNA_V1_SEP2: &str = "</s>";
/// `conv_llava_plain.sep`.
pub const PLAIN_SEP: &str = "\n";

/// Which prompt layout turns a conversation into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// Stage 1 (feature alignment): `<image>` + caption + `"\n"`, loss on the caption.
    Plain,
    /// Stage 2 and evaluation for Vicuna / Llama-2 tokenizers.
    VicunaV1,
    /// The LLM's own chat template (the GGUF's `tokenizer.chat_template` or the HF folder's).
    Chat,
}

impl Template {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Template::Plain => "plain",
            Template::VicunaV1 => "vicuna_v1",
            Template::Chat => "chat",
        }
    }
}

/// `preprocess_multimodal` on one turn: a value holding `<image>` becomes `"<image>\n" + rest`
/// (the rest with the placeholder removed and stripped), and the result stripped.
pub fn image_first(value: &str) -> String {
    if !value.contains(IMAGE_TOKEN) {
        return value.to_string();
    }
    let rest = value.replace(IMAGE_TOKEN, "");
    format!("{IMAGE_TOKEN}\n{}", py_strip(&rest))
        .trim_matches(py_space)
        .to_string()
}

/// Python's `str.isspace` set for `str.strip()` without arguments (ASCII + Unicode whitespace).
pub(crate) fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// `Conversation.get_prompt` of `conv_vicuna_v1` for `(role, message)` pairs; a `None` message
/// is the open turn the model answers (`"ASSISTANT:"`).
pub fn vicuna_v1_prompt(messages: &[(&str, Option<&str>)]) -> String {
    let seps = [VICUNA_V1_SEP, VICUNA_V1_SEP2];
    let mut ret = format!("{VICUNA_V1_SYSTEM}{}", seps[0]);
    for (i, (role, msg)) in messages.iter().enumerate() {
        match msg {
            Some(m) if !m.is_empty() => {
                ret.push_str(role);
                ret.push_str(": ");
                ret.push_str(m);
                ret.push_str(seps[i % 2]);
            }
            _ => {
                ret.push_str(role);
                ret.push(':');
            }
        }
    }
    ret
}

/// `Conversation.get_prompt` of `conv_llava_plain`: the messages joined, each followed by its
/// separator (`"\n"`, `sep2 = None` read as an empty string for the second).
pub fn plain_prompt(messages: &[Option<&str>]) -> String {
    let mut ret = String::new();
    for (i, m) in messages.iter().enumerate() {
        if let Some(m) = m.filter(|m| !m.is_empty()) {
            ret.push_str(m);
            if i % 2 == 0 {
                ret.push_str(PLAIN_SEP);
            }
        }
    }
    ret
}
