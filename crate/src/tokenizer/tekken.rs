//! Mistral's tekken.json (a tiktoken-style rank table) converted to the GGUF `gpt2` vocabulary
//! form, exactly as llama.cpp's converter (gguf-py `MistralVocab`) does it:
//! - ids below `default_num_special_tokens` are control tokens named by `special_tokens` (or,
//!   for files without that list, mistral-common's fixed list), the rest `<SPECIAL_n>`;
//! - token `num_special + rank` is the byte-level string of the rank's bytes;
//! - merges: for every token of rank >= 256, every split into two tokens that both exist,
//!   ordered by (left rank, right rank), all ordered by the merged token's rank. A BPE that
//!   applies these merges by priority merges exactly the pairs tiktoken would, in the same order.

use std::collections::HashMap;

use base64::Engine as _;
use serde::Deserialize;

use super::vocab::{GgufVocab, TEKKEN_PATTERN};
use super::{byte_level, MAX_VOCAB};
use crate::{Error, Result};

/// Special tokens of tekken files that carry no `special_tokens` list (mistral-common's
/// `Tekkenizer.DEPRECATED_SPECIAL_TOKENS`, ranks 0..20).
const DEFAULT_SPECIAL_TOKENS: [&str; 20] = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
];

#[derive(Deserialize)]
struct TekkenFile {
    config: TekkenConfig,
    vocab: Vec<TekkenToken>,
    #[serde(default)]
    special_tokens: Option<Vec<TekkenSpecialToken>>,
}

#[derive(Deserialize)]
struct TekkenConfig {
    pattern: String,
    default_vocab_size: u64,
    default_num_special_tokens: u64,
}

#[derive(Deserialize)]
struct TekkenToken {
    rank: u64,
    token_bytes: String,
}

#[derive(Deserialize)]
struct TekkenSpecialToken {
    rank: u64,
    token_str: String,
}

