//! Generation on the WebGPU backend (lavapipe natively): tokens chosen on the GPU, the next call
//! started on the GPU-held token before the host reads it, one submission per token, and bind
//! groups reused while decoding. The reference is the same backend's logits with the choice made
//! on the host, so the checks are exact (no CPU-vs-GPU rounding involved).
#![cfg(feature = "webgpu")]

mod common;

use edgechat::backend::webgpu::{GpuOptions, WebGpuBackend};
use edgechat::backend::BackendKind;
use edgechat::gguf::{FileSource, GgufFile};
use edgechat::model::{Forwarded, LanguageModel, Llama, Output};
use edgechat::sampling::{argmax, Sampler, SamplingParams};
use edgechat::session::{CancelToken, Engine, FinishReason};

fn smollm2_on_gpu() -> Engine {
    let path = common::model_path(common::SMOLLM2);
    let source = FileSource::open(&path).expect("scripts/models fetches SmolLM2");
    let file = GgufFile::read(&source).unwrap();
    Engine::from_gguf_on(BackendKind::WebGpu, &file, &source)
        .expect("a Vulkan adapter (install mesa-vulkan-drivers: scripts/setup)")
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ..SamplingParams::greedy()
    }
}

/// Greedy tokens by hand: logits read back every step and the argmax taken on the host.
fn host_greedy(model: &mut dyn LanguageModel, prompt: &[u32], steps: usize) -> Vec<u32> {
    model.truncate_cache(0);
    let mut tokens = Vec::new();
    let mut input = prompt.to_vec();
    for _ in 0..steps {
        let token = argmax(&model.forward(&input).unwrap());
        tokens.push(token);
        input = vec![token];
    }
    model.truncate_cache(0);
    tokens
}

#[test]
fn gpu_chosen_pipelined_tokens_equal_host_chosen_ones() {
    let mut engine = smollm2_on_gpu();
    let prompt = engine.encode_prompt("The capital of France is").unwrap();
    let expected = host_greedy(engine.model_mut(), &prompt, 32);

    let completion = engine
        .generate(&prompt, &greedy(32), &CancelToken::new(), &mut |_| {})
        .unwrap();
    // Up to the first end-of-sequence token, which ends the completion (and is not part of it).
    let eos = expected.iter().position(|&t| engine.tokenizer().is_eos(t));
    let expected_tokens = &expected[..eos.unwrap_or(expected.len())];
    assert_eq!(completion.tokens, expected_tokens);
    let (reason, fed) = match eos {
        Some(n) => (FinishReason::Stop, n),
        None => (FinishReason::Length, 31),
    };
    assert_eq!(completion.finish_reason, reason);
    // Calls started ahead on the last token were dropped: the cache holds the prompt and the
    // tokens fed back, and its bookkeeping agrees.
    assert_eq!(engine.model().cache_len(), prompt.len() + fed);
    assert_eq!(engine.cached_tokens().len(), prompt.len() + fed);
    eprintln!(
        "{} tokens identical ({reason:?}): {:?}",
        completion.tokens.len(),
        completion.text
    );
}

#[test]
fn a_stop_string_drops_the_call_started_ahead_and_the_next_turn_reuses_the_cache() {
    let mut engine = smollm2_on_gpu();
    let prompt = engine.encode_prompt("The capital of France is").unwrap();
    let full = engine
        .generate(&prompt, &greedy(16), &CancelToken::new(), &mut |_| {})
        .unwrap();
    // Stop inside the answer: the token that completes the stop string had a call started on it.
    let stop = full.text.split_whitespace().nth(1).unwrap().to_string();
    let params = SamplingParams {
        stop: vec![stop.clone()],
        ..greedy(16)
    };
    let stopped = engine
        .generate(&prompt, &params, &CancelToken::new(), &mut |_| {})
        .unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::Stop, "stop {stop:?}");
    assert!(!stopped.text.contains(&stop));
    // The bookkeeping matches the model's cache: the extra position is gone.
    assert_eq!(engine.model().cache_len(), engine.cached_tokens().len());

    // Continuing from the cache gives what a fresh engine computes from scratch.
    let mut longer = prompt.clone();
    longer.extend_from_slice(&stopped.tokens);
    let continued = engine
        .generate(&longer, &greedy(8), &CancelToken::new(), &mut |_| {})
        .unwrap();
    assert!(continued.stats.reused_tokens > prompt.len());
    let mut fresh = smollm2_on_gpu();
    let expected = fresh
        .generate(&longer, &greedy(8), &CancelToken::new(), &mut |_| {})
        .unwrap();
    assert_eq!(continued.tokens, expected.tokens);
}

