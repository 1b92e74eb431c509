// Tokenizer tests against known-good ids.
//
// Where the expected ids come from:
// - Tekken: mistral-common 1.13.1 (tiktoken underneath), for both tekken_240718.json and
//   tekken_240911.json (identical on these texts):
//     tok = MistralTokenizer.from_file(".../tekken_240718.json").instruct_tokenizer.tokenizer
//     [tok.encode(t, bos=False, eos=False) for t in SAMPLE_TEXTS]
// - SmolLM2: llama.cpp itself (the prebuilt library of the npm package node-llama-cpp 3.22.1):
//     model = await llama.loadModel({modelPath: "models/smollm2-135m-instruct-q4_1.gguf", vocabOnly: true})
//     SAMPLE_TEXTS.map(t => model.tokenize(t, false))      // false: no special-token parsing
// - The tekken -> GGUF conversion facts: gguf-py 0.19.0 `MistralVocab` (llama.cpp's converter):
//     merges = MistralVocab(...).extract_vocab_merges_from_model()   // 269443 merges for 240911
//
// Tests need models/smollm2-135m-instruct-q4_1.gguf and models/tiny-mistral.gguf (scripts/models
// makes them) and the tekken JSON files (found under models/ or .venv-models/).

mod common;

use std::sync::OnceLock;

use common::{metadata_only, read_gguf, tekken_json};
use edgechat::gguf::Value;
use edgechat::tokenizer::{tekken_gguf_vocab, Detokenizer, GgufVocab, TokenKind, Tokenizer};

fn tekken_240718() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_tekken_json(&tekken_json("tekken_240718.json")).unwrap())
}

fn tekken_240911_vocab() -> &'static GgufVocab {
    static V: OnceLock<GgufVocab> = OnceLock::new();
    V.get_or_init(|| tekken_gguf_vocab(&tekken_json("tekken_240911.json")).unwrap())
}

fn tekken_240911() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_gguf_vocab(tekken_240911_vocab()).unwrap())
}

fn smollm2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_gguf(&read_gguf("smollm2-135m-instruct-q4_1.gguf")).unwrap())
}

const SAMPLE_TEXTS: &[&str] = &[
    "The capital of France is",
    "Hello, world! 12345 + 67.89 = ?",
    "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n",
    "Ünïcödé: 日本語のテキスト, emoji 🦀🎉👍🏽, Ελληνικά, русский, العربية, हिन्दी",
    "  leading and trailing   \t\n\n\n  multiple   spaces\r\n\r\n\tTabbed\u{a0}nbsp  ",
    "[INST] </s> <s> <|im_start|>user <|im_end|> [/INST] <unk> [TOOL_CALLS] <|endoftext|>",
    "I'm doing great! It's 3:45pm, they'll've DON'T",
    "HTTPServerError getHTTPResponseCode XMLHttpRequest iPhone McDonald's",
    "1234567890 3.14159 1,000,000 2024-11-23 ½ ² ٣",
    "path/to/file.rs:42:7 — “quotes” ‘single’ … ellipsis //comment\n/* block */",
    "\n",
    " ",
    "a",
    "                                        x",
];

