//! Byte-level BPE tokenizer (GPT-2 style vocabularies: Mistral tekken, SmolLM2, Llama 3) on the
//! `tokenizers` crate, built from GGUF metadata, a Hugging Face tokenizer.json or a Mistral
//! tekken.json, plus an incremental detokenizer that never emits broken UTF-8.
//!
//! Control tokens (`<s>`, `[INST]`, `<|im_start|>`, ...) are kept out of the BPE model entirely,
//! so [`Tokenizer::encode`] cannot produce one whatever the text says; chat templates insert them
//! by id.

mod byte_level;
mod hf_json;
mod special;
mod tekken;
mod vocab;

use std::collections::HashMap;
use std::fmt;

use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper};

pub(crate) use special::{ControlMatcher, Piece};
pub use tekken::tekken_gguf_vocab;
pub use vocab::{GgufVocab, TokenKind, LLAMA3_PATTERN, TEKKEN_PATTERN};

/// Most tokens a tokenizer.json or tekken.json may declare. No real vocabulary comes near this;
/// it bounds what a hostile file can make us allocate.
const MAX_VOCAB: u64 = 1 << 22;

use crate::gguf::GgufFile;
use crate::{Error, Result};
use vocab::{GgufTokenizerKeys, PreTokenizerKind};

/// A byte-level BPE tokenizer with its special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    /// BPE over the normal (and user-defined) tokens only.
    bpe: tokenizers::Tokenizer,
    /// Token texts as the vocabulary stores them (byte-level strings for normal tokens).
    pieces: Vec<String>,
    kinds: Vec<TokenKind>,
    /// Raw bytes of every token, concatenated; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    /// Text -> id over all tokens; the lowest id wins when a text repeats.
    piece_to_id: HashMap<String, u32>,
    controls: ControlMatcher,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    pre: String,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.pieces.len())
            .field("pre", &self.pre)
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// Everything a tokenizer is built from, whatever file it came from.
pub(crate) struct VocabParts {
    pub pieces: Vec<String>,
    pub kinds: Vec<TokenKind>,
    pub merges: Vec<(String, String)>,
    pub normalizer: Option<NormalizerWrapper>,
    pub pre_tokenizer: Option<PreTokenizerWrapper>,
    pub ignore_merges: bool,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub add_bos: bool,
    pub pre_name: String,
}

