//! Every kernel variant the adapter supports (f32 or f16 products, workgroup-memory or subgroup
//! reductions, 1, 4, 8 or 32 threads per weight row), forced through `GpuOptions`: matmuls of every
//! type against the exactly decoded weights, and SmolLM2 against the CPU backend.
#![cfg(feature = "webgpu")]

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use common::quantized::{encoded, values};
use edgechat::backend::webgpu::{GpuOptions, WebGpuBackend, SUPPORTED_TYPES};
use edgechat::backend::Backend;
use edgechat::gguf::{GgmlType, MemorySource, TensorData, TensorInfo};

/// Largest matmul error of the f32 kernels (see `relative_error`): they decode exactly and
/// accumulate in f32. Measured on lavapipe: at most 3.4e-7.
const F32_TOLERANCE: f64 = 1e-4;
/// The same for the f16 kernels (x rounded to f16, products and 16-value sums in f16): rounding
/// of about 2⁻¹¹ per operation. Measured on lavapipe: at most 7.7e-4 (Q4_K), and 1.3e-3 for one
/// single Q4_1 output that is near 0 (0.2 against a norm of its terms of 5.5).
const F16_TOLERANCE: f64 = 2e-3;
/// SmolLM2's logits with the f16 kernels against the f32 ones, relative to the largest |logit|
/// (30 layers of f16 rounding): measured at most 3.7e-3 on lavapipe over the 4 steps below.
const F16_MODEL_TOLERANCE: f64 = 1e-2;

/// Every type the kernels decode.
const TYPES: [GgmlType; 7] = SUPPORTED_TYPES;

fn matrix(
    b: &WebGpuBackend,
    info: &TensorInfo,
    bytes: &[u8],
) -> <WebGpuBackend as Backend>::Matrix {
    let source = MemorySource::new(bytes.to_vec());
    b.load_matrix(TensorData::new(info, &source)).unwrap()
}

/// Puts f32 rows on the GPU (through an F32 embedding table).
fn upload(
    b: &WebGpuBackend,
    rows: usize,
    cols: usize,
    data: &[f32],
) -> <WebGpuBackend as Backend>::Tensor {
    let info = TensorInfo {
        name: "x".into(),
        dims: vec![cols as u64, rows as u64],
        dtype: GgmlType::F32,
        offset: 0,
        n_bytes: (rows * cols * 4) as u64,
    };
    let bytes: Vec<u8> = data.iter().flat_map(|f| f.to_le_bytes()).collect();
    let source = MemorySource::new(bytes);
    let table = b.load_embedding(TensorData::new(&info, &source)).unwrap();
    b.embed(&table, &(0..rows as u32).collect::<Vec<_>>())
        .unwrap()
}

/// Largest |a − b| relative to the largest |b|, or to the largest norm of the terms that make up a
/// `b` where that is larger (rounding errors scale with it; one output can be near 0 by chance).
fn relative_error(a: &[f32], b: &[f64], term_norms: &[f64]) -> f64 {
    let scale = b
        .iter()
        .chain(term_norms)
        .fold(0f64, |m, v| m.max(v.abs()))
        .max(1e-12);
    common::max_abs_diff(a, b) / scale
}

/// The row length the matmul checks use: 10 sub-blocks of 32, 24 for the 256-value K-quant blocks
/// (not a multiple of the threads per row in either case).
fn row_length(ty: GgmlType) -> usize {
    if matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
        768
    } else {
        320
    }
}

/// x · Wᵀ in f64 for `tokens` rows of x and `rows` rows of W (`cols` long), token-major, with the
/// norm of each output's terms (for `relative_error`).
fn exact_products(
    w: &[f32],
    x: &[f32],
    rows: usize,
    cols: usize,
    tokens: usize,
) -> (Vec<f64>, Vec<f64>) {
    (0..tokens * rows)
        .map(|i| {
            let (t, r) = (i / rows, i % rows);
            let terms = (0..cols).map(|j| w[r * cols + j] as f64 * x[t * cols + j] as f64);
            (
                terms.clone().sum::<f64>(),
                terms.map(|v| v * v).sum::<f64>().sqrt(),
            )
        })
        .unzip()
}

/// What the adapter offers: (shader-f16, subgroups, smallest subgroup).
fn adapter_features() -> (bool, bool, u32) {
    let b = WebGpuBackend::with_options(GpuOptions {
        shader_f16: Some(false),
        subgroups: Some(false),
        ..Default::default()
    })
    .expect("a Vulkan adapter (install mesa-vulkan-drivers: scripts/setup)");
    let a = b.adapter();
    eprintln!("adapter: {a:?}");
    (a.shader_f16, a.subgroups, a.subgroup_sizes.0)
}

