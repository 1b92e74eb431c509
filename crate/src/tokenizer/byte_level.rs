//! GPT-2's byte-level alphabet (`bytes_to_unicode`): every byte gets a printable character, so a
//! token made of arbitrary bytes can be stored as a string in a vocabulary. Printable Latin-1
//! bytes map to themselves; the rest (controls, space, ...) map to U+0100 onwards in byte order.

use std::sync::OnceLock;

struct Table {
    byte_to_char: [char; 256],
    /// Indexed by code point; every mapped character is below U+0144.
    char_to_byte: [Option<u8>; 0x144],
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut byte_to_char = ['\0'; 256];
        let mut char_to_byte = [None; 0x144];
        let mut next_extra = 0u32;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let code = if printable {
                b as u32
            } else {
                next_extra += 1;
                255 + next_extra
            };
            let c = char::from_u32(code).expect("byte-level code points are valid chars");
            byte_to_char[b as usize] = c;
            char_to_byte[code as usize] = Some(b);
        }
        Table {
            byte_to_char,
            char_to_byte,
        }
    })
}

/// The byte-level string of raw token bytes (what a GGUF `gpt2` vocabulary stores).
pub(crate) fn encode(bytes: &[u8]) -> String {
    let t = table();
    bytes.iter().map(|&b| t.byte_to_char[b as usize]).collect()
}

/// The character standing for `byte`.
pub(crate) fn char_of(byte: u8) -> char {
    table().byte_to_char[byte as usize]
}

/// Raw bytes of a byte-level string. A character outside the alphabet (some vocabularies store a
/// few tokens as plain text) contributes its own UTF-8 bytes.
pub(crate) fn decode(text: &str) -> Vec<u8> {
    let t = table();
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match t.char_to_byte.get(c as usize).copied().flatten() {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let s = encode(&all);
        assert_eq!(s.chars().count(), 256);
        assert_eq!(decode(&s), all);
        assert_eq!(encode(b" "), "\u{120}"); // 'Ġ'
        assert_eq!(encode(b"\n"), "\u{10A}"); // 'Ċ'
        assert_eq!(encode(b"A"), "A");
    }
}