impl Tokenizer {
    /// From a GGUF's `tokenizer.ggml.*` keys (`gpt2` vocabularies only; a SentencePiece `llama`
    /// vocabulary is a typed error). The pre-tokenizer follows `tokenizer.ggml.pre`: `tekken`,
    /// `llama-bpe`/`llama3`, `smollm` (digits split one by one, then GPT-2's pattern) and
    /// `gpt2`/`default`; any other name gets GPT-2's pattern.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let keys = GgufTokenizerKeys::read(file)?;
        let mut parts = parts_from_gguf_vocab(&keys.vocab)?;
        if !keys.has_bos {
            parts.bos_id = None;
        }
        for id in keys.extra_eos {
            if !parts.eos_ids.contains(&id) {
                parts.eos_ids.push(id);
            }
        }
        Self::build(parts)
    }

    /// From a vocabulary in GGUF form (what [`tekken_gguf_vocab`] returns).
    pub fn from_gguf_vocab(vocab: &GgufVocab) -> Result<Self> {
        Self::build(parts_from_gguf_vocab(vocab)?)
    }

    /// From a Hugging Face tokenizer.json with a byte-level BPE model. Added tokens marked special
    /// are control tokens. BOS is the token the post-processor prepends (then `add_bos()` is
    /// true), else a well-known BOS text; EOS ids are the control tokens with well-known
    /// end-of-turn texts (`</s>`, `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, ...).
    pub fn from_tokenizer_json(json: &[u8]) -> Result<Self> {
        Self::build(hf_json::parse(json)?)
    }

    /// From a Mistral tekken.json. Same result as converting it with [`tekken_gguf_vocab`] and
    /// loading that, which is how it is done.
    pub fn from_tekken_json(json: &[u8]) -> Result<Self> {
        Self::from_gguf_vocab(&tekken_gguf_vocab(json)?)
    }

    fn build(parts: VocabParts) -> Result<Self> {
        let VocabParts {
            pieces,
            kinds,
            merges,
            normalizer,
            pre_tokenizer,
            ignore_merges,
            bos_id,
            eos_ids,
            add_bos,
            pre_name,
        } = parts;
        let n = pieces.len();
        if n == 0 || kinds.len() != n || n > u32::MAX as usize {
            return Err(Error::Tokenizer(
                "the vocabulary is empty or inconsistent".into(),
            ));
        }

        // The BPE model sees normal, byte and user-defined tokens only. A later duplicate text
        // wins, as in llama.cpp.
        let mut bpe_vocab = BpeVocab::default();
        for (id, (piece, kind)) in pieces.iter().zip(&kinds).enumerate() {
            if matches!(
                kind,
                TokenKind::Normal | TokenKind::Byte | TokenKind::UserDefined
            ) && !piece.is_empty()
            {
                bpe_vocab.insert(piece.clone(), id as u32);
            }
        }
        // Merges whose parts or result are not (normal) tokens can never apply; drop them rather
        // than refuse the vocabulary.
        let merges: Vec<(String, String)> = merges
            .into_iter()
            .filter(|(a, b)| {
                bpe_vocab.contains_key(a)
                    && bpe_vocab.contains_key(b)
                    && bpe_vocab.contains_key(&format!("{a}{b}"))
            })
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(bpe_vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| Error::Tokenizer(format!("building the BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_normalizer(normalizer);
        inner.with_pre_tokenizer(pre_tokenizer);
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
        let user_defined: Vec<AddedToken> = pieces
            .iter()
            .zip(&kinds)
            .filter(|(p, k)| **k == TokenKind::UserDefined && !p.is_empty())
            .map(|(p, _)| AddedToken::from(p.clone(), false))
            .collect();
        if !user_defined.is_empty() {
            inner.add_tokens(&user_defined);
        }

        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        for (piece, kind) in pieces.iter().zip(&kinds) {
            if kind.is_byte_level() {
                bytes.extend_from_slice(&byte_level::decode(piece));
            } else {
                bytes.extend_from_slice(piece.as_bytes());
            }
            offsets.push(bytes.len());
        }

        let mut piece_to_id = HashMap::with_capacity(n);
        for (id, piece) in pieces.iter().enumerate() {
            piece_to_id.entry(piece.clone()).or_insert(id as u32);
        }
        let controls = ControlMatcher::new(
            pieces
                .iter()
                .zip(&kinds)
                .enumerate()
                .filter(|(_, (_, k))| **k == TokenKind::Control)
                .map(|(id, (p, _))| (p.as_str(), id as u32)),
        );
        let in_range = |id: u32| (id as usize) < n;
        if let Some(b) = bos_id.filter(|&b| !in_range(b)) {
            return Err(Error::Tokenizer(format!(
                "BOS id {b} is outside the vocabulary ({n} tokens)"
            )));
        }
        if let Some(e) = eos_ids.iter().copied().find(|&e| !in_range(e)) {
            return Err(Error::Tokenizer(format!(
                "EOS id {e} is outside the vocabulary ({n} tokens)"
            )));
        }

        Ok(Self {
            bpe: inner,
            pieces,
            kinds,
            bytes,
            offsets,
            piece_to_id,
            controls,
            bos_id,
            eos_ids,
            add_bos,
            pre: pre_name,
        })
    }

    /// Tokens for text a user typed. Never produces a control token, even for text such as
    /// `[INST]`, `</s>` or `<|im_start|>`, and adds no BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let encoding = self
            .bpe
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encoding: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Tokens for a raw (non-chat) prompt: BOS first when [`add_bos`](Self::add_bos) is set and
    /// the vocabulary has one, then [`encode`](Self::encode) of the text.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// Tokens for trusted text in which control-token texts (`<|im_start|>`, `[INST]`, ...) stand
    /// for the control tokens themselves: a rendered chat template, never user input.
    pub fn encode_with_control_tokens(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for piece in self.controls.split(text) {
            match piece {
                Piece::Text(t) => ids.extend(self.encode(t)?),
                Piece::Control(id) => ids.push(id),
            }
        }
        Ok(ids)
    }

    /// Text of the tokens; control, unknown and unused tokens produce nothing. Invalid UTF-8
    /// becomes U+FFFD. An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            self.check_id(id)?;
            if !self.kinds[id as usize].is_silent() {
                bytes.extend_from_slice(self.bytes_of(id));
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Raw bytes of a token (for a control token, the bytes of its text); empty for an id outside
    /// the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        if (id as usize) < self.pieces.len() {
            self.bytes_of(id).to_vec()
        } else {
            Vec::new()
        }
    }

    /// The token as the vocabulary stores it (GPT-2 byte-level string for normal tokens, e.g.
    /// `Ġthe`; plain text for control tokens, e.g. `[INST]`).
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    /// The id of a vocabulary entry by its stored text (see [`Self::id_to_piece`]); for control
    /// tokens that is their plain text: `token_to_id("[INST]")`. The lowest id wins on repeats.
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.piece_to_id.get(piece).copied()
    }

    /// The token made of exactly this one byte (every byte-level vocabulary has all 256).
    pub fn byte_token(&self, byte: u8) -> Option<u32> {
        self.token_to_id(&byte_level::char_of(byte).to_string())
            .filter(|&id| self.kind(id).is_some_and(TokenKind::is_byte_level))
    }

    /// The id of a control token by its text, if the vocabulary has it as a control token.
    pub fn control_token(&self, text: &str) -> Option<u32> {
        self.token_to_id(text).filter(|&id| self.is_control(id))
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Ids that end generation: the EOS id, the GGUF's end-of-turn/end-of-message ids when it names
    /// them, and (like llama.cpp) control tokens with well-known end-of-turn texts such as
    /// `<|im_end|>`, `<|eot_id|>` and `<|endoftext|>`. The declared EOS id comes first.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.kind(id) == Some(TokenKind::Control)
    }

    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Whether prompts start with BOS (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The pre-tokenizer name (`tokenizer.ggml.pre`; "tokenizer.json" for a tokenizer.json).
    pub fn pre(&self) -> &str {
        &self.pre
    }

    /// Finds control-token texts in trusted text (chat templates).
    pub(crate) fn control_matcher(&self) -> &ControlMatcher {
        &self.controls
    }

    fn bytes_of(&self, id: u32) -> &[u8] {
        let i = id as usize;
        &self.bytes[self.offsets[i]..self.offsets[i + 1]]
    }

    fn check_id(&self, id: u32) -> Result<()> {
        if (id as usize) < self.pieces.len() {
            Ok(())
        } else {
            Err(Error::Tokenizer(format!(
                "token id {id} is outside the vocabulary ({} tokens)",
                self.pieces.len()
            )))
        }
    }
}

fn parts_from_gguf_vocab(vocab: &GgufVocab) -> Result<VocabParts> {
    if vocab.model != "gpt2" {
        return Err(Error::Tokenizer(format!(
            "unsupported vocabulary type {:?} (supported: \"gpt2\")",
            vocab.model
        )));
    }
    let n = vocab.tokens.len();
    if vocab.token_types.len() != n {
        return Err(Error::Tokenizer(format!(
            "{} token types for {} tokens",
            vocab.token_types.len(),
            n
        )));
    }
    let kinds: Vec<TokenKind> = vocab
        .token_types
        .iter()
        .map(|&t| TokenKind::from_gguf_type(t))
        .collect();
    let merges = vocab
        .merges
        .iter()
        .map(|line| {
            vocab::split_merge(line)
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Tokenizer(format!("bad merge {line:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let kind = PreTokenizerKind::from_name(&vocab.pre);

    let mut eos_ids = vec![vocab.eos_id];
    for text in hf_json::END_OF_GENERATION_TEXTS {
        let found = vocab
            .tokens
            .iter()
            .zip(&kinds)
            .position(|(t, k)| *k == TokenKind::Control && t == text);
        if let Some(id) = found {
            if !eos_ids.contains(&(id as u32)) {
                eos_ids.push(id as u32);
            }
        }
    }
    Ok(VocabParts {
        pieces: vocab.tokens.clone(),
        kinds,
        merges,
        normalizer: None,
        pre_tokenizer: Some(kind.pre_tokenizer()?),
        ignore_merges: kind.ignore_merges(),
        bos_id: Some(vocab.bos_id),
        eos_ids,
        add_bos: vocab.add_bos,
        pre_name: vocab.pre.clone(),
    })
}

/// Turns generated tokens into text as they arrive. A character split over several tokens is held
/// back until it is complete, so every piece returned is valid UTF-8 and the pieces concatenate to
/// what [`Tokenizer::decode`] gives for the whole sequence.
pub struct Detokenizer<'t> {
    tokenizer: &'t Tokenizer,
    /// Bytes of an incomplete character (at most 3).
    pending: Vec<u8>,
}

impl<'t> Detokenizer<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        Self {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// The text that token `id` completes (maybe empty). Control tokens and ids outside the
    /// vocabulary add nothing.
    pub fn push(&mut self, id: u32) -> String {
        match self.tokenizer.kind(id) {
            Some(kind) if !kind.is_silent() => {
                self.pending.extend_from_slice(self.tokenizer.bytes_of(id))
            }
            _ => return String::new(),
        }
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            rest = after;
                            break;
                        }
                        // Bytes that can never become valid: replace them, as decode does.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }

    /// Flushes what is held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Whether bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}
