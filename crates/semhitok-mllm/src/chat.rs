//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template` in GGUF metadata,
//! `chat_template` in an HF `tokenizer_config.json`) rendered with minijinja the way transformers'
//! `apply_chat_template` renders it: variables `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, a `raise_exception(msg)` function, and Python string methods (`.strip()`, ...)
//! through minijinja-contrib's pycompat.

use crate::error::{Error, Result};
use serde::Serialize;

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
}

/// One turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A `role` turn saying `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// A parsed chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    source: String,
    origin: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Parse `source`; `origin` names where it came from in errors; `bos_token`/`eos_token` are
    /// the strings the template may reference.
    pub fn new(source: &str, origin: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template {
                origin: origin.to_string(),
                msg: e.to_string(),
            })?;
        Ok(Self {
            env,
            source: source.to_string(),
            origin: origin.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template's Jinja source (as given to [`Self::new`]).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt text for `messages` (with the assistant header when `add_generation_prompt`).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.env.get_template("chat").map_err(|e| self.err(e))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| self.err(e))
    }

    fn err(&self, e: minijinja::Error) -> Error {
        Error::Template {
            origin: self.origin.clone(),
            msg: e.to_string(),
        }
    }
}