/// A backend with the variant forced, after checking it reports the kernels it was asked for.
fn forced(f16: bool, subgroups: bool, threads_per_row: Option<u32>) -> WebGpuBackend {
    let b = WebGpuBackend::with_options(GpuOptions {
        matmul_threads_per_row: threads_per_row,
        shader_f16: Some(f16),
        subgroups: Some(subgroups),
        ..Default::default()
    })
    .unwrap();
    let a = b.adapter();
    let shuffles =
        subgroups && a.matmul_threads_per_row > 1 && a.subgroup_sizes.0 >= a.matmul_threads_per_row;
    let expected = format!(
        "{}{}",
        if f16 { "f16" } else { "f32" },
        if shuffles { "+subgroups" } else { "" }
    );
    assert_eq!(a.kernel_variant, expected, "{a:?}");
    b
}

/// The variants this adapter can run: (f16, subgroups).
fn supported_variants() -> Vec<(bool, bool)> {
    let (has_f16, has_subgroups, _) = adapter_features();
    let mut variants = Vec::new();
    for f16 in [false, true] {
        for subgroups in [false, true] {
            if (!f16 || has_f16) && (!subgroups || has_subgroups) {
                variants.push((f16, subgroups));
            }
        }
    }
    variants
}

/// Matmuls of every type, with row counts that are not multiples of the rows per workgroup,
/// sub-blocks per row that are not multiples of the threads per row, and one token (the decode
/// kernel) or several (the prefill kernel), against the decoded weights in f64. Variants that
/// compile to the same kernels as one already checked (subgroups with one thread per row, or with
/// more threads than the smallest subgroup) are skipped.
#[test]
fn every_variant_matches_the_decoded_weights() {
    let started = Instant::now();
    let mut checked = BTreeSet::new();
    for (f16, subgroups) in supported_variants() {
        for threads in [1, 4, 8, 32] {
            let b = forced(f16, subgroups, Some(threads));
            let variant = b.adapter().kernel_variant.clone();
            if !checked.insert((variant.clone(), threads)) {
                eprintln!("{variant}, {threads} threads per row: the same kernels as before");
                continue;
            }
            let tolerance = if f16 { F16_TOLERANCE } else { F32_TOLERANCE };
            for ty in TYPES {
                let cols = row_length(ty);
                let mut worst = 0f64;
                for rows in [1, 37, 130] {
                    let (info, bytes, w) = encoded(ty, rows, cols, rows as u64 + 7);
                    let m = matrix(&b, &info, &bytes);
                    for tokens in [1, 3, 11, 40] {
                        let xs = values(tokens * cols, 99 + tokens as u64);
                        let x = upload(&b, tokens, cols, &xs);
                        let y = b.to_vec(&b.matmul(&x, &m).unwrap()).unwrap();
                        let (expected, norms) = exact_products(&w, &xs, rows, cols, tokens);
                        let err = relative_error(&y, &expected, &norms);
                        assert!(
                            err < tolerance,
                            "{variant}, {threads} threads per row, {ty:?} {rows}x{cols}, \
                             {tokens} tokens: relative error {err}"
                        );
                        worst = worst.max(err);
                    }
                }
                eprintln!(
                    "{variant}, {threads} threads per row, {ty:?}: relative error {worst:.2e}"
                );
            }
        }
    }
    eprintln!("{} variants in {:.1?}", checked.len(), started.elapsed());
}

/// `x` as the q8 decode kernels take it (kernels/quantize.wgsl): per 32 values d = max |x| / 127
/// and q = round(x · (1 / d)), ties to even; each value replaced by d · q.
fn quantized_activations(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|block| {
            let d = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
            block
                .iter()
                .map(move |&v| d * (v * inverse).round_ties_even().clamp(-127.0, 127.0))
        })
        .collect()
}