/// Converts a tekken.json to the GGUF `gpt2` vocabulary form (see the module docs). Only the first
/// `config.default_vocab_size` ids are kept, as mistral-common does.
pub fn tekken_gguf_vocab(json: &[u8]) -> Result<GgufVocab> {
    let file: TekkenFile =
        serde_json::from_slice(json).map_err(|e| Error::Tokenizer(format!("tekken.json: {e}")))?;
    let config = &file.config;
    if config.pattern != TEKKEN_PATTERN {
        return Err(Error::Tokenizer(
            "tekken.json: its split pattern differs from the tekken pattern this engine implements"
                .into(),
        ));
    }
    let n_special = config.default_num_special_tokens;
    let n_total = config.default_vocab_size;
    if n_total > MAX_VOCAB || n_special > n_total {
        return Err(Error::Tokenizer(format!(
            "tekken.json: implausible sizes (default_vocab_size {n_total}, default_num_special_tokens {n_special})"
        )));
    }
    let n_special = n_special as usize;
    let n_inner = n_total as usize - n_special;
    if n_inner > file.vocab.len() {
        return Err(Error::Tokenizer(format!(
            "tekken.json: default_vocab_size needs {n_inner} ranks but the file has {}",
            file.vocab.len()
        )));
    }
    if n_inner < 256 {
        return Err(Error::Tokenizer(
            "tekken.json: fewer than 256 ranks (the single bytes)".into(),
        ));
    }

    // Special token names by id.
    let mut tokens: Vec<String> = Vec::with_capacity(n_total as usize);
    match &file.special_tokens {
        Some(list) => {
            if list.len() > n_special {
                return Err(Error::Tokenizer(
                    "tekken.json: more special tokens than default_num_special_tokens".into(),
                ));
            }
            for (i, t) in list.iter().enumerate() {
                if t.rank != i as u64 {
                    return Err(Error::Tokenizer(format!(
                        "tekken.json: special token {i} has rank {}",
                        t.rank
                    )));
                }
                tokens.push(t.token_str.clone());
            }
        }
        None => tokens.extend(
            DEFAULT_SPECIAL_TOKENS
                .iter()
                .take(n_special)
                .map(|s| s.to_string()),
        ),
    }
    for i in tokens.len()..n_special {
        tokens.push(format!("<SPECIAL_{i}>"));
    }

    // Raw bytes of each rank.
    let mut rank_bytes: Vec<Vec<u8>> = Vec::with_capacity(n_inner);
    for (i, t) in file.vocab.iter().take(n_inner).enumerate() {
        if t.rank != i as u64 {
            return Err(Error::Tokenizer(format!(
                "tekken.json: vocab entry {i} has rank {}",
                t.rank
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&t.token_bytes)
            .map_err(|e| Error::Tokenizer(format!("tekken.json: rank {i}: bad base64: {e}")))?;
        if bytes.is_empty() || (i < 256 && bytes != [i as u8]) {
            return Err(Error::Tokenizer(format!(
                "tekken.json: rank {i} has unexpected bytes"
            )));
        }
        rank_bytes.push(bytes);
    }
    let mut rank_of: HashMap<&[u8], u32> = HashMap::with_capacity(n_inner);
    for (i, b) in rank_bytes.iter().enumerate() {
        if rank_of.insert(b.as_slice(), i as u32).is_some() {
            return Err(Error::Tokenizer(format!(
                "tekken.json: rank {i} repeats an earlier token"
            )));
        }
    }

    let rank_strings: Vec<String> = rank_bytes.iter().map(|b| byte_level::encode(b)).collect();
    let merges = derive_merges(&rank_bytes, &rank_of, &rank_strings)?;
    tokens.extend(rank_strings);

    let mut token_types = vec![3; n_special];
    token_types.resize(tokens.len(), 1);

    let special_id = |name: &str, fallback: u32| -> u32 {
        tokens[..n_special]
            .iter()
            .position(|t| t == name)
            .map(|i| i as u32)
            .unwrap_or(fallback)
    };
    let bos_id = special_id("<s>", 1);
    let eos_id = special_id("</s>", 2);
    let unk_id = Some(special_id("<unk>", 0));
    // gguf-py uses eos when the tokenizer has no pad token.
    let pad_id = Some(special_id("<pad>", eos_id));
    for (what, id) in [("<s>", bos_id), ("</s>", eos_id)] {
        if id as usize >= n_special {
            return Err(Error::Tokenizer(format!(
                "tekken.json: no room for the {what} special token"
            )));
        }
    }

    Ok(GgufVocab {
        model: "gpt2".into(),
        pre: "tekken".into(),
        tokens,
        token_types,
        merges,
        bos_id,
        eos_id,
        unk_id,
        pad_id,
        add_bos: true,
    })
}

/// Every split of every token into two existing tokens, in gguf-py's order.
fn derive_merges(
    rank_bytes: &[Vec<u8>],
    rank_of: &HashMap<&[u8], u32>,
    rank_strings: &[String],
) -> Result<Vec<String>> {
    let mut merges = Vec::with_capacity(rank_bytes.len() * 2);
    let mut local: Vec<(u32, u32)> = Vec::new();
    for (rank, bytes) in rank_bytes.iter().enumerate().skip(256) {
        local.clear();
        for j in 1..bytes.len() {
            if let (Some(&l), Some(&r)) = (rank_of.get(&bytes[..j]), rank_of.get(&bytes[j..])) {
                local.push((l, r));
            }
        }
        if local.is_empty() {
            return Err(Error::Tokenizer(format!(
                "tekken.json: rank {rank} cannot be made by merging two tokens"
            )));
        }
        local.sort_unstable();
        for &(l, r) in &local {
            let (l, r) = (&rank_strings[l as usize], &rank_strings[r as usize]);
            let mut line = String::with_capacity(l.len() + 1 + r.len());
            line.push_str(l);
            line.push(' ');
            line.push_str(r);
            merges.push(line);
        }
    }
    Ok(merges)
}
