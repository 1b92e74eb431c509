//! One timed prefill and decode run, shared by `edgechat bench` and the browser build, so both
//! measure the same thing: a fixed pseudo-random prompt, then greedy decode steps as generation
//! runs them (each on the token the previous step chose, on the device where the backend can,
//! the next step queued while the host reads this one).

use serde::Serialize;
use web_time::Instant;

use crate::error::Result;
use crate::model::{Forwarded, LanguageModel, Output};
use crate::sampling::DeviceSampling;

/// One run's rates and the GPU work per decoded token.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// Compute dispatches per decoded token (0 on the CPU).
    pub dispatches_per_token: f64,
    /// Command-buffer submissions per decoded token (0 on the CPU).
    pub submissions_per_token: f64,
    /// Host time per decoded token spent starting the step (recording and submitting GPU work;
    /// on the CPU backend, the whole step).
    pub start_ms_per_token: f64,
    /// GPU time per decoded token by kernel, the longest first (only when the backend profiles).
    pub kernel_time_per_token: Vec<KernelShare>,
}

/// One kernel's part of a decoded token's GPU time.
#[derive(Debug, Clone, Serialize)]
pub struct KernelShare {
    pub kernel: String,
    pub calls: f64,
    pub microseconds: f64,
}

/// The `i`-th token of the benchmark's input: a linear congruential walk over the vocabulary.
pub fn bench_token(i: usize, vocab_size: usize) -> u32 {
    ((i as u64).wrapping_mul(2_654_435_761).wrapping_add(12_345) % vocab_size.max(1) as u64) as u32
}

const GREEDY: Output = Output::Sample(DeviceSampling::GREEDY);

/// Empties the cache, prefills `prompt_tokens` tokens, then decodes `gen_tokens` greedy steps
/// (the same tokens in every run, so every run does the same work).
pub async fn bench_run(
    model: &mut dyn LanguageModel,
    prompt_tokens: usize,
    gen_tokens: usize,
) -> Result<BenchRun> {
    let vocab = model.config().vocab_size;
    let prompt: Vec<u32> = (0..prompt_tokens).map(|i| bench_token(i, vocab)).collect();
    model.truncate_cache(0);
    let started = Instant::now();
    model.start_forward(&prompt, GREEDY)?.wait_async().await?;
    let prefill_seconds = started.elapsed().as_secs_f64();

    let before = model.work_counts();
    let started = Instant::now();
    // As generation decodes: each step starts on the token the previous one chose, and where the
    // device samples, the next call is already queued while the host waits for this one.
    let mut starting = 0.0;
    if gen_tokens > 0 {
        let timed = Instant::now();
        let mut pending = model.start_forward(&[bench_token(prompt_tokens, vocab)], GREEDY)?;
        starting += timed.elapsed().as_secs_f64();
        for step in 1..=gen_tokens {
            let timed = Instant::now();
            let queued = if step < gen_tokens {
                model.start_forward_sampled(GREEDY)?
            } else {
                None
            };
            starting += timed.elapsed().as_secs_f64();
            let token = match pending.wait_async().await? {
                Forwarded::Token(token) => token,
                // A host-side backend: choose as generation would.
                Forwarded::Logits(logits) => crate::sampling::argmax(&logits),
            };
            if step == gen_tokens {
                break;
            }
            let timed = Instant::now();
            pending = match queued {
                Some(next) => next,
                None => model.start_forward(&[token], GREEDY)?,
            };
            starting += timed.elapsed().as_secs_f64();
        }
    }
    let decode_seconds = started.elapsed().as_secs_f64();
    let after = model.work_counts();
    model.truncate_cache(0);
    let per_token = |n: u64| n as f64 / gen_tokens.max(1) as f64;
    let mut kernel_time_per_token: Vec<KernelShare> = after
        .kernel_time
        .iter()
        .map(|(kernel, time)| {
            let earlier = before.kernel_time.get(kernel).copied().unwrap_or_default();
            KernelShare {
                kernel: kernel.clone(),
                calls: per_token(time.calls - earlier.calls),
                microseconds: per_token(time.nanos - earlier.nanos) / 1e3,
            }
        })
        .filter(|share| share.calls > 0.0)
        .collect();
    kernel_time_per_token.sort_by(|a, b| b.microseconds.total_cmp(&a.microseconds));
    Ok(BenchRun {
        prefill_tok_s: prompt_tokens as f64 / prefill_seconds,
        decode_tok_s: gen_tokens as f64 / decode_seconds,
        dispatches_per_token: per_token(after.dispatches - before.dispatches),
        submissions_per_token: per_token(after.submissions - before.submissions),
        start_ms_per_token: starting * 1e3 / gen_tokens.max(1) as f64,
        kernel_time_per_token,
    })
}
