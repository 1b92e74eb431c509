//! The `edgechat` binary end to end, on SmolLM2-135M-Instruct (Q4_1). Run with
//! `cargo test --release -p edgechat --test cli`; `scripts/models` creates the model file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SMOLLM2: &str = "smollm2-135m-instruct-q4_1.gguf";

/// "The capital of France is" in SmolLM2's vocabulary (no BOS: the model does not add one).
const FRANCE_PROMPT_IDS: [u32; 5] = [504, 3575, 282, 4649, 314];
/// " Paris" in SmolLM2's vocabulary.
const PARIS_ID: u32 = 7042;

fn model_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join(SMOLLM2);
    assert!(
        path.exists(),
        "test model {} is missing: run scripts/models",
        path.display()
    );
    path
}

fn edgechat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgechat"))
        .args(args)
        .output()
        .expect("the edgechat binary runs")
}

/// Runs with `--model <SmolLM2>` appended and insists on success; returns stdout.
fn edgechat_ok(args: &[&str]) -> String {
    let model = model_path();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--model", model.to_str().unwrap()]);
    let out = edgechat(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "edgechat {all:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

/// Expects a clean failure: non-zero exit, an `error:` line that mentions `needle`, no panic.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure, got success; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "the binary panicked:\n{stderr}"
    );
    assert!(
        !stderr.contains("stack backtrace"),
        "a backtrace was printed:\n{stderr}"
    );
    let message = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no `error:` line:\n{stderr}"));
    assert!(
        message.contains(needle),
        "the message does not mention `{needle}`:\n{stderr}"
    );
}

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn run_prints_only_the_completion() {
    let stdout = edgechat_ok(&[
        "run",
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
    ]);
    assert!(
        stdout.starts_with(" Paris"),
        "greedy completion: {stdout:?}"
    );
    assert!(
        !stdout.contains("The capital of France is"),
        "the prompt was echoed: {stdout:?}"
    );
}

#[test]
fn run_stops_before_a_stop_string() {
    // Greedy continues " Paris." ; with stop "." the output ends right before it.
    let stdout = edgechat_ok(&[
        "run",
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--stop",
        ".",
    ]);
    assert_eq!(stdout.trim_end_matches('\n'), " Paris");
}

#[test]
fn run_chat_answers_with_the_template() {
    let stdout = edgechat_ok(&[
        "run",
        "--chat",
        "--system",
        "You are a helpful assistant.",
        // Not "What is the capital of France?": after it SmolLM2's first token is a near-tie
        // ("The" against "La", 0.1 apart in llama.cpp's logits too) that float rounding decides.
        "--prompt",
        "Name the capital of France.",
        "--max-tokens",
        "16",
        "--temperature",
        "0",
    ]);
    assert!(stdout.contains("Paris"), "chat answer: {stdout:?}");
    assert!(
        !stdout.contains("<|im_"),
        "control tokens leaked into the text: {stdout:?}"
    );
}

#[test]
fn tokenize_text_prints_the_ids() {
    let stdout = edgechat_ok(&["tokenize", "--text", "The capital of France is"]);
    let ids: Vec<u32> = serde_json::from_str(stdout.trim()).expect("a JSON array of ids");
    assert_eq!(ids, FRANCE_PROMPT_IDS);
}

#[test]
fn tokenize_chat_json_renders_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let chat = write_temp(
        dir.path(),
        "chat.json",
        br#"[{"role": "user", "content": "Hi"}]"#,
    );
    let stdout = edgechat_ok(&["tokenize", "--chat-json", chat.to_str().unwrap()]);
    let ids: Vec<u32> = serde_json::from_str(stdout.trim()).expect("a JSON array of ids");
    // ChatML: starts with <|im_start|> (1) and ends with the generation prompt
    // "<|im_start|>assistant\n" = [1, 520, 9531, 198].
    assert_eq!(ids.first(), Some(&1));
    assert!(ids.ends_with(&[1, 520, 9531, 198]), "{ids:?}");
    // SmolLM2's default system prompt and the user's "Hi" sit between.
    assert!(ids.len() > 8 && ids.len() < 64, "{ids:?}");
}

#[test]
fn tokenize_chat_json_rejects_bad_json() {
    let dir = tempfile::tempdir().unwrap();
    let chat = write_temp(dir.path(), "chat.json", b"{not json");
    let model = model_path();
    let out = edgechat(&[
        "tokenize",
        "--model",
        model.to_str().unwrap(),
        "--chat-json",
        chat.to_str().unwrap(),
    ]);
    assert_clean_failure(&out, "expected a JSON array");
}