/// The q8 activation variant (decode: quantized weights times x quantized to signed bytes, with
/// integer dot products), for every quantized type, one thread per row and 32, row counts that
/// are not multiples of a workgroup's: against the decoded weights times the same quantized x, in
/// f64. Several tokens still go through the f32 prefill kernel, held to the f32 bound.
#[test]
fn q8_activations_match_the_decoded_weights_times_the_quantized_x() {
    for threads in [1, 32] {
        let b = WebGpuBackend::with_options(GpuOptions {
            matmul_threads_per_row: Some(threads),
            shader_f16: Some(false),
            q8_activations: Some(true),
            ..Default::default()
        })
        .unwrap();
        let variant = b.adapter().kernel_variant.clone();
        assert!(variant.ends_with("+q8x"), "{variant}");
        for ty in TYPES {
            let cols = row_length(ty);
            let mut worst = 0f64;
            for rows in [1, 37, 130] {
                let (info, bytes, w) = encoded(ty, rows, cols, rows as u64 + 3);
                let m = matrix(&b, &info, &bytes);
                for tokens in [1, 3] {
                    let xs = values(tokens * cols, 31 + tokens as u64);
                    let x = upload(&b, tokens, cols, &xs);
                    let y = b.to_vec(&b.matmul(&x, &m).unwrap()).unwrap();
                    // F32/F16 weights and prefill keep f32 activations.
                    let quantized = tokens == 1 && !matches!(ty, GgmlType::F32 | GgmlType::F16);
                    let used = if quantized {
                        quantized_activations(&xs)
                    } else {
                        xs.clone()
                    };
                    let (expected, norms) = exact_products(&w, &used, rows, cols, tokens);
                    let err = relative_error(&y, &expected, &norms);
                    assert!(
                        err < F32_TOLERANCE,
                        "{variant}, {threads} threads per row, {ty:?} {rows}x{cols}, \
                         {tokens} tokens: relative error {err}"
                    );
                    worst = worst.max(err);
                }
            }
            eprintln!("{variant}, {threads} threads per row, {ty:?}: relative error {worst:.2e}");
        }
    }
}

/// An adapter without a feature refuses a variant that needs it with a clear error (checked
/// where the adapter lacks one).
#[test]
fn unsupported_variants_are_refused() {
    let (has_f16, has_subgroups, _) = adapter_features();
    for (has, options, what) in [
        (
            has_f16,
            GpuOptions {
                shader_f16: Some(true),
                ..Default::default()
            },
            "shader-f16",
        ),
        (
            has_subgroups,
            GpuOptions {
                subgroups: Some(true),
                ..Default::default()
            },
            "subgroups",
        ),
    ] {
        match WebGpuBackend::with_options(options) {
            Ok(_) => assert!(has, "{what} forced on an adapter without it"),
            Err(e) => {
                assert!(!has, "{what}: {e}");
                assert!(
                    matches!(e, edgechat::Error::Backend(ref m) if m.contains(what)),
                    "{e}"
                );
            }
        }
    }
}

/// SmolLM2 with each variant against the CPU backend: the prompt's logits within 5 % of the largest
/// |logit| (the tolerance of webgpu_backend.rs: the CPU quantizes activations to 8 bits) and the
/// same greedy token, then 3 decode steps (the one-token kernel; the prompt runs the prefill one)
/// fed the CPU's tokens, with the same bound and picks. The subgroup variants run 8 threads per
/// row, so that their reduction is used on CPU adapters too.
#[test]
fn smollm2_matches_the_cpu_backend_with_every_variant() {
    use edgechat::gguf::{FileSource, GgufFile};
    use edgechat::model::{LanguageModel, Llama};
    let path = common::model_path(common::SMOLLM2);
    let source = FileSource::open(&path).unwrap();
    let file = GgufFile::read(&source).unwrap();
    let mut cpu = edgechat::backend::cpu::load_model(&file, &source).unwrap();
    let prompt: Vec<u32> = (0..40u32)
        .map(|i| (i * 7919 + 13) % cpu.config().vocab_size as u32)
        .collect();
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    let mut expected = vec![cpu.forward(&prompt).unwrap()];
    for _ in 0..3 {
        let token = argmax(expected.last().unwrap()) as u32;
        expected.push(cpu.forward(&[token]).unwrap());
    }
    // Every supported variant, then the q8 activation one (32 threads per row).
    let mut backends: Vec<(WebGpuBackend, Option<f64>)> = supported_variants()
        .into_iter()
        .map(|(f16, subgroups)| {
            let bound = if f16 { F16_MODEL_TOLERANCE } else { 1e-4 };
            (forced(f16, subgroups, subgroups.then_some(8)), Some(bound))
        })
        .collect();
    let q8 = WebGpuBackend::with_options(GpuOptions {
        matmul_threads_per_row: Some(32),
        shader_f16: Some(false),
        q8_activations: Some(true),
        ..Default::default()
    })
    .unwrap();
    // Quantized activations move the logits as the CPU's do: held to the CPU bound only.
    backends.push((q8, None));
    // The f32 kernels' logits (the first variant), which the others are also held to.
    let mut f32_logits: Vec<Vec<f32>> = Vec::new();
    for (backend, bound_to_f32) in backends {
        let started = Instant::now();
        let variant = format!(
            "{}, {} threads per row",
            backend.adapter().kernel_variant,
            backend.adapter().matmul_threads_per_row
        );
        let mut gpu = Llama::load(backend, &file, &source).unwrap();
        for (step, cpu_logits) in expected.iter().enumerate() {
            let got = if step == 0 {
                gpu.forward(&prompt).unwrap()
            } else {
                gpu.forward(&[argmax(&expected[step - 1]) as u32]).unwrap()
            };
            let reference: Vec<f64> = cpu_logits.iter().map(|&v| v as f64).collect();
            let err = relative_error(&got, &reference, &[]);
            eprintln!("{variant}: step {step}: logits relative error {err:.4}");
            assert!(err < 0.05, "{variant}, step {step}: relative error {err}");
            assert_eq!(
                argmax(&got),
                argmax(cpu_logits),
                "{variant}, step {step}: greedy token"
            );
            if let Some(f32_got) = f32_logits.get(step) {
                let reference: Vec<f64> = f32_got.iter().map(|&v| v as f64).collect();
                let err = relative_error(&got, &reference, &[]);
                eprintln!("{variant}: step {step}: relative to the f32 kernels {err:.2e}");
                if let Some(bound) = bound_to_f32 {
                    assert!(
                        err < bound,
                        "{variant}, step {step}: {err} from the f32 kernels"
                    );
                }
            } else {
                f32_logits.push(got);
            }
        }
        eprintln!("{variant}: {:.1?}", started.elapsed());
    }
}

