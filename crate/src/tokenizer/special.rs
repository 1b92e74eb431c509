//! Finds control-token texts (`<|im_start|>`, `[INST]`, ...) in trusted text such as a rendered
//! chat template. User text never goes through this: `Tokenizer::encode` treats it as plain text.

use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub(crate) struct ControlMatcher {
    /// Candidates by first byte, longest first (the longest match wins, as in llama.cpp and HF).
    by_first_byte: HashMap<u8, Vec<(String, u32)>>,
}

impl ControlMatcher {
    pub(crate) fn new<'a>(tokens: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let mut by_first_byte: HashMap<u8, Vec<(String, u32)>> = HashMap::new();
        for (text, id) in tokens {
            if let Some(&first) = text.as_bytes().first() {
                by_first_byte
                    .entry(first)
                    .or_default()
                    .push((text.to_string(), id));
            }
        }
        for list in by_first_byte.values_mut() {
            // Longest first; among equal texts the lowest id.
            list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }
        Self { by_first_byte }
    }

    /// The control token whose text starts at byte `pos` of `text`: (its length in bytes, id).
    pub(crate) fn match_at(&self, text: &str, pos: usize) -> Option<(usize, u32)> {
        let rest = &text.as_bytes()[pos..];
        let candidates = self.by_first_byte.get(rest.first()?)?;
        candidates
            .iter()
            .find(|(t, _)| rest.starts_with(t.as_bytes()))
            .map(|(t, id)| (t.len(), *id))
    }

    /// Splits text into plain runs and control tokens.
    pub(crate) fn split<'t>(&self, text: &'t str) -> Vec<Piece<'t>> {
        let mut pieces = Vec::new();
        let mut plain_start = 0;
        let mut pos = 0;
        let bytes = text.as_bytes();
        while pos < bytes.len() {
            // Candidates start with a char's first byte, so a match is always at a char boundary.
            if let Some((len, id)) = self.match_at(text, pos) {
                if plain_start < pos {
                    pieces.push(Piece::Text(&text[plain_start..pos]));
                }
                pieces.push(Piece::Control(id));
                pos += len;
                plain_start = pos;
            } else {
                pos += 1;
            }
        }
        if plain_start < bytes.len() {
            pieces.push(Piece::Text(&text[plain_start..]));
        }
        pieces
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'t> {
    Text(&'t str),
    Control(u32),
}
