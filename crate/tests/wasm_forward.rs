//! The forward pass in wasm32 (SIMD128), run by `wasm-bindgen-test-runner` in Node, against the
//! native run of the same file and prompt (written by `tests/wasm_expected_logits.rs`).
//! Run both with `scripts/test-wasm`.
#![cfg(target_arch = "wasm32")]

#[path = "wasm/cases.rs"]
mod cases;

use cases::{Case, Observed};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::{console_log, wasm_bindgen_test};

// Without SIMD128 this test would compare the portable kernels, not the ones the browser runs.
#[cfg(not(target_feature = "simd128"))]
compile_error!("build wasm32 with -C target-feature=+simd128 (set in .cargo/config.toml)");

// Node's file system: the test runs in Node, where the repository is on disk.
#[wasm_bindgen(module = "fs")]
extern "C" {
    #[wasm_bindgen(js_name = existsSync)]
    fn exists_sync(path: &str) -> bool;
    #[wasm_bindgen(catch, js_name = readFileSync)]
    fn read_file_sync(path: &str) -> Result<Vec<u8>, JsValue>;
    #[wasm_bindgen(catch, js_name = writeFileSync)]
    fn write_file_sync(path: &str, data: &[u8]) -> Result<(), JsValue>;
}

fn read(path: &str) -> Vec<u8> {
    read_file_sync(path).unwrap_or_else(|e| panic!("reading {path}: {e:?}"))
}

fn check(case: &Case) {
    // candle's SIMD128 kernels are compiled in only with the target feature (.cargo/config.toml).
    assert!(candle_core::utils::with_simd128(), "built without +simd128");

    let model_path = cases::model_path(case.model);
    assert!(
        exists_sync(&model_path),
        "test model {model_path} is missing: run scripts/models"
    );
    let expected_path = cases::expected_path(case.model);
    assert!(
        exists_sync(&expected_path),
        "{expected_path} is missing: run scripts/test-wasm (it writes the native expectation first)"
    );
    let expected: Observed =
        serde_json::from_slice(&read(&expected_path)).expect("expectation file");

    let started = web_time::Instant::now();
    let got = cases::run(case, read(&model_path), Some(&expected.greedy_tokens));
    let elapsed = started.elapsed();
    // Kept next to the expectation, for looking into a failure.
    let got_path = format!("{}.wasm.json", expected_path.trim_end_matches(".json"));
    write_file_sync(&got_path, &serde_json::to_vec(&got).unwrap())
        .unwrap_or_else(|e| panic!("writing {got_path}: {e:?}"));

    let summary = cases::compare(&got, &expected);
    console_log!(
        "{summary}; wasm: probes, load and {} forward calls in {:.2} s",
        cases::GREEDY_STEPS,
        elapsed.as_secs_f64()
    );
}

#[wasm_bindgen_test]
fn smollm2_matches_native() {
    check(&cases::SMOLLM2);
}

#[wasm_bindgen_test]
fn tiny_mistral_matches_native() {
    check(&cases::TINY_MISTRAL);
}
