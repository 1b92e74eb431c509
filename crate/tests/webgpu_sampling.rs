//! Sampling on the GPU (`Backend::sample` of the WebGPU backend) against the CPU sampler's
//! semantics: greedy against `sampling::argmax`; with temperature and filters, the tokens drawn
//! against the set `Sampler::sample` allows and its probabilities, computed on the host the way it
//! computes them (and that computation checked against `Sampler` itself).
//!
//! Draws use evenly spaced uniforms u = (i + 0.5) / N: the GPU draws in id order, so each token
//! gets the uniforms in one interval of length p·N, and its count is p·N within a uniform or two.
#![cfg(feature = "webgpu")]

mod common;

use std::time::Instant;

use common::quantized::values;
use edgechat::backend::webgpu::WebGpuBackend;
use edgechat::backend::Backend;
use edgechat::gguf::{GgmlType, MemorySource, TensorData, TensorInfo};
use edgechat::sampling::{argmax, DeviceSampling, Sampler, SamplingParams};

type Tensor = <WebGpuBackend as Backend>::Tensor;

fn gpu() -> WebGpuBackend {
    let backend = WebGpuBackend::new()
        .expect("a Vulkan adapter (install mesa-vulkan-drivers: scripts/setup)");
    eprintln!("adapter: {:?}", backend.adapter());
    backend
}

/// Random logits in [-4, 4).
fn random_logits(n: usize, seed: u64) -> Vec<f32> {
    values(n, seed).iter().map(|v| v * 4.0).collect()
}

/// Logits in steps of 0.5 over [-4, 4]: about 60 tokens share each value of 1000, so top-k and
/// top-p cut through groups of ties.
fn tied_logits(n: usize, seed: u64) -> Vec<f32> {
    values(n, seed)
        .iter()
        // + 0.0 turns -0 into 0: the CPU's top-k orders -0 below 0, the GPU ties them.
        .map(|v| (v * 8.0).round() * 0.5 + 0.0)
        .collect()
}

/// An F32 table of `rows × cols` on the GPU (embedding tables and matrices load the same way).
fn table(
    b: &WebGpuBackend,
    rows: usize,
    cols: usize,
    data: &[f32],
) -> <WebGpuBackend as Backend>::Embedding {
    let info = TensorInfo {
        name: "t".into(),
        dims: vec![cols as u64, rows as u64],
        dtype: GgmlType::F32,
        offset: 0,
        n_bytes: (rows * cols * 4) as u64,
    };
    let bytes: Vec<u8> = data.iter().flat_map(|f| f.to_le_bytes()).collect();
    let source = MemorySource::new(bytes);
    b.load_embedding(TensorData::new(&info, &source)).unwrap()
}

/// One row of logits on the GPU. Tables need rows of whole 32-value blocks, so other lengths go
/// through a matmul: x = (1, 0, …, 0) times a matrix whose first column holds the logits (the
/// other terms add exact zeros, and NaN and -inf pass through; only -0 becomes 0).
fn upload(b: &WebGpuBackend, logits: &[f32]) -> Tensor {
    let n = logits.len();
    let row = if n.is_multiple_of(32) {
        b.embed(&table(b, 1, n, logits), &[0]).unwrap()
    } else {
        let mut w = vec![0f32; n * 32];
        for (i, &l) in logits.iter().enumerate() {
            w[i * 32] = l;
        }
        let mut one = vec![0f32; 32];
        one[0] = 1.0;
        let x = b.embed(&table(b, 1, 32, &one), &[0]).unwrap();
        b.matmul(&x, &table(b, n, 32, &w)).unwrap()
    };
    let back = b.to_vec(&row).unwrap();
    assert_eq!(back.len(), n);
    for (i, (&got, &want)) in back.iter().zip(logits).enumerate() {
        assert!(
            got == want || (got.is_nan() && want.is_nan()),
            "upload: logit {i} is {got}, not {want}"
        );
    }
    row
}

