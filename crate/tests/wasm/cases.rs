//! What the native and the wasm32 forward-pass tests share: the models and prompts, the file the
//! native run writes for the wasm run to compare with, and the comparison itself.
//!
//! Both sides run the same code (`MemorySource` → `GgufFile::read` → `cpu::load_model` →
//! `forward`); what differs is the target: the SIMD kernels (AVX2/FMA natively, SIMD128 in wasm),
//! the libm behind exp/sin/cos, and threading. Two levels are compared:
//! - operations (each weight type's matmul, rms_norm, rope, swiglu, attention, embedding) on fixed
//!   inputs through the `Backend` interface: these differ only by summation order, so the
//!   tolerance is tight and a wrong SIMD128 kernel shows up here;
//! - the whole model: logits after the prompt and after each of [`GREEDY_STEPS`] greedy tokens.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use edgechat::backend::cpu::CpuBackend;
use edgechat::backend::{AttentionParams, Backend};
use edgechat::gguf::{ByteSource, GgmlType, GgufFile, MemorySource, TensorData, TensorInfo};
use edgechat::model::LlamaConfig;
use serde::{Deserialize, Serialize};

/// One model and the prompt it is run on (token ids, so no tokenizer is involved).
pub struct Case {
    pub model: &'static str,
    pub prompt: &'static [u32],
}

/// "The capital of France is" in SmolLM2's vocabulary (Q4_1 matrices, Q8_0 embedding/output).
pub const SMOLLM2: Case = Case {
    model: "smollm2-135m-instruct-q4_1.gguf",
    prompt: &[504, 3575, 282, 4649, 314],
};

/// `<s>[INST]Hello, how are you?[/INST]` in tekken ids. Random weights, but its Q4_K/Q6_K/Q8_0/
/// Q4_0/F16 mix reaches every SIMD128 kernel the model uses.
pub const TINY_MISTRAL: Case = Case {
    model: "tiny-mistral.gguf",
    prompt: &[1, 3, 22177, 1044, 2606, 1584, 1636, 1063, 4],
};

/// Tokens decoded greedily after the prompt.
pub const GREEDY_STEPS: usize = 8;

/// Largest allowed `max |wasm − native| / max |native|` for one operation.
///
/// The kernels are the same algorithms on the same quantized bytes; SIMD width and FMA change only
/// the order and rounding of float sums (measured: at most 1e-6). A wrong kernel is off by far more.
pub const OPERATION_TOLERANCE: f32 = 1e-4;

/// Largest allowed `max |wasm − native| / max |native|` for the model's logits.
///
/// Much looser than one operation: activations are quantized to 8 bits before every quantized
/// matmul, so an ulp of difference sometimes flips a rounding step, the flipped value moves the
/// next layer's inputs by far more than an ulp, and soon the two runs differ by about the
/// quantization noise itself. Measured on SmolLM2 with this prompt: two native builds of the same
/// code, with and without AVX2/FMA (`-C target-cpu=x86-64`), differ by 3.8%; wasm vs native by up
/// to 7.9%; tiny-mistral (4 layers) wasm vs native 1.8%. The operation probes carry the precise
/// check; this one catches a broken forward pass.
pub const LOGITS_TOLERANCE: f32 = 0.15;

/// Largest allowed KL divergence (nats) of the wasm next-token distribution from the native one
/// (measured: at most 0.015 wasm vs native on SmolLM2, 0.007 between the two native builds).
pub const KL_TOLERANCE: f64 = 0.05;

/// A step's greedy token may differ only where the native top two are closer than this fraction
/// of the largest logit magnitude: a near-tie that the differences above can reorder (seen on the
/// random-weight tiny-mistral: 4.5310 vs 4.5222 at step 1). The wasm run feeds the native tokens,
/// so the steps after a near-tie still compare like for like.
pub const NEAR_TIE: f32 = 0.01;

/// A fixed input's result through one backend operation.
#[derive(Debug, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    pub values: Vec<f32>,
}

