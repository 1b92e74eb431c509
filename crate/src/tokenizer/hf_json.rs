//! A Hugging Face tokenizer.json with a byte-level BPE model, read into the same parts a GGUF
//! vocabulary gives. Added tokens marked `special` become control tokens (never produced from
//! text by `encode`); other added tokens are user-defined tokens.

use serde_json::Value as Json;
use tokenizers::{NormalizerWrapper, PreTokenizerWrapper};

use super::vocab::TokenKind;
use super::{VocabParts, MAX_VOCAB};
use crate::{Error, Result};

/// End-of-turn tokens that also stop generation (llama.cpp's list, by text).
pub(crate) const END_OF_GENERATION_TEXTS: &[&str] = &[
    "</s>",
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
];

const BOS_TEXTS: &[&str] = &["<s>", "<|begin_of_text|>", "<|startoftext|>"];

fn err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(format!("tokenizer.json: {}", msg.into()))
}

pub(crate) fn parse(json: &[u8]) -> Result<VocabParts> {
    let root: Json = serde_json::from_slice(json).map_err(|e| err(e.to_string()))?;
    let model = root.get("model").ok_or_else(|| err("no model"))?;
    match model.get("type").and_then(Json::as_str) {
        Some("BPE") | None => {}
        Some(other) => {
            return Err(err(format!(
                "model type {other} is not supported (only byte-level BPE)"
            )))
        }
    }
    if model.get("byte_fallback").and_then(Json::as_bool) == Some(true) {
        return Err(err(
            "byte-fallback BPE (SentencePiece style) is not supported, only byte-level BPE",
        ));
    }
    if !mentions_byte_level(root.get("pre_tokenizer")) && !mentions_byte_level(root.get("decoder"))
    {
        return Err(err(
            "not a byte-level BPE tokenizer (no ByteLevel pre-tokenizer or decoder)",
        ));
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| err("model.vocab is missing"))?;
    let added: &[Json] = root
        .get("added_tokens")
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);

    // Size of the id space.
    let mut max_id: u64 = 0;
    for v in vocab.values() {
        max_id = max_id.max(
            v.as_u64()
                .ok_or_else(|| err("a vocab id is not an unsigned integer"))?,
        );
    }
    for t in added {
        max_id = max_id.max(
            t.get("id")
                .and_then(Json::as_u64)
                .ok_or_else(|| err("an added token has no id"))?,
        );
    }
    if max_id >= MAX_VOCAB {
        return Err(err(format!("token id {max_id} is implausibly large")));
    }
    let n = max_id as usize + 1;
    let mut pieces = vec![String::new(); n];
    let mut kinds = vec![TokenKind::Unused; n];
    for (text, id) in vocab {
        let id = id.as_u64().unwrap_or(0) as usize;
        pieces[id] = text.clone();
        kinds[id] = TokenKind::Normal;
    }
    for t in added {
        let id = t.get("id").and_then(Json::as_u64).unwrap_or(0) as usize;
        let content = t
            .get("content")
            .and_then(Json::as_str)
            .ok_or_else(|| err("an added token has no content"))?;
        let special = t.get("special").and_then(Json::as_bool).unwrap_or(false);
        pieces[id] = content.to_string();
        kinds[id] = if special {
            TokenKind::Control
        } else {
            TokenKind::UserDefined
        };
    }

    let merges_json = model
        .get("merges")
        .and_then(Json::as_array)
        .ok_or_else(|| err("model.merges is missing"))?;
    let mut merges = Vec::with_capacity(merges_json.len());
    for m in merges_json {
        let pair = match m {
            Json::String(line) => {
                super::vocab::split_merge(line).map(|(a, b)| (a.to_string(), b.to_string()))
            }
            Json::Array(parts) if parts.len() == 2 => {
                match (parts[0].as_str(), parts[1].as_str()) {
                    (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                    _ => None,
                }
            }
            _ => None,
        };
        merges.push(pair.ok_or_else(|| err("a merge is neither \"a b\" nor [a, b]"))?);
    }

    let normalizer: Option<NormalizerWrapper> = match root.get("normalizer") {
        None | Some(Json::Null) => None,
        Some(v) => {
            Some(serde_json::from_value(v.clone()).map_err(|e| err(format!("normalizer: {e}")))?)
        }
    };
    let pre_tokenizer: Option<PreTokenizerWrapper> = match root.get("pre_tokenizer") {
        None | Some(Json::Null) => None,
        Some(v) => Some(
            serde_json::from_value(v.clone()).map_err(|e| err(format!("pre_tokenizer: {e}")))?,
        ),
    };
    let ignore_merges = model
        .get("ignore_merges")
        .and_then(Json::as_bool)
        .unwrap_or(false);

    let control_id = |text: &str| -> Option<u32> {
        (0..n)
            .find(|&i| kinds[i] == TokenKind::Control && pieces[i] == text)
            .map(|i| i as u32)
    };
    // A post-processor that starts every sequence with a special token adds that token as BOS.
    let (bos_id, add_bos) =
        match template_first_special(root.get("post_processor")).and_then(|t| control_id(&t)) {
            Some(id) => (Some(id), true),
            None => (BOS_TEXTS.iter().find_map(|t| control_id(t)), false),
        };
    let eos_ids: Vec<u32> = END_OF_GENERATION_TEXTS
        .iter()
        .filter_map(|t| control_id(t))
        .collect();

    Ok(VocabParts {
        pieces,
        kinds,
        merges,
        normalizer,
        pre_tokenizer,
        ignore_merges,
        bos_id,
        eos_ids,
        add_bos,
        pre_name: "tokenizer.json".into(),
    })
}

fn mentions_byte_level(v: Option<&Json>) -> bool {
    match v {
        Some(Json::Object(map)) => {
            map.get("type").and_then(Json::as_str) == Some("ByteLevel")
                || map.values().any(|child| mentions_byte_level(Some(child)))
        }
        Some(Json::Array(items)) => items.iter().any(|child| mentions_byte_level(Some(child))),
        _ => false,
    }
}

/// The first special token of a TemplateProcessing post-processor's single-sequence template.
fn template_first_special(v: Option<&Json>) -> Option<String> {
    let v = v?;
    match v.get("type").and_then(Json::as_str)? {
        "TemplateProcessing" => v
            .get("single")?
            .as_array()?
            .first()?
            .get("SpecialToken")?
            .get("id")?
            .as_str()
            .map(str::to_string),
        "Sequence" => v
            .get("processors")?
            .as_array()?
            .iter()
            .find_map(|p| template_first_special(Some(p))),
        _ => None,
    }
}
