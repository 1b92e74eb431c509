//! The WebGPU backend natively (Vulkan; Mesa's lavapipe on CI machines): each kernel against an
//! exact reference, then whole models against the CPU backend.
#![cfg(feature = "webgpu")]

mod common;

use common::quantized::{encoded, values};
use edgechat::backend::webgpu::{GpuOptions, WebGpuBackend, SUPPORTED_TYPES};
use edgechat::backend::{AttentionParams, Backend};
use edgechat::gguf::{GgmlType, MemorySource, TensorData, TensorInfo};

/// A matrix (or table) from bytes in memory.
fn matrix(
    b: &WebGpuBackend,
    info: &TensorInfo,
    bytes: &[u8],
) -> edgechat::Result<<WebGpuBackend as Backend>::Matrix> {
    let source = MemorySource::new(bytes.to_vec());
    b.load_matrix(TensorData::new(info, &source))
}

fn gpu() -> WebGpuBackend {
    let backend = WebGpuBackend::new()
        .expect("a Vulkan adapter (install mesa-vulkan-drivers: scripts/setup)");
    eprintln!("adapter: {:?}", backend.adapter());
    backend
}

/// Largest |a − b| relative to the largest |b| (infinite with a NaN).
fn relative_error(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    common::max_abs_diff(a, b) / scale
}

/// Every type the kernels decode.
const TYPES: [GgmlType; 7] = SUPPORTED_TYPES;

/// Matmul (alone, adding a residual, and with SwiGLU) and embedding lookup of every type, with row counts that are not multiples of the
/// kernel's rows per workgroup and several tokens, against the decoded weights in f64.
/// Tolerance 1e-4 of the largest output: the kernels decode exactly and accumulate in f32.
#[test]
fn matmul_and_embed_match_the_decoded_weights_for_every_type() {
    // Both matmul layouts (1 thread per row on CPU adapters such as lavapipe, 8 on GPUs), so
    // both are checked wherever the test runs.
    for threads_per_row in [1, 8] {
        // The f32 kernels (the f16 ones have their own tolerance in webgpu_variants.rs).
        let options = GpuOptions {
            matmul_threads_per_row: Some(threads_per_row),
            shader_f16: Some(false),
            ..Default::default()
        };
        check_matmul_and_embed(&WebGpuBackend::with_options(options).unwrap());
    }
}

fn check_matmul_and_embed(b: &WebGpuBackend) {
    for ty in TYPES {
        let cols = if matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
            512
        } else {
            96
        };
        for rows in [1, 37, 130] {
            let (info, bytes, w) = encoded(ty, rows, cols, rows as u64);
            let m = matrix(b, &info, &bytes).unwrap();
            for tokens in [1, 3, 11] {
                let xs = values(tokens * cols, 99);
                let x = upload(b, tokens, cols, &xs);
                let y = b.to_vec(&b.matmul(&x, &m).unwrap()).unwrap();
                let expected: Vec<f64> = (0..tokens)
                    .flat_map(|t| {
                        let (w, xs) = (&w, &xs);
                        (0..rows).map(move |r| {
                            (0..cols)
                                .map(|j| w[r * cols + j] as f64 * xs[t * cols + j] as f64)
                                .sum()
                        })
                    })
                    .collect();
                let err = relative_error(&y, &expected);
                assert!(
                    err < 1e-4,
                    "{ty:?} {rows}x{cols}, {tokens} tokens: relative error {err}"
                );
                // With the residual added as the product is written: exactly y + r.
                // (Any tokens × rows tensor will do as the residual: another product.)
                let r = b
                    .matmul(&upload(b, tokens, cols, &values(tokens * cols, 7)), &m)
                    .unwrap();
                let rs = b.to_vec(&r).unwrap();
                let with_residual = b.to_vec(&b.matmul_add(&x, &m, &r).unwrap()).unwrap();
                let sums: Vec<f32> = y.iter().zip(&rs).map(|(y, r)| y + r).collect();
                assert_eq!(with_residual, sums, "{ty:?} {rows}x{cols} plus residual");
                // SwiGLU applied as the gate product is written: exactly the separate kernels.
                let (gate, up) = (b.matmul(&x, &m).unwrap(), b.matmul(&x, &m).unwrap());
                let separate = b.to_vec(&b.swiglu(&gate, &up).unwrap()).unwrap();
                let fused = b.to_vec(&b.swiglu_matmul(&x, &m, &m).unwrap()).unwrap();
                assert_eq!(fused, separate, "{ty:?} {rows}x{cols} swiglu");
            }
            let table = matrix(b, &info, &bytes).unwrap();
            let ids: Vec<u32> = vec![(rows - 1) as u32, 0, (rows / 2) as u32];
            let got = b.to_vec(&b.embed(&table, &ids).unwrap()).unwrap();
            let expected: Vec<f64> = ids
                .iter()
                .flat_map(|&r| {
                    w[r as usize * cols..(r as usize + 1) * cols]
                        .iter()
                        .map(|&v| v as f64)
                })
                .collect();
            assert!(relative_error(&got, &expected) < 1e-6, "{ty:?} embedding");
        }
    }
}