fn request(temperature: f32, top_k: u32, top_p: f32, min_p: f32, uniform: f32) -> DeviceSampling {
    DeviceSampling {
        temperature,
        top_k,
        top_p,
        min_p,
        uniform,
    }
}

/// Records one sample per request, then reads the tokens back: the first read submits all the
/// samples at once.
fn sample_all(b: &WebGpuBackend, logits: &Tensor, requests: &[DeviceSampling]) -> Vec<u32> {
    let tokens: Vec<Tensor> = requests
        .iter()
        .map(|r| b.sample(logits, r).unwrap().expect("the GPU samples"))
        .collect();
    tokens
        .iter()
        .map(|t| {
            let v = b.to_vec(t).unwrap();
            assert_eq!(v.len(), 1);
            v[0].to_bits()
        })
        .collect()
}

/// What `Sampler::sample` without penalties can return for `logits`, each token with its
/// probability, computed the way it does (f64 sums, its order of filters, its tie rules); the
/// uniform of `s` is ignored.
fn reference(logits: &[f32], s: &DeviceSampling) -> Vec<(u32, f64)> {
    if s.temperature <= 0.0 || s.top_k == 1 {
        return vec![(argmax(logits), 1.0)];
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return vec![(argmax(logits), 1.0)];
    }
    let mut c: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, if l.is_nan() { f32::NEG_INFINITY } else { l }))
        .collect();
    c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let k = s.top_k as usize;
    if k > 0 && k < c.len() {
        c.truncate(k);
    }
    let normalizer: f64 = c.iter().map(|&(_, l)| ((l - max) as f64).exp()).sum();
    if s.min_p > 0.0 && s.min_p <= 1.0 {
        let threshold = max + s.min_p.ln();
        c.retain(|&(_, l)| l >= threshold);
    }
    if s.top_p < 1.0 {
        let mut cumulative = 0.0;
        let mut keep = c.len();
        for (i, &(_, l)) in c.iter().enumerate() {
            cumulative += ((l - max) as f64).exp() / normalizer;
            if cumulative >= s.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        c.truncate(keep.max(1));
    }
    let inv_temp = 1.0 / s.temperature as f64;
    let weights: Vec<f64> = c
        .iter()
        .map(|&(_, l)| ((l - max) as f64 * inv_temp).exp())
        .collect();
    let sum: f64 = weights.iter().sum();
    c.iter()
        .zip(&weights)
        .map(|(&(t, _), &w)| (t, w / sum))
        .collect()
}

fn probability_of(reference: &[(u32, f64)], token: u32) -> f64 {
    reference
        .iter()
        .find(|&&(t, _)| t == token)
        .map_or(0.0, |&(_, p)| p)
}

/// `reference` against `Sampler::sample` itself: 4000 seeded draws all allowed, and frequencies
/// within 5 standard deviations (+ 1e-3) of the probabilities.
fn check_reference_against_sampler(logits: &[f32], s: &DeviceSampling) {
    let expected = reference(logits, s);
    let mut sampler = Sampler::new(&SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k as usize,
        top_p: s.top_p,
        min_p: s.min_p,
        seed: Some(11),
        ..SamplingParams::greedy()
    });
    let draws = 4000;
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..draws {
        counts[sampler.sample(logits, &[]) as usize] += 1;
    }
    for (token, &count) in counts.iter().enumerate() {
        let p = probability_of(&expected, token as u32);
        let freq = count as f64 / draws as f64;
        let sigma = (p * (1.0 - p) / draws as f64).sqrt();
        assert!(
            (freq - p).abs() <= 5.0 * sigma + 1e-3,
            "{s:?}: the CPU sampler drew token {token} {count} times, the reference gives p = {p}"
        );
    }
}