/// With the adapter's kernels, and with quantized activations (one more kernel per matmul input).
#[test]
fn decoding_is_one_submission_per_token_and_makes_no_bind_groups() {
    let mut engine = smollm2_on_gpu();
    one_submission_and_no_bind_groups_per_token(engine.model_mut());
    let path = common::model_path(common::SMOLLM2);
    let source = FileSource::open(&path).unwrap();
    let file = GgufFile::read(&source).unwrap();
    let q8 = WebGpuBackend::with_options(GpuOptions {
        matmul_threads_per_row: Some(32),
        q8_activations: Some(true),
        ..Default::default()
    })
    .unwrap();
    one_submission_and_no_bind_groups_per_token(&mut Llama::load(q8, &file, &source).unwrap());
}

fn one_submission_and_no_bind_groups_per_token(model: &mut dyn LanguageModel) {
    let prompt: Vec<u32> = (0..20).map(|i| 100 + i * 7).collect();
    let request = Sampler::new(&SamplingParams::greedy());
    let output = Output::Sample(request.device_request(&request_draw()).unwrap());
    let pending = model.start_forward(&prompt, output).unwrap();
    let mut tokens = vec![token_of(pending.wait().unwrap())];
    // Warm-up steps: the first decode step binds decode-shaped buffers for the first time.
    for _ in 0..2 {
        let pending = model.start_forward_sampled(output).unwrap().unwrap();
        tokens.push(token_of(pending.wait().unwrap()));
    }
    let before = model.work_counts();
    let steps = 12;
    for _ in 0..steps {
        // The pipelined way: start the next call on the device-held token, then read this one.
        let pending = model.start_forward_sampled(output).unwrap().unwrap();
        tokens.push(token_of(pending.wait().unwrap()));
    }
    let after = model.work_counts();
    assert_eq!(after.submissions - before.submissions, steps);
    assert_eq!(
        after.bind_groups_made, before.bind_groups_made,
        "bind groups made while decoding"
    );
    let dispatches = (after.dispatches - before.dispatches) / steps;
    eprintln!("per decoded token: {dispatches} dispatches, 1 submission, 0 bind groups made");

    // The chain of device-held tokens is the greedy sequence.
    let expected = host_greedy(model, &prompt, tokens.len());
    assert_eq!(tokens, expected);
}

#[test]
fn seeded_sampling_on_the_gpu_picks_what_the_host_picks_from_the_same_logits() {
    let mut engine = smollm2_on_gpu();
    let prompt = engine.encode_prompt("Once upon a time").unwrap();
    let model = engine.model_mut();
    model.truncate_cache(0);
    let logits = model.forward(&prompt).unwrap();
    // Flat enough that 40 draws land on several tokens.
    let params = SamplingParams {
        temperature: 2.0,
        top_k: 40,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(7),
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(&params);
    let draws = 40;
    let mut agree = 0;
    let mut distinct = std::collections::HashSet::new();
    for _ in 0..draws {
        let draw = sampler.draw();
        let host = sampler.sample_drawn(&logits, &prompt, &draw);
        // The same position again, the token chosen on the GPU this time.
        model.truncate_cache(0);
        let request = sampler.device_request(&draw).unwrap();
        let gpu = token_of(
            model
                .start_forward(&prompt, Output::Sample(request))
                .unwrap()
                .wait()
                .unwrap(),
        );
        agree += usize::from(gpu == host);
        distinct.insert(gpu);
    }
    // f32 on the GPU, f64 on the host: a draw within rounding of the boundary between two
    // tokens may land on either; 40 draws spread over [0, 1) rarely come that close.
    assert!(agree >= draws - 1, "{agree}/{draws} draws agree");
    assert!(
        distinct.len() > 1,
        "a temperature of 2 should vary the token"
    );
}

fn request_draw() -> edgechat::sampling::Draw {
    edgechat::sampling::Draw { uniform: 0.0 }
}

fn token_of(forwarded: Forwarded) -> u32 {
    match forwarded {
        Forwarded::Token(token) => token,
        Forwarded::Logits(_) => panic!("the WebGPU backend chooses tokens on the GPU"),
    }
}