const TEKKEN_EXPECTED: &[&[u32]] = &[
    &[1784, 8961, 1307, 5498, 1395],
    &[
        22177, 1044, 4304, 1033, 1032, 1049, 1050, 1051, 1052, 1053, 1867, 1032, 1054, 1055, 1046,
        1056, 1057, 1376, 3082,
    ],
    &[
        28117, 2830, 1690, 1512, 1293, 2878, 2460, 1376, 11405, 10614, 1049, 1044, 1032, 1050,
        1044, 1032, 1051, 3864, 1293, 41727, 51714, 1123, 1058, 1063, 35697, 2460, 1468, 2002,
    ],
    &[
        39453, 1110, 105678, 29487, 1337, 1058, 30367, 15199, 2439, 7282, 14742, 13854, 1044, 1873,
        26303, 119685, 1166, 1128, 1240, 1159, 1142, 1137, 1240, 1159, 1145, 1141, 1240, 1159,
        1143, 1189, 1044, 11813, 53660, 13865, 1044, 125229, 1044, 21362, 1044, 109040, 2063,
    ],
    &[
        1032, 8924, 1321, 49875, 1293, 1009, 4688, 1032, 6245, 1256, 18971, 1013, 1010, 1013, 1010,
        1009, 16256, 3507, 3997, 13151, 1256,
    ],
    &[
        1091, 3174, 3074, 1093, 2259, 1115, 1062, 1534, 1115, 1062, 1534, 1124, 1329, 18993, 1124,
        1062, 3263, 1534, 1124, 1329, 23836, 1124, 1062, 1766, 1047, 3174, 3074, 1093, 1534, 5148,
        1062, 1766, 9197, 8568, 74483, 1083, 1093, 1534, 1124, 1474, 2935, 2149, 1124, 1062,
    ],
    &[
        1073, 4525, 6965, 4824, 1033, 2157, 1681, 1032, 1051, 1058, 1052, 1053, 6411, 1044, 2127,
        7534, 6483, 119801, 1039, 1084,
    ],
    &[
        30499, 11473, 4507, 2012, 30499, 6566, 5603, 126379, 4967, 1623, 16742, 5303, 31609, 1681,
    ],
    &[
        1049, 1050, 1051, 1052, 1053, 1054, 1055, 1056, 1057, 1048, 1032, 1051, 1046, 1049, 1052,
        1049, 1053, 1057, 1032, 1049, 1044, 1048, 1048, 1048, 1044, 1048, 1048, 1048, 1032, 1050,
        1048, 1050, 1052, 1045, 1049, 1049, 1045, 1050, 1051, 1032, 28504, 1032, 16077, 1032,
        77729,
    ],
    &[
        7368, 35466, 55998, 50648, 1058, 1052, 1050, 1058, 1055, 2251, 2129, 104791, 1414, 4162,
        36864, 1471, 11180, 10771, 88664, 1895, 24083, 1010, 9226, 4950, 2864,
    ],
    &[1010],
    &[1032],
    &[1097],
    &[8951, 2460],
];

const SMOLLM2_EXPECTED: &[&[u32]] = &[
    &[504, 3575, 282, 4649, 314],
    &[
        19556, 28, 905, 17, 216, 33, 34, 35, 36, 37, 1232, 216, 38, 39, 30, 40, 41, 446, 9148,
    ],
    &[
        7853, 1085, 1000, 1662, 472, 1303, 1792, 446, 37024, 21653, 33, 28, 216, 34, 28, 216, 35,
        26695, 472, 1628, 34115, 17, 45257, 42, 47, 29394, 1792, 4258, 198, 109, 198,
    ],
    &[
        142, 246, 94, 25972, 83, 7466, 84, 2756, 42, 17097, 241, 115, 40993, 179, 120, 248, 26453,
        11100, 224, 10391, 251, 10391, 134, 11100, 226, 28, 649, 33777, 15107, 116, 218, 10813,
        232, 227, 10813, 235, 231, 10813, 233, 138, 28, 5664, 239, 17162, 17162, 25723, 11517,
        12001, 21118, 26112, 28, 216, 9175, 14714, 9382, 39511, 7872, 24958, 28, 27819, 34966,
        20602, 31462, 23339, 43463, 28, 12335, 134, 27011, 30658, 16525, 44757, 37189,
    ],
    &[
        216, 2899, 284, 35079, 333, 197, 1116, 3805, 2701, 256, 5600, 18682, 197, 30064, 5776,
        15442, 94, 32093, 256,
    ],
    &[
        75, 39637, 77, 22577, 99, 46, 2067, 99, 46, 2067, 108, 306, 79, 3738, 108, 46, 4093, 2067,
        108, 306, 79, 486, 108, 46, 933, 31, 39637, 77, 2067, 5131, 46, 933, 10179, 7113, 79, 51,
        3206, 12041, 77, 2067, 108, 486, 1714, 2692, 108, 46,
    ],
    &[
        57, 5248, 2567, 1109, 17, 657, 506, 216, 35, 42, 36, 37, 11043, 28, 502, 3060, 3543, 422,
        2154, 23, 68,
    ],
    &[
        8049, 33635, 10740, 3505, 820, 23432, 12463, 15832, 18391, 42743, 13519, 22339, 29212, 506,
    ],
    &[
        33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 216, 35, 30, 33, 36, 33, 37, 41, 216, 33, 28, 32,
        32, 32, 28, 32, 32, 32, 216, 34, 32, 34, 36, 29, 33, 33, 29, 34, 35, 216, 16738, 216,
        19133, 216, 164, 113,
    ],
    &[
        1537, 31, 1141, 31, 2153, 30, 2833, 42, 36, 34, 42, 39, 1841, 619, 385, 2346, 573, 1551,
        18536, 417, 5548, 17642, 2259, 271, 13241, 3591, 198, 44494, 3608, 1672, 31,
    ],
    &[198],
    &[216],
    &[81],
    &[12427, 415, 1792],
];

