//! Native half of the wasm32 forward-pass check: runs each model natively and writes the operation
//! probes, logits and greedy tokens that `tests/wasm_forward.rs` (built for wasm32) must reproduce.
//! `scripts/test-wasm` runs this first, then the wasm test.
#![cfg(not(target_arch = "wasm32"))]

#[path = "wasm/cases.rs"]
mod cases;

use cases::{Case, Observed};

/// On x86 CPUs with AVX-512 VNNI or AVX-VNNI, candle repacks Q8_0 weights and multiplies them with
/// activations quantized in 256-element blocks (Q8_K) instead of the 32-element Q8_0 blocks its
/// portable, NEON and SIMD128 kernels use (and with AMX for Q4_K prefill). That is another
/// algorithm, not only another summation order: on tiny-mistral it moved the logits by 2.7%.
/// Limiting candle to its AVX2 kernels keeps the reference the same algorithm as the wasm kernels.
/// This is candle-core 0.11's switch (read once per process, before the first matmul).
fn limit_candle_to_avx2_kernels() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // Every test calls this first and `call_once` blocks until it is done, so no other test thread
    // is reading the environment while it is written.
    ONCE.call_once(|| std::env::set_var("MISTRALRS_FORCE_AVX2", "1"));
}

fn write_expectation(case: &Case) {
    limit_candle_to_avx2_kernels();
    let path = cases::model_path(case.model);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("test model {path} is missing ({e}): run scripts/models"));
    let observed = cases::run(case, bytes, None);

    // The run must be usable as a reference: finite values, tokens in the vocabulary, and the same
    // numbers when run again on the same machine (the wasm comparison assumes determinism).
    let vocab = observed.logits[0].len();
    assert!(vocab > 0 && observed.logits.iter().all(|l| l.len() == vocab));
    assert!(
        observed.logits.iter().flatten().all(|v| v.is_finite()),
        "{}: non-finite logits",
        case.model
    );
    assert!(observed
        .probes
        .iter()
        .all(|p| !p.values.is_empty() && p.values.iter().all(|v| v.is_finite())));
    assert!(observed.greedy_tokens.iter().all(|&t| (t as usize) < vocab));
    let again = cases::run(case, std::fs::read(&path).unwrap(), None);
    assert_eq!(
        again.logits, observed.logits,
        "{}: native run is not deterministic",
        case.model
    );
    assert_eq!(
        again.greedy_tokens, observed.greedy_tokens,
        "{}: native run is not deterministic",
        case.model
    );

    let out = cases::expected_path(case.model);
    let out = std::path::Path::new(&out);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let tmp = out.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&observed).unwrap()).unwrap();
    std::fs::rename(&tmp, out).unwrap();

    // What was written reads back bit-exactly (serde_json prints f32 in shortest round-trip form).
    let read_back: Observed = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    assert_eq!(read_back.logits, observed.logits);
    eprintln!(
        "{}: greedy tokens {:?}, wrote {}",
        case.model,
        observed.greedy_tokens,
        out.display()
    );
}

#[test]
fn smollm2_native_expectation() {
    write_expectation(&cases::SMOLLM2);
}

#[test]
fn tiny_mistral_native_expectation() {
    write_expectation(&cases::TINY_MISTRAL);
}