/// What one run produces, and what the native run writes for the wasm run.
#[derive(Debug, Serialize, Deserialize)]
pub struct Observed {
    pub model: String,
    /// Length and FNV-1a hash of the GGUF file, so an expectation for another file is refused.
    pub model_len: u64,
    pub model_fnv1a: u64,
    pub prompt: Vec<u32>,
    pub probes: Vec<Probe>,
    /// `logits[0]` after the prompt, `logits[i]` after feeding `greedy_tokens[i - 1]`.
    pub logits: Vec<Vec<f32>>,
    /// Argmax of each entry of `logits`.
    pub greedy_tokens: Vec<u32>,
}

/// `<workspace>/models/<name>` (as a string: the wasm side hands it to Node's `fs`).
pub fn model_path(name: &str) -> String {
    format!("{}/../models/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Where the native run writes its results: `<target dir>/wasm-expected/`, found from Cargo's
/// `CARGO_TARGET_TMPDIR`, which is `<target dir>/tmp` natively and
/// `<target dir>/wasm32-unknown-unknown/tmp` in a wasm32 build (so `CARGO_TARGET_DIR` is honoured).
pub fn expected_path(name: &str) -> String {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let levels_up = if cfg!(target_arch = "wasm32") { 2 } else { 1 };
    let target_dir = tmp
        .ancestors()
        .nth(levels_up)
        .expect("CARGO_TARGET_TMPDIR has a parent");
    format!("{}/wasm-expected/{name}.json", target_dir.display())
}

/// 64-bit FNV-1a: a cheap fingerprint that runs the same on both targets.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Loads the model from `bytes`, runs the operation probes, the prompt, and greedy decoding.
/// Natively `forced_tokens` is `None` and each step feeds the argmax of the previous logits; the
/// wasm run feeds the native tokens instead, so every step compares logits for the same input even
/// where a near-tie makes the two argmaxes differ.
pub fn run(case: &Case, bytes: Vec<u8>, forced_tokens: Option<&[u32]>) -> Observed {
    let model_len = bytes.len() as u64;
    let model_fnv1a = fnv1a(&bytes);
    let source = MemorySource::new(bytes);
    let file = GgufFile::read(&source).unwrap_or_else(|e| panic!("{}: {e}", case.model));
    let probes = probes(&file, &source).unwrap_or_else(|e| panic!("{}: probes: {e}", case.model));
    let mut model = edgechat::backend::cpu::load_model(&file, &source)
        .unwrap_or_else(|e| panic!("{}: {e}", case.model));
    drop(file);
    drop(source);

    let mut logits = vec![model.forward(case.prompt).unwrap()];
    let mut greedy_tokens = vec![argmax(&logits[0])];
    for step in 1..GREEDY_STEPS {
        let input = forced_tokens.map_or(greedy_tokens[step - 1], |t| t[step - 1]);
        logits.push(model.forward(&[input]).unwrap());
        greedy_tokens.push(argmax(&logits[step]));
    }
    assert_eq!(model.cache_len(), case.prompt.len() + GREEDY_STEPS - 1);
    Observed {
        model: case.model.to_string(),
        model_len,
        model_fnv1a,
        prompt: case.prompt.to_vec(),
        probes,
        logits,
        greedy_tokens,
    }
}

/// Rows of each probed weight matrix (enough for every kernel's blocking, small enough to store).
const PROBE_ROWS: u64 = 256;

/// Deterministic values in [-scale, scale).
fn pseudo_random(len: usize, seed: u32, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn input(rows: usize, cols: usize, seed: u32, scale: f32) -> edgechat::Result<Tensor> {
    Ok(Tensor::from_vec(
        pseudo_random(rows * cols, seed, scale),
        (rows, cols),
        &Device::Cpu,
    )?)
}

/// Each backend operation on fixed inputs. Matmuls: the first [`PROBE_ROWS`] rows of the first
/// matrix of every weight type in the file, with 1 row (decode), 7 rows and 40 rows (prefill).
fn probes(file: &GgufFile, source: &dyn ByteSource) -> edgechat::Result<Vec<Probe>> {
    let b = CpuBackend::new();
    let config = LlamaConfig::from_gguf(file)?;
    let mut probes = Vec::new();
    let mut probe = |name: String, t: &Tensor| -> edgechat::Result<()> {
        probes.push(Probe {
            name,
            values: b.to_vec(t)?,
        });
        Ok(())
    };

    let mut seen: Vec<GgmlType> = Vec::new();
    for info in file.tensors.iter().filter(|t| t.dims.len() == 2) {
        if seen.contains(&info.dtype) {
            continue;
        }
        seen.push(info.dtype);
        let (cols, rows) = (info.dims[0], info.dims[1]);
        let keep = rows.min(PROBE_ROWS);
        // Rows are whole blocks, stored one after another: the first `keep` rows are a prefix.
        let head = TensorInfo {
            dims: vec![cols, keep],
            n_bytes: info.n_bytes / rows * keep,
            ..info.clone()
        };
        let matrix = b.load_matrix(TensorData::new(&head, source))?;
        for m in [1, 7, 40] {
            let x = input(m, cols as usize, m as u32, 1.0)?;
            probe(
                format!("matmul {:?} {} x{m}", info.dtype, info.name),
                &b.matmul(&x, &matrix)?,
            )?;
        }
    }

    let dim = config.embedding_length;
    let norm_info = file.require_tensor("blk.0.attn_norm.weight")?;
    let norm = b.load_vector(norm_info, &file.tensor_bytes(source, norm_info)?)?;
    probe(
        "rms_norm".into(),
        &b.rms_norm(&input(7, dim, 11, 1.0)?, &norm, config.rms_norm_eps)?,
    )?;

    let embd_info = file.require_tensor("token_embd.weight")?;
    let embd = b.load_embedding(TensorData::new(embd_info, source))?;
    probe(
        "embed".into(),
        &b.embed(&embd, &[0, 1, 2, 1000, config.vocab_size as u32 - 1])?,
    )?;

    let (heads, kv_heads, head_dim) = (config.head_count, config.head_count_kv, config.head_dim);
    let inv_freq: Vec<f32> = (0..head_dim / 2)
        .map(|i| {
            config
                .rope_freq_base
                .powf(-2.0 * i as f32 / head_dim as f32)
        })
        .collect();
    // Positions far into the context, where sin/cos of large angles are the hard case.
    let far = AttentionParams {
        head_count: heads,
        head_count_kv: kv_heads,
        head_dim,
        start_pos: 3000,
        sliding_window: None,
    };
    probe(
        "rope".into(),
        &b.rope(
            &input(7, heads * head_dim, 12, 1.0)?,
            heads,
            &b.positions(&far, 7, &inv_freq)?,
        )?,
    )?;

    let (gate, up) = (input(7, 64, 13, 8.0)?, input(7, 64, 14, 1.0)?);
    probe("swiglu".into(), &b.swiglu(&gate, &up)?)?;

    // Attention: a 7-token prefill into an empty cache, then one decode step.
    let mut cache = b.new_kv_cache(kv_heads, head_dim, 1024)?;
    for (start_pos, rows) in [(0, 7), (7, 1)] {
        let params = AttentionParams {
            head_count: heads,
            head_count_kv: kv_heads,
            head_dim,
            start_pos,
            sliding_window: None,
        };
        let seed = 20 + start_pos as u32;
        let q = input(rows, heads * head_dim, seed, 3.0)?;
        let k = input(rows, kv_heads * head_dim, seed + 1, 3.0)?;
        let v = input(rows, kv_heads * head_dim, seed + 2, 1.0)?;
        probe(
            format!("attention at {start_pos}"),
            &b.attention(
                &q,
                &k,
                &v,
                &mut cache,
                &params,
                &b.positions(&params, rows, &inv_freq)?,
            )?,
        )?;
    }
    Ok(probes)
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Largest absolute difference relative to the largest magnitude in `expected`.
pub fn relative_max_diff(got: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(got.len(), expected.len(), "vectors differ in length");
    let diff = got
        .iter()
        .zip(expected)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    diff / max_abs(expected).max(1e-6)
}

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let log_sum = v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    v.iter().map(|&x| x as f64 - max - log_sum).collect()
}

/// KL(expected ‖ got) of the softmax distributions, in nats.
pub fn kl_divergence(got: &[f32], expected: &[f32]) -> f64 {
    let (p, q) = (log_softmax(expected), log_softmax(got));
    p.iter().zip(&q).map(|(p, q)| p.exp() * (p - q)).sum()
}

/// Checks a run against the expectation; returns the measured differences.
pub fn compare(got: &Observed, expected: &Observed) -> String {
    let name = &expected.model;
    assert_eq!(
        (got.model_len, got.model_fnv1a),
        (expected.model_len, expected.model_fnv1a),
        "{name}: the expectation was written for another version of the file: run scripts/test-wasm"
    );
    assert_eq!(
        got.prompt, expected.prompt,
        "{name}: the expectation is for another prompt: run scripts/test-wasm"
    );
    assert_eq!(
        got.probes.len(),
        expected.probes.len(),
        "{name}: probes differ: run scripts/test-wasm"
    );
    assert_eq!(got.logits.len(), expected.logits.len());

    let mut worst_probe = (0f32, "");
    for (g, e) in got.probes.iter().zip(&expected.probes) {
        assert_eq!(
            g.name, e.name,
            "{name}: probes differ: run scripts/test-wasm"
        );
        assert!(
            g.values.iter().all(|v| v.is_finite()),
            "{name}: {}: non-finite values",
            g.name
        );
        let diff = relative_max_diff(&g.values, &e.values);
        assert!(
            diff <= OPERATION_TOLERANCE,
            "{name}: {} differs by {diff:e} relative (tolerance {OPERATION_TOLERANCE:e})",
            g.name
        );
        if diff >= worst_probe.0 {
            worst_probe = (diff, &g.name);
        }
    }

    let mut worst_logits = (0f32, 0f64);
    let mut near_ties = Vec::new();
    for (step, (g, e)) in got.logits.iter().zip(&expected.logits).enumerate() {
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{name}: step {step}: non-finite logits"
        );
        let diff = relative_max_diff(g, e);
        let kl = kl_divergence(g, e);
        assert!(
            diff <= LOGITS_TOLERANCE,
            "{name}: step {step}: logits differ by {diff:e} relative (tolerance {LOGITS_TOLERANCE})"
        );
        assert!(
            kl <= KL_TOLERANCE,
            "{name}: step {step}: KL divergence {kl:e} (tolerance {KL_TOLERANCE})"
        );
        worst_logits = (worst_logits.0.max(diff), worst_logits.1.max(kl));

        let (ours, theirs) = (got.greedy_tokens[step], expected.greedy_tokens[step]);
        if ours != theirs {
            let (ours_native, theirs_native) = (e[ours as usize], e[theirs as usize]);
            assert!(
                theirs_native - ours_native <= NEAR_TIE * max_abs(e),
                "{name}: step {step}: greedy token {ours}, native {theirs} \
                 (native logits {ours_native} vs {theirs_native}: not a near-tie)"
            );
            near_ties.push(format!(
                "step {step}: {ours} for {theirs}, native logits {ours_native} vs {theirs_native}"
            ));
        }
    }
    let greedy = if near_ties.is_empty() {
        format!("greedy tokens {:?} identical", got.greedy_tokens)
    } else {
        format!(
            "greedy tokens {:?} identical except near-ties ({})",
            expected.greedy_tokens,
            near_ties.join("; ")
        )
    };

    format!(
        "{name}: {} operations, worst {:.2e} relative ({}); logits at {} steps: worst {:.2e} relative, KL {:.2e}; {greedy}",
        got.probes.len(),
        worst_probe.0,
        worst_probe.1,
        got.logits.len(),
        worst_logits.0,
        worst_logits.1,
    )
}