fn assert_encodes(tok: &Tokenizer, expected: &[&[u32]], what: &str) {
    for (text, want) in SAMPLE_TEXTS.iter().zip(expected) {
        let got = tok.encode(text).unwrap();
        assert_eq!(&got, want, "{what}: encode({text:?})");
    }
}

#[test]
fn tekken_json_encodes_like_mistral_common() {
    assert_encodes(tekken_240718(), TEKKEN_EXPECTED, "tekken_240718.json");
    assert_encodes(tekken_240911(), TEKKEN_EXPECTED, "tekken_240911.json");
    let tok = Tokenizer::from_tekken_json(&tekken_json("tekken_240911.json")).unwrap();
    assert_encodes(
        &tok,
        TEKKEN_EXPECTED,
        "from_tekken_json(tekken_240911.json)",
    );
}

#[test]
fn tekken_gguf_vocab_matches_llama_cpp_converter() {
    let v = tekken_240911_vocab();
    assert_eq!(v.model, "gpt2");
    assert_eq!(v.pre, "tekken");
    assert_eq!(v.tokens.len(), 131_072);
    assert_eq!(v.token_types.len(), 131_072);
    assert!(v.token_types[..1000].iter().all(|&t| t == 3));
    assert!(v.token_types[1000..].iter().all(|&t| t == 1));
    assert_eq!(
        &v.tokens[..5],
        ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    );
    assert_eq!(v.tokens[11], "<pad>");
    assert_eq!(v.tokens[20], "<SPECIAL_20>");
    assert_eq!(v.tokens[999], "<SPECIAL_999>");
    // Ranks 0.. are the single bytes, as byte-level characters.
    assert_eq!(&v.tokens[1000..1003], ["Ā", "ā", "Ă"]);
    assert_eq!(v.tokens[1000 + 32], "Ġ");
    assert_eq!(v.tokens[1000 + b'A' as usize], "A");
    // gguf-py's MistralVocab.extract_vocab_merges_from_model() gives 269443 merges starting so:
    assert_eq!(v.merges.len(), 269_443);
    assert_eq!(
        &v.merges[..10],
        [
            "Ġ Ġ",
            "Ġ t",
            "e r",
            "i n",
            "Ġ ĠĠĠ",
            "ĠĠ ĠĠ",
            "ĠĠĠ Ġ",
            "Ġ a",
            "e n",
            "o n"
        ]
    );
    assert_eq!(
        (v.bos_id, v.eos_id, v.unk_id, v.pad_id, v.add_bos),
        (1, 2, Some(0), Some(11), true)
    );
}

#[test]
fn tekken_json_conversion_is_fast_enough() {
    // The whole 131k-token conversion plus building the tokenizer; generous for a slow CI core.
    let json = tekken_json("tekken_240911.json");
    let start = std::time::Instant::now();
    let tok = Tokenizer::from_tekken_json(&json).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(tok.vocab_size(), 131_072);
    assert!(elapsed.as_secs_f64() < 30.0, "tekken.json took {elapsed:?}");
}