/// Greedy (temperature ≤ 0, NaN) picks `argmax`: random logits of several sizes, a maximum held
/// twice (the lower id wins), NaN entries (never chosen), all -inf or all NaN (token 0), +inf
/// (its first occurrence, also when sampling) and -0 against +0. Exact.
#[test]
fn greedy_matches_argmax() {
    let b = gpu();
    let started = Instant::now();
    let mut cases: Vec<Vec<f32>> = Vec::new();
    for n in [1usize, 37, 1000, 131072] {
        let logits = random_logits(n, n as u64);
        cases.push(logits.clone());
        if n > 1 {
            // The maximum twice: at a high id first, then a lower one.
            let mut twice = logits.clone();
            twice[n - 1] = 9.0;
            twice[n / 3] = 9.0;
            cases.push(twice);
            // NaN at id 0, at the old argmax, and a run of them.
            let mut nan = logits.clone();
            nan[0] = f32::NAN;
            nan[argmax(&logits) as usize] = f32::NAN;
            for v in nan.iter_mut().skip(n / 2).take(5) {
                *v = f32::NAN;
            }
            cases.push(nan);
        }
        cases.push(vec![f32::NEG_INFINITY; n]);
        cases.push(vec![f32::NAN; n]);
    }
    let mut mixed = vec![f32::NEG_INFINITY; 37];
    mixed[0] = f32::NAN;
    mixed[5] = f32::NAN;
    cases.push(mixed);
    let mut infinite = random_logits(37, 5);
    infinite[20] = f32::INFINITY;
    infinite[30] = f32::INFINITY;
    cases.push(infinite);
    // -0 ties with 0 (32 logits: a table row keeps the sign of zero).
    let mut zeros = vec![-1.0; 32];
    zeros[3] = -0.0;
    zeros[9] = 0.0;
    cases.push(zeros.clone());
    zeros[3] = 0.0;
    zeros[9] = -0.0;
    cases.push(zeros);

    for logits in &cases {
        let row = upload(&b, logits);
        let want = argmax(logits);
        let requests = [
            request(0.0, 0, 1.0, 0.0, 0.0),
            request(-1.0, 40, 0.9, 0.05, 0.7),
            request(f32::NAN, 0, 1.0, 0.0, 0.3),
        ];
        let got = sample_all(&b, &row, &requests);
        for (r, &token) in requests.iter().zip(&got) {
            assert_eq!(token, want, "{r:?} on {} logits", logits.len());
        }
        // Without a finite maximum there is nothing to draw from: argmax, as on the CPU.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            let drawn = sample_all(
                &b,
                &row,
                &[
                    request(1.0, 0, 1.0, 0.0, 0.5),
                    request(0.7, 40, 0.9, 0.05, 0.99),
                ],
            );
            assert_eq!(drawn, [want, want], "sampling {} logits", logits.len());
        }
    }
    eprintln!("{} cases in {:?}", cases.len(), started.elapsed());
}

/// top-k = 1 is greedy at any temperature and uniform (it goes through the kernel's top-k, not a
/// shortcut). Exact.
#[test]
fn top_k_one_is_argmax_at_any_temperature() {
    let b = gpu();
    for logits in [random_logits(1000, 3), tied_logits(1000, 4)] {
        let row = upload(&b, &logits);
        let mut requests = Vec::new();
        for temperature in [0.1, 1.0, 3.0, 100.0] {
            for uniform in [0.0, 0.3, 0.999_999] {
                requests.push(request(temperature, 1, 1.0, 0.0, uniform));
                requests.push(request(temperature, 1, 0.9, 0.05, uniform));
            }
        }
        for (r, token) in requests.iter().zip(sample_all(&b, &row, &requests)) {
            assert_eq!(token, argmax(&logits), "{r:?}");
        }
    }
}