#[test]
fn logits_lists_the_top_tokens_sorted() {
    let stdout = edgechat_ok(&[
        "logits",
        "--prompt",
        "The capital of France is",
        "--top",
        "5",
    ]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("a JSON array");
    assert_eq!(entries.len(), 5);
    let logits: Vec<f64> = entries
        .iter()
        .map(|e| e["logit"].as_f64().expect("numeric logit"))
        .collect();
    assert!(
        logits.windows(2).all(|w| w[0] >= w[1]),
        "not sorted by logit: {logits:?}"
    );
    assert!(logits.iter().all(|l| l.is_finite()));
    assert_eq!(entries[0]["id"], PARIS_ID);
    assert_eq!(entries[0]["token"], " Paris");
}

#[test]
fn inspect_shows_metadata_tensors_and_config() {
    let text = edgechat_ok(&["inspect"]);
    assert!(text.contains("general.architecture = \"llama\""), "{text}");
    assert!(text.contains("config (llama):"), "{text}");
    assert!(text.contains("token_embd.weight"), "{text}");
    // The 49152-entry vocabulary is summarized, not dumped.
    assert!(text.contains("(49152 items)"), "{text}");
    assert!(text.len() < 200_000, "inspect printed {} bytes", text.len());

    let json: serde_json::Value =
        serde_json::from_str(&edgechat_ok(&["inspect", "--json"])).expect("JSON");
    assert_eq!(json["metadata"]["general.architecture"], "llama");
    assert_eq!(json["config"]["block_count"], 30);
    assert_eq!(json["config"]["embedding_length"], 576);
    assert_eq!(
        json["metadata"]["tokenizer.ggml.tokens"]["array_length"],
        49152
    );
    let tensors = json["tensors"].as_array().expect("tensor list");
    assert_eq!(tensors.len(), 272);
    let embd = tensors
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .expect("token_embd.weight");
    assert_eq!(embd["type"], "Q8_0");
    assert_eq!(embd["shape"], serde_json::json!([49152, 576]));
}

#[test]
fn perplexity_gives_a_finite_estimate() {
    let text = "The city of Paris is the capital and most populous city of France. Situated on the Seine \
        River, in the north of the country, it is at the heart of the Ile-de-France region. The city is a \
        major railway, highway and air-transport hub served by two international airports. Opened in 1900, \
        the city's subway system, the Paris Metro, serves more than five million passengers daily. Paris \
        is known for its museums and architectural landmarks: the Louvre received more than eight million \
        visitors in 2023, making it the most visited art museum in the world.";
    let dir = tempfile::tempdir().unwrap();
    let file = write_temp(dir.path(), "text.txt", text.as_bytes());
    let stdout = edgechat_ok(&[
        "perplexity",
        "--file",
        file.to_str().unwrap(),
        "--ctx",
        "64",
    ]);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Final estimate: PPL = "))
        .expect("a final estimate line");
    let ppl: f64 = line["Final estimate: PPL = ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Plain encyclopedic English: a 135M model is far better than chance (49152) and no oracle.
    assert!(ppl.is_finite() && ppl > 1.0 && ppl < 1000.0, "PPL {ppl}");
    assert!(
        stdout.starts_with("[1]"),
        "per-chunk figures first: {stdout}"
    );
}

#[test]
fn bench_prints_figures() {
    let stdout = edgechat_ok(&[
        "bench",
        "--prompt-tokens",
        "32",
        "--gen-tokens",
        "8",
        "--repetitions",
        "1",
        "--threads",
        "2",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    for key in [
        "prefill_tokens_per_second",
        "decode_tokens_per_second",
        "decode_effective_gb_per_second",
    ] {
        let v = json[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(json["threads"], 2);
    let text = edgechat_ok(&[
        "bench",
        "--prompt-tokens",
        "32",
        "--gen-tokens",
        "8",
        "--repetitions",
        "1",
    ]);
    assert!(
        text.contains("prefill:") && text.contains("decode:") && text.contains("GB/s"),
        "{text}"
    );
}

/// mistral-common's tekken_240911.json, installed under .venv-models by scripts/models.
fn tekken_json() -> PathBuf {
    fn find(dir: &Path, depth: usize) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "tekken_240911.json") {
                return Some(path);
            }
            if depth > 0 && path.is_dir() {
                if let Some(found) = find(&path, depth - 1) {
                    return Some(found);
                }
            }
        }
        None
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".venv-models");
    find(&venv, 8).unwrap_or_else(|| {
        panic!(
            "tekken_240911.json not found under {}: run scripts/models",
            venv.display()
        )
    })
}

#[test]
fn generate_writes_a_runnable_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("tiny.gguf");
    let out_str = out_path.to_str().unwrap();
    let tekken = tekken_json();
    let out = edgechat(&[
        "generate",
        "--preset",
        "tiny",
        "--tekken",
        tekken.to_str().unwrap(),
        "--out",
        out_str,
        "--seed",
        "5",
    ]);
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = edgechat(&["inspect", "--json", "--model", out_str]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["config"]["block_count"], 4);
    assert_eq!(json["config"]["vocab_size"], 131072);
    assert_eq!(json["metadata"]["tokenizer.ggml.pre"], "tekken");

    // Random weights say nothing useful, but the chat template, the tokenizer and the model run.
    let out = edgechat(&[
        "run",
        "--model",
        out_str,
        "--chat",
        "--prompt",
        "Hi",
        "--max-tokens",
        "3",
        "--temperature",
        "0",
    ]);
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prompt "), "no figures on stderr: {stderr}");

    let out = edgechat(&[
        "generate",
        "--preset",
        "huge",
        "--tekken",
        tekken.to_str().unwrap(),
        "--out",
        out_str,
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown preset is a usage error"
    );
}

#[test]
fn every_subcommand_has_help() {
    let subcommands = [
        "inspect",
        "tokenize",
        "run",
        "chat",
        "logits",
        "perplexity",
        "bench",
        "generate",
        "serve",
    ];
    for sub in subcommands {
        let out = edgechat(&[sub, "--help"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{sub} --help failed");
        assert!(stdout.contains("Usage: edgechat"), "{sub} --help: {stdout}");
    }
    let out = edgechat(&["--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for sub in subcommands {
        assert!(
            stdout.contains(sub),
            "`{sub}` missing from the top-level help:\n{stdout}"
        );
    }
}

#[test]
fn missing_model_is_a_clear_error() {
    for sub in ["inspect", "run", "serve"] {
        let mut args = vec![sub, "--model", "no/such/model.gguf"];
        if sub == "run" {
            args.extend(["--prompt", "hi"]);
        }
        assert_clean_failure(&edgechat(&args), "cannot open model");
    }
}

#[test]
fn corrupted_models_are_clear_errors() {
    let original = std::fs::read(model_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let not_gguf = write_temp(
        dir.path(),
        "not.gguf",
        b"this is not a model at all, just some text",
    );
    assert_clean_failure(
        &edgechat(&["inspect", "--model", not_gguf.to_str().unwrap()]),
        "not a GGUF file",
    );

    // Cut inside the header (the vocabulary).
    let header_cut = write_temp(dir.path(), "header-cut.gguf", &original[..100_000]);
    let out = edgechat(&[
        "run",
        "--model",
        header_cut.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_clean_failure(&out, "is not a usable GGUF model");

    // Header intact, tensor data cut short.
    let data_cut = write_temp(dir.path(), "data-cut.gguf", &original[..original.len() / 2]);
    let out = edgechat(&[
        "run",
        "--model",
        data_cut.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_clean_failure(&out, "truncated");

    // The metadata key count overwritten with a huge number.
    let mut bad_count = original[..4096].to_vec();
    bad_count[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let bad_count = write_temp(dir.path(), "bad-count.gguf", &bad_count);
    assert_clean_failure(
        &edgechat(&[
            "tokenize",
            "--model",
            bad_count.to_str().unwrap(),
            "--text",
            "hi",
        ]),
        "too large",
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let model = model_path();
    let model = model.to_str().unwrap();
    // clap reports these itself (exit code 2).
    let out = edgechat(&["run", "--model", model]);
    assert_eq!(out.status.code(), Some(2), "missing --prompt");
    let out = edgechat(&["tokenize", "--model", model]);
    assert_eq!(out.status.code(), Some(2), "neither --text nor --chat-json");
    // Values clap cannot check.
    let out = edgechat(&["run", "--model", model, "--prompt", "x", "--top-p", "0"]);
    assert_clean_failure(&out, "--top-p");
    let out = edgechat(&["perplexity", "--model", model, "--file", "no/such/file.txt"]);
    assert_clean_failure(&out, "cannot read");
}

/// `--backend webgpu` runs the same chat on the GPU backend (lavapipe on CI machines) and gives the
/// same greedy answer; an unknown backend is a usage error.
#[test]
fn run_on_the_webgpu_backend() {
    let stdout = edgechat_ok(&[
        "run",
        "--backend",
        "webgpu",
        "--chat",
        "--system",
        "You are a helpful assistant.",
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        "16",
        "--temperature",
        "0",
    ]);
    assert!(
        stdout.contains("Paris"),
        "chat answer on webgpu: {stdout:?}"
    );
    let model = model_path();
    let out = edgechat(&[
        "run",
        "--backend",
        "tpu",
        "--prompt",
        "x",
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown backend"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