#[test]
fn tiny_mistral_gguf_vocab_tokenizes_like_tekken_json() {
    let file = read_gguf("tiny-mistral.gguf");
    let from_gguf = Tokenizer::from_gguf(&file).unwrap();
    let from_json = tekken_240911();
    assert_eq!(from_gguf.vocab_size(), 131_072);
    assert_eq!(from_gguf.pre(), "tekken");
    assert_eq!(from_gguf.bos_id(), Some(1));
    assert_eq!(from_gguf.eos_ids(), &[2]);
    assert!(from_gguf.add_bos());
    assert_eq!(from_gguf.token_to_id("[INST]"), Some(3));
    assert!((0..1000).all(|id| from_gguf.is_control(id)));
    assert_encodes(&from_gguf, TEKKEN_EXPECTED, "tiny-mistral.gguf");
    let mut varied = SAMPLE_TEXTS.join("\u{3000}");
    varied.push_str("\n\n\n\n   \t\t   ```python\nimport os\nprint(os.getcwd())\n```\n  ");
    assert_eq!(
        from_gguf.encode(&varied).unwrap(),
        from_json.encode(&varied).unwrap()
    );
}

#[test]
fn smollm2_encodes_like_llama_cpp() {
    let tok = smollm2();
    assert_eq!(tok.pre(), "smollm");
    assert_eq!(tok.vocab_size(), 49_152);
    assert_encodes(tok, SMOLLM2_EXPECTED, "SmolLM2 GGUF");
    // Each word of this one is a single vocabulary entry.
    let words = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"].map(|w| tok.token_to_id(w).unwrap());
    assert_eq!(tok.encode("The capital of France is").unwrap(), words);
}

#[test]
fn smollm2_special_ids() {
    let tok = smollm2();
    assert_eq!(tok.bos_id(), Some(1));
    assert!(!tok.add_bos());
    // eos_token_id <|im_end|> first, then <|endoftext|> (an end-of-generation text, as in llama.cpp).
    assert_eq!(tok.eos_ids(), &[2, 0]);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert!(tok.is_control(1) && tok.is_control(16) && !tok.is_control(17));
    assert_eq!(tok.kind(17), Some(TokenKind::Normal));
    assert_eq!(tok.token_bytes(1), b"<|im_start|>");
    assert_eq!(
        tok.id_to_piece(tok.token_to_id("Ġcapital").unwrap()),
        Some("Ġcapital")
    );
    assert_eq!(
        tok.token_bytes(tok.token_to_id("Ġcapital").unwrap()),
        b" capital"
    );
    assert!(tok.token_bytes(1_000_000).is_empty());
}

#[test]
fn decode_round_trips_both_vocabularies() {
    for (name, tok) in [("SmolLM2", smollm2()), ("tekken", tekken_240718())] {
        for text in SAMPLE_TEXTS {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), *text, "{name}: {text:?}");
        }
        assert!(tok.encode("").unwrap().is_empty());
        assert!(
            tok.decode(&[u32::MAX]).is_err(),
            "{name}: an id outside the vocabulary is an error"
        );
    }
}

#[test]
fn decode_skips_control_tokens() {
    let tok = smollm2();
    let mut ids = vec![1];
    ids.extend(tok.encode("Hi there").unwrap());
    ids.push(2);
    assert_eq!(tok.decode(&ids).unwrap(), "Hi there");
    let tok = tekken_240718();
    let mut ids = vec![1, 3];
    ids.extend(tok.encode("Hi there").unwrap());
    ids.extend([4, 2]);
    assert_eq!(tok.decode(&ids).unwrap(), "Hi there");
}

/// Every control token's text, written into user text, in several contexts.
fn control_texts(tok: &Tokenizer) -> Vec<String> {
    let controls: Vec<&str> = (0..tok.vocab_size() as u32)
        .filter(|&id| tok.is_control(id))
        .map(|id| tok.id_to_piece(id).unwrap())
        .collect();
    assert!(!controls.is_empty());
    vec![
        controls.concat(),
        controls.join(" "),
        controls.join("\n"),
        controls.iter().map(|c| format!("x{c}y")).collect::<Vec<_>>().join(""),
        "<s>[INST] hi [/INST]</s><|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n<|endoftext|>".into(),
    ]
}