fn input_info(rows: usize, cols: usize) -> TensorInfo {
    TensorInfo {
        name: "x".into(),
        dims: vec![cols as u64, rows as u64],
        dtype: GgmlType::F32,
        offset: 0,
        n_bytes: (rows * cols * 4) as u64,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

/// Puts f32 rows on the GPU (through an F32 embedding table).
fn upload(
    b: &WebGpuBackend,
    rows: usize,
    cols: usize,
    data: &[f32],
) -> <WebGpuBackend as Backend>::Tensor {
    let table = matrix(b, &input_info(rows, cols), &f32_bytes(data)).unwrap();
    b.embed(&table, &(0..rows as u32).collect::<Vec<_>>())
        .unwrap()
}

#[test]
fn norm_rope_swiglu_add_and_last_row_match_scalar_references() {
    let b = gpu();
    let (rows, cols) = (3, 160);
    let x = values(rows * cols, 1);
    let g = values(rows * cols, 2);
    let xt = upload(&b, rows, cols, &x);
    let gt = upload(&b, rows, cols, &g);
    let scale_info = TensorInfo {
        name: "s".into(),
        dims: vec![cols as u64],
        dtype: GgmlType::F32,
        offset: 0,
        n_bytes: (cols * 4) as u64,
    };
    let scale = values(cols, 3);
    let s = b.load_vector(&scale_info, &f32_bytes(&scale)).unwrap();
    let normed = b.to_vec(&b.rms_norm(&xt, &s, 1e-5).unwrap()).unwrap();
    let expected: Vec<f64> = (0..rows)
        .flat_map(|r| {
            let row = &x[r * cols..(r + 1) * cols];
            let inv = 1.0
                / (row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64 + 1e-5)
                    .sqrt();
            let scale = &scale;
            row.iter()
                .enumerate()
                .map(move |(j, &v)| v as f64 * inv * scale[j] as f64)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(relative_error(&normed, &expected) < 1e-5);

    let sum = b.to_vec(&b.add(&xt, &gt).unwrap()).unwrap();
    let expected: Vec<f64> = x
        .iter()
        .zip(&g)
        .map(|(&a, &c)| a as f64 + c as f64)
        .collect();
    assert!(relative_error(&sum, &expected) < 1e-6);
    let gated = b.to_vec(&b.swiglu(&xt, &gt).unwrap()).unwrap();
    let expected: Vec<f64> = x
        .iter()
        .zip(&g)
        .map(|(&a, &c)| a as f64 / (1.0 + (-a as f64).exp()) * c as f64)
        .collect();
    assert!(relative_error(&gated, &expected) < 1e-5);
    let last = b.to_vec(&b.last_row(&xt).unwrap()).unwrap();
    assert_eq!(last, x[(rows - 1) * cols..]);

    // RoPE: 5 heads of 32, positions 7, 8, 9.
    let (heads, head_dim) = (5, 32);
    let inv_freq: Vec<f32> = (0..head_dim / 2)
        .map(|i| 10000f32.powf(-2.0 * i as f32 / head_dim as f32))
        .collect();
    let params = AttentionParams {
        head_count: heads,
        head_count_kv: heads,
        head_dim,
        start_pos: 7,
        sliding_window: None,
    };
    let positions = b.positions(&params, rows, &inv_freq).unwrap();
    let rotated = b.to_vec(&b.rope(&xt, heads, &positions).unwrap()).unwrap();
    let mut expected = vec![0f64; rows * cols];
    for t in 0..rows {
        for h in 0..heads {
            for (i, &freq) in inv_freq.iter().enumerate() {
                let at = t * cols + h * head_dim + 2 * i;
                let angle = (7 + t) as f64 * freq as f64;
                let (a, c) = (x[at] as f64, x[at + 1] as f64);
                expected[at] = a * angle.cos() - c * angle.sin();
                expected[at + 1] = a * angle.sin() + c * angle.cos();
            }
        }
    }
    assert!(relative_error(&rotated, &expected) < 1e-5);
}

/// Attention over a growing cache (prefill of 70 keys, more than one 64-key chunk, decode steps,
/// a 300-token prefill, then decode steps over 372+ keys, which split the keys into ranges
/// merged afterwards), GQA 4:2, with and without a sliding window (200: one split range less),
/// against softmax in f64.
#[test]
fn attention_matches_softmax_over_the_cache() {
    let b = gpu();
    let (heads, kv_heads, head_dim) = (4, 2, 64);
    for window in [None, Some(50), Some(200)] {
        let mut cache = b.new_kv_cache(kv_heads, head_dim, 512).unwrap();
        let (mut all_k, mut all_v) = (Vec::new(), Vec::new());
        let mut start = 0;
        for (step, rows) in [70usize, 1, 1, 300, 1, 1].into_iter().enumerate() {
            let q = values(rows * heads * head_dim, 10 + step as u64);
            let k = values(rows * kv_heads * head_dim, 20 + step as u64);
            let v = values(rows * kv_heads * head_dim, 30 + step as u64);
            all_k.extend_from_slice(&k);
            all_v.extend_from_slice(&v);
            let params = AttentionParams {
                head_count: heads,
                head_count_kv: kv_heads,
                head_dim,
                start_pos: start,
                sliding_window: window,
            };
            let positions = b
                .positions(&params, rows, &vec![1.0; head_dim / 2])
                .unwrap();
            let (qt, kt, vt) = (
                upload(&b, rows, heads * head_dim, &q),
                upload(&b, rows, kv_heads * head_dim, &k),
                upload(&b, rows, kv_heads * head_dim, &v),
            );
            let y = b
                .to_vec(
                    &b.attention(&qt, &kt, &vt, &mut cache, &params, &positions)
                        .unwrap(),
                )
                .unwrap();
            let mut expected = vec![0f64; rows * heads * head_dim];
            let kv_width = kv_heads * head_dim;
            for t in 0..rows {
                let pos = start + t;
                let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                for h in 0..heads {
                    let kvh = h / (heads / kv_heads);
                    let qv = &q[t * heads * head_dim + h * head_dim..][..head_dim];
                    let scores: Vec<f64> = (first..=pos)
                        .map(|p| {
                            (0..head_dim)
                                .map(|d| {
                                    qv[d] as f64 * all_k[p * kv_width + kvh * head_dim + d] as f64
                                })
                                .sum::<f64>()
                                / (head_dim as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for d in 0..head_dim {
                        expected[t * heads * head_dim + h * head_dim + d] = (first..=pos)
                            .zip(&weights)
                            .map(|(p, w)| w * all_v[p * kv_width + kvh * head_dim + d] as f64)
                            .sum::<f64>()
                            / total;
                    }
                }
            }
            let err = relative_error(&y, &expected);
            assert!(
                err < 1e-4,
                "window {window:?}, step {step}: relative error {err}"
            );
            start += rows;
        }
        assert_eq!(b.kv_cache_len(&cache), start);
    }
}

/// Whole models on the GPU against the CPU backend on the same file: the prompt's logits agree
/// within 5 % of the largest |logit| (the CPU backend quantizes activations to 8 bits for its
/// quantized matmuls, the GPU computes them in f32: the gap is the CPU's rounding). Then 32 greedy
/// steps, both backends fed the CPU's tokens: SmolLM2 (real weights) picks the same token at every
/// step; the random-weight tiny Mistral has near-flat logits, so a different pick is allowed only
/// where the CPU's own top two are within 1 % of the largest |logit| of each other.
#[test]
fn whole_models_match_the_cpu_backend() {
    use edgechat::gguf::{FileSource, GgufFile};
    for (name, allow_near_ties) in [(common::SMOLLM2, false), (common::TINY_MISTRAL, true)] {
        let path = common::model_path(name);
        let source = FileSource::open(&path).unwrap();
        let file = GgufFile::read(&source).unwrap();
        let mut cpu = edgechat::backend::cpu::load_model(&file, &source).unwrap();
        let mut gpu = edgechat::backend::webgpu::load_model(&file, &source).unwrap();
        assert_eq!(gpu.backend_name(), "webgpu");
        let prompt: Vec<u32> = (0..40u32)
            .map(|i| (i * 7919 + 13) % cpu.config().vocab_size as u32)
            .collect();
        let mut expected = cpu.forward(&prompt).unwrap();
        let mut got = gpu.forward(&prompt).unwrap();
        let expected64: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
        let err = relative_error(&got, &expected64);
        eprintln!("{name}: prompt logits relative error {err:.4}");
        assert!(err < 0.05, "{name}: relative error {err}");
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        };
        let mut differences = 0;
        for step in 0..32 {
            let (cpu_pick, gpu_pick) = (argmax(&expected), argmax(&got));
            if cpu_pick != gpu_pick {
                let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
                let gap = (expected[cpu_pick] - expected[gpu_pick]) / scale;
                assert!(
                    allow_near_ties && gap < 0.01,
                    "{name}, step {step}: GPU picked {gpu_pick}, CPU {cpu_pick} (gap {gap})"
                );
                differences += 1;
            }
            let token = cpu_pick as u32;
            expected = cpu.forward(&[token]).unwrap();
            got = gpu.forward(&[token]).unwrap();
        }
        eprintln!("{name}: {differences} of 32 greedy picks differ (near ties)");
        assert_eq!(gpu.cache_len(), prompt.len() + 32);
    }
}

/// With a (forced) small binding limit, matrices are split by rows across buffers and still give
/// the same products; a row larger than the limit and a KV cache that cannot hold one position
/// get the typed `GpuLimit` error; the cache's context shrinks to what fits.
#[test]
fn adapter_limits_split_matrices_or_give_a_typed_error() {
    let small = WebGpuBackend::with_options(GpuOptions {
        max_binding_bytes: Some(4096),
        ..Default::default()
    })
    .unwrap();
    let (info, bytes, w) = encoded(GgmlType::Q8_0, 130, 96, 5); // 102 bytes per row: 4 buffers
    let m = matrix(&small, &info, &bytes).unwrap();
    // One token (the decode kernel) and 40 (the prefill kernel's tiles: two of tokens, and rows
    // in each buffer's own).
    for tokens in [1, 40] {
        let xs = values(tokens * 96, 6);
        let y = small
            .to_vec(&small.matmul(&upload(&small, tokens, 96, &xs), &m).unwrap())
            .unwrap();
        let expected: Vec<f64> = (0..tokens * 130)
            .map(|i| {
                let (t, r) = (i / 130, i % 130);
                (0..96)
                    .map(|j| w[r * 96 + j] as f64 * xs[t * 96 + j] as f64)
                    .sum()
            })
            .collect();
        let err = relative_error(&y, &expected);
        assert!(err < 1e-4, "{tokens} token(s): relative error {err}");
    }

    let (info, bytes, _) = encoded(GgmlType::F32, 2, 2048, 7); // 8 KiB rows
    match matrix(&small, &info, &bytes) {
        Err(edgechat::Error::GpuLimit { needed, limit, .. }) => {
            assert_eq!((needed, limit), (8192, 4092))
        }
        other => panic!("expected GpuLimit, got {:?}", other.err()),
    }
    assert!(matches!(
        small.new_kv_cache(16, 128, 4096),
        Err(edgechat::Error::GpuLimit { .. })
    ));
    // 2 heads × 64 × 4 bytes = 512 bytes per position: 8 positions fit in 4 KiB.
    let mut cache = small.new_kv_cache(2, 64, 4096).unwrap();
    let params = AttentionParams {
        head_count: 2,
        head_count_kv: 2,
        head_dim: 64,
        start_pos: 0,
        sliding_window: None,
    };
    let positions = small.positions(&params, 9, &[1.0; 32]).unwrap();
    let t = upload(&small, 9, 128, &values(9 * 128, 8));
    match small.attention(&t, &t, &t, &mut cache, &params, &positions) {
        Err(edgechat::Error::ContextLength {
            needed: 9,
            limit: 8,
        }) => {}
        other => panic!("expected ContextLength 9 > 8, got {:?}", other.err()),
    }
}

/// Uploads in pieces smaller than a buffer and not a whole number of rows (1000 bytes of 102-byte
/// Q8_0 rows, over buffers split at 4 KiB) give the same products.
#[test]
fn piecewise_uploads_give_the_same_matrix() {
    let options = GpuOptions {
        max_binding_bytes: Some(4096),
        upload_piece_bytes: Some(1000),
        ..Default::default()
    };
    let b = WebGpuBackend::with_options(options).unwrap();
    let (info, bytes, w) = encoded(GgmlType::Q8_0, 130, 96, 9);
    let m = matrix(&b, &info, &bytes).unwrap();
    let xs = values(2 * 96, 10);
    let y = b
        .to_vec(&b.matmul(&upload(&b, 2, 96, &xs), &m).unwrap())
        .unwrap();
    let expected: Vec<f64> = (0..2)
        .flat_map(|t| {
            let (w, xs) = (&w, &xs);
            (0..130).map(move |r| {
                (0..96)
                    .map(|j| w[r * 96 + j] as f64 * xs[t * 96 + j] as f64)
                    .sum()
            })
        })
        .collect();
    assert!(relative_error(&y, &expected) < 1e-4);
}

/// A model whose weight rows or KV cache do not fit the adapter's bindings is refused from its
/// header with the typed `GpuLimit` error (the browser package then picks the wasm backend), and
/// nothing is uploaded.
#[test]
fn a_model_that_does_not_fit_the_adapter_is_refused_before_upload() {
    use edgechat::backend::webgpu::load_model_on;
    use edgechat::gguf::{FileSource, GgufFile};
    let path = common::model_path(common::TINY_MISTRAL);
    let source = FileSource::open(&path).unwrap();
    let file = GgufFile::read(&source).unwrap();
    // tiny-mistral's KV rows are 2 heads × 128 × 4 bytes: 4096 positions need 4 MiB per layer.
    for (limit, what) in [
        (1024, "a row of tensor"),
        (2 << 20, "the keys of one layer"),
    ] {
        let small = WebGpuBackend::with_options(GpuOptions {
            max_binding_bytes: Some(limit),
            ..Default::default()
        })
        .unwrap();
        match load_model_on(small, &file, &source) {
            Err(edgechat::Error::GpuLimit {
                what: got,
                limit: l,
                ..
            }) => {
                assert!(got.starts_with(what), "{got}");
                assert!(l <= limit);
            }
            Err(e) => panic!("expected GpuLimit, got {e}"),
            Ok(_) => panic!("expected GpuLimit with a {limit}-byte binding limit"),
        }
    }
}

/// With the profile on, every dispatch of a forward call is timed under its kernel's label: the
/// calls add up to the dispatches, the tiny model's matrices show up by type, and the time is
/// real (more than zero) and bounded by the call's wall time.
#[test]
fn the_kernel_profile_times_every_dispatch_under_its_kernel() {
    use edgechat::backend::webgpu::load_model_on;
    use edgechat::gguf::{FileSource, GgufFile};
    let path = common::model_path(common::TINY_MISTRAL);
    let source = FileSource::open(&path).unwrap();
    let file = GgufFile::read(&source).unwrap();
    let backend = WebGpuBackend::with_options(GpuOptions {
        profile: Some(true),
        ..Default::default()
    })
    .expect("lavapipe has timestamp queries");
    let mut model = load_model_on(backend, &file, &source).unwrap();
    let before = model.work_counts();
    let started = std::time::Instant::now();
    model.forward(&[1, 2, 3, 4, 5]).unwrap();
    let wall = started.elapsed();
    let after = model.work_counts();
    let timed: u64 = after.kernel_time.values().map(|k| k.calls).sum::<u64>()
        - before.kernel_time.values().map(|k| k.calls).sum::<u64>();
    assert_eq!(timed, after.dispatches - before.dispatches);
    // Prefill runs the tiled matmul on GPUs, the decode one token by token on CPU implementations.
    assert!(
        ["matmul_tiled_q4_k", "matmul_q4_k"]
            .iter()
            .any(|k| after.kernel_time.contains_key(*k)),
        "a Q4_K matmul in {:?}",
        after.kernel_time.keys()
    );
    for kernel in ["attention", "rms_norm", "rope"] {
        assert!(
            after.kernel_time.contains_key(kernel),
            "{kernel} in {:?}",
            after.kernel_time.keys()
        );
    }
    let nanos: u64 = after.kernel_time.values().map(|k| k.nanos).sum();
    assert!(
        nanos > 0 && nanos < wall.as_nanos() as u64,
        "{nanos} ns of GPU time in {wall:?}"
    );
}
