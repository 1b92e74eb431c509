//! The GGUF form of a BPE vocabulary (`tokenizer.ggml.*` keys) and the pre-tokenizers that the
//! `tokenizer.ggml.pre` names stand for.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::gguf::{GgufFile, Value};
use crate::{Error, Result};

/// A `gpt2`-model (byte-level BPE) vocabulary as GGUF stores it under `tokenizer.ggml.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: always "gpt2" here.
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name ("tekken", "smollm", "llama-bpe", "gpt2").
    pub pre: String,
    /// Token texts: byte-level strings for normal tokens, plain text for control tokens.
    pub tokens: Vec<String>,
    /// GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    /// BPE merges, "left right" in byte-level strings, highest priority first.
    pub merges: Vec<String>,
    pub bos_id: u32,
    pub eos_id: u32,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: bool,
}

/// What a token is, from the GGUF token type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Normal,
    Unknown,
    /// Special tokens such as `<s>`, `[INST]`, `<|im_start|>`: never produced from user text.
    Control,
    /// Added tokens matched as a whole in text (stored as plain text, not byte-level).
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    /// The kind for a GGUF token type; unknown type numbers count as normal tokens (llama.cpp
    /// does the same).
    pub fn from_gguf_type(t: i32) -> Self {
        match t {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }

    pub fn gguf_type(self) -> i32 {
        match self {
            TokenKind::Normal => 1,
            TokenKind::Unknown => 2,
            TokenKind::Control => 3,
            TokenKind::UserDefined => 4,
            TokenKind::Unused => 5,
            TokenKind::Byte => 6,
        }
    }

    /// Tokens whose text is byte-level encoded in the vocabulary.
    pub(crate) fn is_byte_level(self) -> bool {
        matches!(self, TokenKind::Normal | TokenKind::Byte)
    }

    /// Tokens that produce no text when decoded.
    pub(crate) fn is_silent(self) -> bool {
        matches!(
            self,
            TokenKind::Control | TokenKind::Unknown | TokenKind::Unused
        )
    }
}

/// Mistral's tekken split pattern (`config.pattern` of tekken_240718.json and tekken_240911.json),
/// used as is, so tokens match mistral-common (tiktoken). llama.cpp rewrites this pattern without
/// the `\p{M}` classes and splits some combining-mark scripts differently (e.g. Devanagari).
pub const TEKKEN_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split pattern (its tokenizer.json).
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer a `tokenizer.ggml.pre` name selects (the same grouping as llama.cpp's
/// llama-vocab.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizerKind {
    /// Mistral tekken; whole pieces found in the vocabulary skip the merges.
    Tekken,
    /// Llama 3 (`llama-bpe`); whole pieces found in the vocabulary skip the merges.
    Llama3,
    /// Each digit on its own, then GPT-2's pattern: `smollm`, `starcoder`, `refact`, ...
    DigitsThenGpt2,
    /// GPT-2's pattern: `gpt2`, `default`, and any name this engine does not know.
    Gpt2,
}

impl PreTokenizerKind {
    /// Unknown names fall back to GPT-2's pattern, the historical default for byte-level BPE.
    pub(crate) fn from_name(pre: &str) -> Self {
        match pre {
            "tekken" => Self::Tekken,
            "llama-bpe" | "llama3" | "llama-v3" | "dbrx" | "smaug-bpe" => Self::Llama3,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => Self::DigitsThenGpt2,
            _ => Self::Gpt2,
        }
    }

    pub(crate) fn pre_tokenizer(self) -> Result<PreTokenizerWrapper> {
        // The byte-level step only maps bytes to the alphabet when a regex split came before it.
        let byte_level_only =
            || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false));
        let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
            let split = Split::new(
                SplitPattern::Regex(pattern.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::Tokenizer(format!("bad pre-tokenizer pattern: {e}")))?;
            Ok(PreTokenizerWrapper::Split(split))
        };
        Ok(match self {
            Self::Tekken => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                split(TEKKEN_PATTERN)?,
                byte_level_only(),
            ])),
            Self::Llama3 => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                split(LLAMA3_PATTERN)?,
                byte_level_only(),
            ])),
            Self::DigitsThenGpt2 => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, true)),
            ])),
            Self::Gpt2 => PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, true)),
        })
    }

    /// llama.cpp's `ignore_merges`: a piece that is itself a token is emitted whole (tiktoken's rule).
    pub(crate) fn ignore_merges(self) -> bool {
        matches!(self, Self::Tekken | Self::Llama3)
    }

    /// llama.cpp's default for `add_bos` when the GGUF does not say.
    pub(crate) fn default_add_bos(self) -> bool {
        matches!(self, Self::Tekken | Self::Llama3)
    }
}

