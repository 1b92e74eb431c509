//! Chat templates: conversation -> prompt token ids.
//!
//! - [`ChatTemplate::MistralV3Tekken`]: Mistral's V3 instruct format as mistral-common renders it
//!   for tekken models (Ministral-8B-Instruct-2410), built from token ids directly.
//! - [`ChatTemplate::Jinja`]: a GGUF's `tokenizer.chat_template`, rendered with minijinja like
//!   Hugging Face transformers does (trim_blocks, lstrip_blocks, Python string methods).
//!
//! In both, message content is plain text: it never becomes a control token, whatever it says.

mod jinja;
mod mistral;

use serde::{Deserialize, Serialize};

use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// One chat message. Roles are `system`, `user` and `assistant`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// How a conversation becomes prompt tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatTemplate {
    /// `<s>[INST]user[/INST]assistant</s>[INST]...[/INST]`, system prompt before the last user
    /// message (mistral-common's InstructTokenizerV3 with a tekken tokenizer).
    MistralV3Tekken,
    /// A Jinja chat template (its source).
    Jinja { source: String },
}

impl ChatTemplate {
    /// The template for a model: Mistral V3-Tekken for a tekken vocabulary
    /// (`tokenizer.ggml.pre = "tekken"`, which must have the `[INST]`/`[/INST]` control tokens),
    /// otherwise the GGUF's `tokenizer.chat_template`. A model with neither is an error.
    pub fn from_gguf(file: &GgufFile, tokenizer: &Tokenizer) -> Result<Self> {
        let pre = file
            .get_str("tokenizer.ggml.pre")?
            .unwrap_or(tokenizer.pre());
        if pre == "tekken" {
            mistral::check_tokens(tokenizer)?;
            return Ok(Self::MistralV3Tekken);
        }
        match file.get_str("tokenizer.chat_template")? {
            Some(source) => Self::from_jinja(source),
            None => Err(Error::Template(
                "the model has no chat template (tokenizer.chat_template is missing and the \
                 vocabulary is not Mistral tekken)"
                    .into(),
            )),
        }
    }

    /// A Jinja template from its source; syntax errors are reported here.
    pub fn from_jinja(source: impl Into<String>) -> Result<Self> {
        let source = source.into();
        jinja::check_syntax(&source)?;
        Ok(Self::Jinja { source })
    }

    /// A short name for logs and `inspect`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::MistralV3Tekken => "mistral-v3-tekken",
            Self::Jinja { .. } => "jinja",
        }
    }

    /// Prompt token ids for `messages`, BOS included where the model wants one.
    ///
    /// `add_generation_prompt` appends the assistant header for Jinja templates. Mistral V3 has
    /// no header (the assistant answer follows `[/INST]` directly), so it changes nothing there;
    /// every assistant message is closed with `</s>`, as mistral-common does.
    pub fn render(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        match self {
            Self::MistralV3Tekken => mistral::render(tokenizer, messages),
            Self::Jinja { source } => {
                jinja::render(source, tokenizer, messages, add_generation_prompt)
            }
        }
    }
}