#[test]
fn control_token_text_never_becomes_a_control_token() {
    for (name, tok) in [
        ("SmolLM2", smollm2()),
        ("tekken", tekken_240718()),
        ("tekken GGUF form", tekken_240911()),
    ] {
        for text in control_texts(tok) {
            let ids = tok.encode(&text).unwrap();
            let bad: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|&id| tok.is_control(id))
                .collect();
            assert!(bad.is_empty(), "{name}: control ids {bad:?} from {text:?}");
            assert_eq!(
                tok.decode(&ids).unwrap(),
                text,
                "{name}: the text survives as text"
            );
        }
    }
}

#[test]
fn encode_with_control_tokens_is_for_templates() {
    let tok = smollm2();
    let ids = tok
        .encode_with_control_tokens("<|im_start|>user\nHi<|im_end|>\n")
        .unwrap();
    let mut want = vec![1];
    want.extend(tok.encode("user\nHi").unwrap());
    want.push(2);
    want.extend(tok.encode("\n").unwrap());
    assert_eq!(ids, want);
    let tok = tekken_240718();
    assert_eq!(
        tok.encode_with_control_tokens("<s>[INST]Hello[/INST]")
            .unwrap(),
        [1, 3, 22177, 4]
    );
    assert_eq!(tok.control_token("[INST]"), Some(3));
    assert_eq!(tok.control_token("Hello"), None);
}

/// The byte tokens for a string, one token per byte.
fn byte_tokens(tok: &Tokenizer, text: &str) -> Vec<u32> {
    text.bytes().map(|b| tok.byte_token(b).unwrap()).collect()
}

#[test]
fn detokenizer_holds_back_split_characters() {
    for (name, tok) in [("SmolLM2", smollm2()), ("tekken", tekken_240718())] {
        for text in ["🦀", "日本", "é", "a🎉b"] {
            let ids = byte_tokens(tok, text);
            let mut detok = Detokenizer::new(tok);
            let mut pieces = Vec::new();
            for &id in &ids {
                let piece = detok.push(id);
                pieces.push(piece);
            }
            assert_eq!(detok.finish(), "", "{name}: nothing left over for {text:?}");
            // Nothing is emitted until a character is complete, then the whole character.
            let mut expected = Vec::new();
            for c in text.chars() {
                for _ in 1..c.len_utf8() {
                    expected.push(String::new());
                }
                expected.push(c.to_string());
            }
            assert_eq!(pieces, expected, "{name}: {text:?}");
        }
    }
}

#[test]
fn detokenizer_matches_decode_on_real_token_streams() {
    for (name, tok) in [("SmolLM2", smollm2()), ("tekken", tekken_240718())] {
        for text in SAMPLE_TEXTS {
            let mut ids = vec![tok.bos_id().unwrap()];
            ids.extend(tok.encode(text).unwrap());
            ids.extend(tok.eos_ids());
            let mut detok = Detokenizer::new(tok);
            let mut streamed = String::new();
            for &id in &ids {
                streamed.push_str(&detok.push(id));
            }
            assert!(!detok.has_pending());
            streamed.push_str(&detok.finish());
            assert_eq!(streamed, *text, "{name}");
            assert_eq!(streamed, tok.decode(&ids).unwrap(), "{name}");
        }
    }
}

#[test]
fn detokenizer_replaces_invalid_bytes_like_decode() {
    let tok = smollm2();
    // 0xF0 0x9F starts a 4-byte character; "A" breaks it. Then a lone continuation byte, then a
    // truncated character at the very end.
    let mut ids = byte_tokens(tok, "x");
    ids.extend([0xF0u8, 0x9F].map(|b| tok.byte_token(b).unwrap()));
    ids.extend(byte_tokens(tok, "A"));
    ids.push(tok.byte_token(0x80).unwrap());
    ids.extend([0xE6u8, 0x97].map(|b| tok.byte_token(b).unwrap()));
    let mut detok = Detokenizer::new(tok);
    let mut streamed = String::new();
    for &id in &ids {
        let piece = detok.push(id);
        assert!(!piece.contains('\u{0}'));
        streamed.push_str(&piece);
    }
    assert!(detok.has_pending());
    let tail = detok.finish();
    assert_eq!(tail, "\u{FFFD}");
    streamed.push_str(&tail);
    assert_eq!(streamed, "x\u{FFFD}A\u{FFFD}\u{FFFD}");
    assert_eq!(streamed, tok.decode(&ids).unwrap());
}