/// Everything the tokenizer needs from a GGUF's `tokenizer.*` keys.
pub(crate) struct GgufTokenizerKeys {
    pub vocab: GgufVocab,
    /// `tokenizer.ggml.bos_token_id` was present.
    pub has_bos: bool,
    /// End-of-turn / end-of-message ids (`eot_token_id`, `eom_token_id`) when present.
    pub extra_eos: Vec<u32>,
}

impl GgufTokenizerKeys {
    pub(crate) fn read(file: &GgufFile) -> Result<Self> {
        let model = file.get_str("tokenizer.ggml.model")?.ok_or_else(|| {
            Error::Tokenizer("the model has no vocabulary (tokenizer.ggml.model is missing)".into())
        })?;
        match model {
            "gpt2" => {}
            "llama" => {
                return Err(Error::Tokenizer(
                    "SentencePiece vocabularies (tokenizer.ggml.model = \"llama\") are not supported; \
                     this engine reads byte-level BPE (\"gpt2\") vocabularies"
                        .into(),
                ))
            }
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported vocabulary type tokenizer.ggml.model = {other:?} (supported: \"gpt2\")"
                )))
            }
        }
        let pre = file
            .get_str("tokenizer.ggml.pre")?
            .unwrap_or("default")
            .to_string();
        let tokens: Vec<String> = file
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| Error::Tokenizer("tokenizer.ggml.tokens is missing".into()))?
            .into_iter()
            .map(str::to_string)
            .collect();
        if tokens.is_empty() {
            return Err(Error::Tokenizer("tokenizer.ggml.tokens is empty".into()));
        }
        let token_types = match file.get_array("tokenizer.ggml.token_type")? {
            Some(values) => {
                if values.len() != tokens.len() {
                    return Err(Error::Tokenizer(format!(
                        "tokenizer.ggml.token_type has {} entries for {} tokens",
                        values.len(),
                        tokens.len()
                    )));
                }
                values
                    .iter()
                    .map(|v| {
                        v.as_i64()
                            .and_then(|t| i32::try_from(t).ok())
                            .ok_or_else(|| {
                                Error::Tokenizer(
                                    "tokenizer.ggml.token_type holds a non-integer".into(),
                                )
                            })
                    })
                    .collect::<Result<Vec<i32>>>()?
            }
            None => vec![1; tokens.len()],
        };
        let merges: Vec<String> = file
            .get_str_array("tokenizer.ggml.merges")?
            .ok_or_else(|| {
                Error::Tokenizer(
                    "tokenizer.ggml.merges is missing (a gpt2 vocabulary needs it)".into(),
                )
            })?
            .into_iter()
            .map(str::to_string)
            .collect();

        let n = tokens.len();
        let id = |key: &str| -> Result<Option<u32>> {
            match file.get(key) {
                None => Ok(None),
                // Some converters write -1 (as a signed value) for "none".
                Some(Value::I32(v)) if *v < 0 => Ok(None),
                Some(Value::I64(v)) if *v < 0 => Ok(None),
                Some(v) => {
                    let id = v
                        .as_u64()
                        .ok_or_else(|| Error::Tokenizer(format!("{key} is not an integer")))?;
                    if id >= n as u64 {
                        return Err(Error::Tokenizer(format!(
                            "{key} = {id} is outside the vocabulary ({n} tokens)"
                        )));
                    }
                    Ok(Some(id as u32))
                }
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let mut extra_eos = Vec::new();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(t) = id(key)? {
                extra_eos.push(t);
            }
        }
        let kind = PreTokenizerKind::from_name(&pre);
        let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
            Some(v) => v.as_bool().ok_or_else(|| {
                Error::Tokenizer("tokenizer.ggml.add_bos_token is not a bool".into())
            })?,
            None => kind.default_add_bos(),
        };
        let vocab = GgufVocab {
            model: model.to_string(),
            pre,
            tokens,
            token_types,
            merges,
            bos_id: bos.unwrap_or(0),
            eos_id: eos.unwrap_or(0),
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos,
        };
        if eos.is_none() {
            return Err(Error::Tokenizer(
                "tokenizer.ggml.eos_token_id is missing".into(),
            ));
        }
        Ok(Self {
            vocab,
            has_bos: bos.is_some(),
            extra_eos,
        })
    }
}

/// Splits a GGUF merge line "left right" the way llama.cpp does (the separator is the first space
/// after the first character, so a left part may itself start with a space).
pub(crate) fn split_merge(line: &str) -> Option<(&str, &str)> {
    let first_len = line.chars().next()?.len_utf8();
    let pos = line[first_len..].find(' ')? + first_len;
    Some((&line[..pos], &line[pos + 1..]))
}