/// Matmul speed of each variant (run with `--ignored --nocapture`): a 2048 × 2048 matrix of each
/// type, 8 products per submission, one token (the decode kernel: weight bytes read per second)
/// and 64 (prefill: multiply-adds per second); the best of 3 submissions.
#[test]
#[ignore = "a benchmark"]
fn matmul_speed_of_every_variant() {
    const N: usize = 2048;
    const CHAIN: usize = 8;
    let mut measured = BTreeSet::new();
    for (f16, subgroups) in supported_variants() {
        for threads in [1, 8] {
            let b = forced(f16, subgroups, Some(threads));
            let variant = b.adapter().kernel_variant.clone();
            if !measured.insert((variant.clone(), threads)) {
                continue;
            }
            for ty in TYPES {
                let (info, bytes, _) = encoded(ty, N, N, 3);
                let m = matrix(&b, &info, &bytes);
                let mut line = format!("{variant:>13}, {threads} threads per row, {ty:?}:");
                for tokens in [1, 64] {
                    let x = upload(&b, tokens, N, &values(tokens * N, 4));
                    let mut best = f64::MAX;
                    for _ in 0..3 {
                        let started = Instant::now();
                        let mut y = b.matmul(&x, &m).unwrap();
                        for _ in 1..CHAIN {
                            y = b.matmul(&x, &m).unwrap();
                        }
                        b.to_vec(&y).unwrap();
                        best = best.min(started.elapsed().as_secs_f64() / CHAIN as f64);
                    }
                    line += &if tokens == 1 {
                        format!(
                            "  1 token {:.2} ms ({:.2} GB/s)",
                            best * 1e3,
                            bytes.len() as f64 / best / 1e9
                        )
                    } else {
                        format!(
                            "  {tokens} tokens {:.1} ms ({:.2} GMAC/s)",
                            best * 1e3,
                            (N * N * tokens) as f64 / best / 1e9
                        )
                    };
                }
                eprintln!("{line}");
            }
        }
    }
}

/// More row groups than one dispatch dimension holds (65,535 on most adapters; one row per group
/// at 64 threads per row): the rest run in the grid's z dimension and every row is computed, for
/// a single token and for a prefill.
#[test]
fn a_matrix_with_more_row_groups_than_a_dispatch_dimension_is_computed_whole() {
    let b = forced(false, false, Some(64));
    let (rows, cols) = (70_000, 32);
    let (info, bytes, w) = encoded(GgmlType::Q8_0, rows, cols, 5);
    let m = matrix(&b, &info, &bytes);
    for tokens in [1, 2] {
        let xs = values(tokens * cols, 11);
        let x = upload(&b, tokens, cols, &xs);
        let y = b.to_vec(&b.matmul(&x, &m).unwrap()).unwrap();
        let (expected, norms) = exact_products(&w, &xs, rows, cols, tokens);
        let err = relative_error(&y, &expected, &norms);
        assert!(
            err < F32_TOLERANCE,
            "{tokens} token(s): relative error {err}"
        );
    }
}