/// (temperature, top_k, top_p, min_p) settings: every filter alone and together, off-values, and
/// ones that keep a single token or cut through ties.
const SETTINGS: [(f32, u32, f32, f32); 9] = [
    (1.0, 0, 1.0, 0.0),    // plain softmax over the whole vocabulary
    (0.8, 40, 0.95, 0.05), // llama.cpp's defaults
    (0.7, 0, 0.9, 0.0),    // top-p alone, over the whole vocabulary
    (1.3, 0, 1.0, 0.1),    // min-p alone
    (0.5, 25, 1.0, 0.0),   // top-k alone
    (2.0, 100, 0.5, 0.02), // all three
    (1.0, 7, 0.0, 0.0),    // top-p 0 keeps the most likely token only
    (1.0, 5000, 0.8, 0.0), // k above the vocabulary: off
    (3.0, 300, 1.0, 1.0),  // min-p 1 keeps the maximum (and its ties) only
];

const TIED_SETTINGS: [(f32, u32, f32, f32); 6] = [
    (1.0, 50, 1.0, 0.0),  // k cuts through a group of equal logits
    (1.0, 0, 0.3, 0.0),   // so does top-p
    (0.6, 100, 0.5, 0.0), // top-p inside top-k
    (1.0, 0, 1.0, 1.0),   // min-p 1: every token at the maximum
    (1.0, 10, 1.0, 0.0),  // k inside the group at the maximum: its 10 lowest ids
    (1.0, 0, 0.05, 0.0),  // top-p inside the group at the maximum
];

/// For random and tied logits over the settings: 2000 evenly spaced uniforms each. Every token
/// drawn is one the CPU allows, and each token's frequency is its CPU probability within
/// 2/2000 + 1e-4 (a token's uniforms form one interval, so its count is off by at most one at
/// each end; 1e-4 covers the f32 sums).
#[test]
fn filtered_draws_match_cpu_probabilities() {
    let b = gpu();
    let draws = 2000;
    let cases = [
        (random_logits(1000, 21), &SETTINGS[..]),
        (tied_logits(1000, 22), &TIED_SETTINGS[..]),
    ];
    for (logits, settings) in cases {
        let row = upload(&b, &logits);
        for &(temperature, top_k, top_p, min_p) in settings {
            let setting = request(temperature, top_k, top_p, min_p, 0.0);
            check_reference_against_sampler(&logits, &setting);
            let expected = reference(&logits, &setting);
            let requests: Vec<DeviceSampling> = (0..draws)
                .map(|i| DeviceSampling {
                    uniform: (i as f32 + 0.5) / draws as f32,
                    ..setting
                })
                .collect();
            let started = Instant::now();
            let tokens = sample_all(&b, &row, &requests);
            let elapsed = started.elapsed();
            let mut counts = vec![0usize; logits.len()];
            for &t in &tokens {
                assert!(
                    probability_of(&expected, t) > 0.0,
                    "{setting:?}: token {t} is not allowed (allowed: {} tokens)",
                    expected.len()
                );
                counts[t as usize] += 1;
            }
            let mut worst = 0f64;
            for (token, &count) in counts.iter().enumerate() {
                let p = probability_of(&expected, token as u32);
                let error = (count as f64 / draws as f64 - p).abs();
                worst = worst.max(error);
                assert!(
                    error <= 2.0 / draws as f64 + 1e-4,
                    "{setting:?}: token {token} drawn {count} times of {draws}, p = {p}"
                );
            }
            eprintln!(
                "{setting:?}: {} tokens allowed, largest frequency error {worst:.2e}, \
                 {draws} draws in {elapsed:?}",
                expected.len()
            );
        }
    }
}