/// A Hugging Face tokenizer.json for SmolLM2, written the way SmolLM2's own file is laid out
/// (BPE, Digits + ByteLevel pre-tokenizer, special added tokens), from the GGUF's vocabulary.
fn smollm2_tokenizer_json() -> Vec<u8> {
    let file = read_gguf("smollm2-135m-instruct-q4_1.gguf");
    let tokens = file
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap()
        .unwrap();
    let types = file
        .get_array("tokenizer.ggml.token_type")
        .unwrap()
        .unwrap();
    let merges = file
        .get_str_array("tokenizer.ggml.merges")
        .unwrap()
        .unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i.into()))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, ty))| *ty == &Value::I32(3))
        .map(|(i, (t, _))| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab,
            "merges": merges},
    });
    serde_json::to_vec(&json).unwrap()
}

#[test]
fn tokenizer_json_matches_gguf() {
    let tok = Tokenizer::from_tokenizer_json(&smollm2_tokenizer_json()).unwrap();
    assert_eq!(tok.vocab_size(), 49_152);
    assert_encodes(&tok, SMOLLM2_EXPECTED, "SmolLM2 tokenizer.json");
    for text in control_texts(&tok) {
        assert!(tok
            .encode(&text)
            .unwrap()
            .iter()
            .all(|&id| !tok.is_control(id)));
    }
    assert!(tok.is_control(1));
    assert_eq!(tok.eos_ids(), &[2, 0]); // <|im_end|>, <|endoftext|>
}

#[test]
fn tokenizer_json_rejects_non_byte_level_models() {
    let json = br#"{"model": {"type": "Unigram", "vocab": []}, "added_tokens": []}"#;
    assert!(Tokenizer::from_tokenizer_json(json).is_err());
    assert!(Tokenizer::from_tokenizer_json(b"not json").is_err());
}

#[test]
fn sentencepiece_vocabularies_are_a_clear_error() {
    let file = metadata_only(&[
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("<unk>".into())]),
        ),
    ]);
    let err = Tokenizer::from_gguf(&file).unwrap_err().to_string();
    assert!(err.contains("SentencePiece"), "{err}");
    let err = Tokenizer::from_gguf(&metadata_only(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.ggml.model"), "{err}");
}

#[test]
fn bad_vocabularies_are_errors_not_panics() {
    let strings =
        |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
    let base = |extra: Vec<(&'static str, Value)>| {
        let mut pairs = vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
            ("tokenizer.ggml.merges", strings(&["a b"])),
            ("tokenizer.ggml.eos_token_id", Value::U32(0)),
        ];
        pairs.extend(extra);
        metadata_only(&pairs)
    };
    // A minimal vocabulary works (unknown pre name: GPT-2's pattern).
    let tok = Tokenizer::from_gguf(&base(vec![(
        "tokenizer.ggml.pre",
        Value::String("no-such-pre".into()),
    )]))
    .unwrap();
    assert_eq!(tok.encode("ab").unwrap(), [2]);
    assert!(
        Tokenizer::from_gguf(&base(vec![("tokenizer.ggml.bos_token_id", Value::U32(7))])).is_err()
    );
    assert!(Tokenizer::from_gguf(&base(vec![(
        "tokenizer.ggml.token_type",
        Value::Array(vec![Value::I32(1)])
    )]))
    .is_err());
    assert!(tekken_gguf_vocab(b"{}").is_err());
    assert!(tekken_gguf_vocab(
        br#"{"config": {"pattern": "x", "default_vocab_size": 10, "default_num_special_tokens": 1}, "vocab": []}"#
    )
    .is_err());
}