/// A Ministral-sized vocabulary (131072): draws with the default filters and with top-p alone
/// (whose set spans much of the vocabulary) are all allowed, and the uniforms 0 and 0.999999 take
/// the first and last survivor by id.
#[test]
fn large_vocabulary_draws_stay_in_the_allowed_set() {
    let b = gpu();
    let logits: Vec<f32> = values(131072, 77).iter().map(|v| v * 6.0).collect();
    let row = upload(&b, &logits);
    for (temperature, top_k, top_p, min_p) in [(0.8, 40, 0.95, 0.05), (1.0, 0, 0.5, 0.0)] {
        let setting = request(temperature, top_k, top_p, min_p, 0.0);
        let expected = reference(&logits, &setting);
        let mut uniforms: Vec<f32> = (0..32).map(|i| (i as f32 + 0.5) / 32.0).collect();
        uniforms.extend([0.0, 0.999_999]);
        let requests: Vec<DeviceSampling> = uniforms
            .iter()
            .map(|&uniform| DeviceSampling { uniform, ..setting })
            .collect();
        let started = Instant::now();
        let tokens = sample_all(&b, &row, &requests);
        eprintln!(
            "{setting:?}: {} tokens allowed, {} draws in {:?}",
            expected.len(),
            requests.len(),
            started.elapsed()
        );
        for &t in &tokens {
            assert!(probability_of(&expected, t) > 0.0, "{setting:?}: token {t}");
        }
        let first = expected.iter().map(|&(t, _)| t).min().unwrap();
        let last = expected.iter().map(|&(t, _)| t).max().unwrap();
        assert_eq!(tokens[32], first, "{setting:?}: uniform 0");
        // The last survivor's probability is far above 1e-6 here.
        assert!(probability_of(&expected, last) > 1e-4);
        assert_eq!(tokens[33], last, "{setting:?}: uniform 0.999999");
    }
}

/// The same logits and uniform give the same token, in one submission or another; uniform 0
/// takes the first survivor by id and 0.999999 the last (where the last has probability above
/// 1e-4, so the draw cannot fall short of it); a seeded `Sampler`'s device requests give the same
/// tokens twice.
#[test]
fn draws_are_deterministic_and_ordered_by_id() {
    let b = gpu();
    let logits = random_logits(1000, 31);
    let row = upload(&b, &logits);
    for &(temperature, top_k, top_p, min_p) in &SETTINGS {
        let setting = request(temperature, top_k, top_p, min_p, 0.0);
        let expected = reference(&logits, &setting);
        let uniforms = [0.0, 0.25, 0.5, 0.75, 0.999_999];
        let requests: Vec<DeviceSampling> = uniforms
            .iter()
            .map(|&uniform| DeviceSampling { uniform, ..setting })
            .collect();
        let once = sample_all(&b, &row, &requests);
        let again = sample_all(&b, &row, &requests);
        assert_eq!(once, again, "{setting:?}");
        let first = expected.iter().map(|&(t, _)| t).min().unwrap();
        assert_eq!(once[0], first, "{setting:?}: uniform 0");
        let last = expected.iter().map(|&(t, _)| t).max().unwrap();
        if probability_of(&expected, last) > 1e-4 {
            assert_eq!(once[4], last, "{setting:?}: uniform 0.999999");
        }
    }

    // A request stream from a seeded sampler, twice.
    let params = SamplingParams {
        seed: Some(1234),
        ..SamplingParams::default()
    };
    let stream = |sampler: &mut Sampler| -> Vec<DeviceSampling> {
        (0..50)
            .map(|_| {
                let draw = sampler.draw();
                sampler.device_request(&draw).unwrap()
            })
            .collect()
    };
    let first = stream(&mut Sampler::new(&params));
    let second = stream(&mut Sampler::new(&params));
    assert_eq!(first, second);
    let tokens = sample_all(&b, &row, &first);
    assert_eq!(tokens, sample_all(&b, &row, &second));
    let expected = reference(&logits, &first[0]);
    for &t in &tokens {
        assert!(probability_of(&expected, t) > 0.0, "token {t}");
    }
}

/// Logits with more than one row are an error, not a guess.
#[test]
fn more_than_one_row_is_an_error() {
    let b = gpu();
    let rows = b.embed(&table(&b, 2, 32, &values(64, 1)), &[0, 1]).unwrap();
    assert!(b.sample(&rows, &request(1.0, 0, 1.0, 0.0, 0.5)).is_err());
}
