//! The engine end to end on SmolLM2-135M-Instruct (Q4_1), plus exact cache bookkeeping checks on
//! a scripted fake model that uses the same tokenizer.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use edgechat::chat::{ChatTemplate, Message};
use edgechat::gguf::{FileSource, GgufFile};
use edgechat::model::{LanguageModel, LlamaConfig, Output, PendingForward};
use edgechat::sampling::SamplingParams;
use edgechat::session::{CancelToken, Completion, Engine, FinishReason, PREFILL_CHUNK};
use edgechat::tokenizer::Tokenizer;
use edgechat::{Error, Result};

fn model_path() -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-instruct-q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/models first",
        path.display()
    );
    path
}

fn smollm2() -> Engine {
    Engine::load_file(model_path()).expect("SmolLM2 loads")
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ..SamplingParams::greedy()
    }
}

/// Runs a request and checks that the streamed pieces add up to the completion text.
fn run(engine: &mut Engine, prompt: &[u32], params: &SamplingParams) -> Completion {
    let mut streamed = String::new();
    let completion = engine
        .generate(prompt, params, &CancelToken::new(), &mut |piece| {
            streamed.push_str(piece)
        })
        .expect("generation succeeds");
    assert_eq!(
        streamed, completion.text,
        "streamed text differs from the completion text"
    );
    assert_eq!(
        engine.cached_tokens().len(),
        engine.model().cache_len(),
        "cache bookkeeping out of sync"
    );
    completion
}

fn chat(engine: &mut Engine, messages: &[Message], params: &SamplingParams) -> Completion {
    let mut streamed = String::new();
    let completion = engine
        .chat(messages, params, &CancelToken::new(), &mut |piece| {
            streamed.push_str(piece)
        })
        .expect("chat succeeds");
    assert_eq!(streamed, completion.text);
    completion
}

const FRANCE: &str = "The capital of France is";

// ---------------------------------------------------------------------------------------------
// SmolLM2

#[test]
fn greedy_completion_names_paris() {
    let mut engine = smollm2();
    let prompt = engine.encode_prompt(FRANCE).unwrap();
    if engine.tokenizer().add_bos() {
        assert_eq!(Some(prompt[0]), engine.tokenizer().bos_id());
    }
    let completion = run(&mut engine, &prompt, &greedy(8));
    assert!(
        completion.text.starts_with(" Paris"),
        "greedy continuation: {:?}",
        completion.text
    );
    let stats = &completion.stats;
    assert_eq!(stats.prompt_tokens, prompt.len());
    assert_eq!(
        (stats.reused_tokens, stats.prefilled_tokens),
        (0, prompt.len())
    );
    assert_eq!(stats.completion_tokens, completion.tokens.len());
    assert!(stats.prefill_tok_s > 0.0 && stats.decode_tok_s > 0.0);
    assert!(stats.time_to_first_token_ms > 0.0 && stats.total_ms >= stats.time_to_first_token_ms);
    assert_eq!(
        engine.tokenizer().decode(&completion.tokens).unwrap(),
        completion.text
    );
}

#[test]
fn a_second_chat_turn_reuses_the_cache_and_matches_a_fresh_engine() {
    // Batched prefill and one-token decode round differently (activations are quantized to 8
    // bits per row, so float noise can flip a rounding): logits agree to a few percent, not
    // bit for bit. Questions with confident answers keep the greedy choices far from ties.
    let mut engine = smollm2();
    let params = greedy(24);
    let mut messages = vec![Message::user("What is 2 + 2?")];
    let first_prompt = engine
        .template()
        .render(engine.tokenizer(), &messages, true)
        .unwrap();
    let first = chat(&mut engine, &messages, &params);
    assert!(!first.text.is_empty());

    messages.push(Message::assistant(first.text.clone()));
    messages.push(Message::user("What is the capital of France?"));
    let second_prompt = engine
        .template()
        .render(engine.tokenizer(), &messages, true)
        .unwrap();
    let cached_before = engine.cached_tokens().to_vec();
    let shared = cached_before
        .iter()
        .zip(&second_prompt)
        .take_while(|(a, b)| a == b)
        .count();
    let second = chat(&mut engine, &messages, &params);

    // The whole first prompt at least is shared; only the rest was computed.
    assert!(
        shared >= first_prompt.len(),
        "shared prefix {shared} < first prompt {}",
        first_prompt.len()
    );
    assert_eq!(second.stats.reused_tokens, shared);
    assert_eq!(second.stats.prefilled_tokens, second_prompt.len() - shared);
    assert_eq!(second.stats.prompt_tokens, second_prompt.len());

    // A fresh engine computing the whole conversation at once answers with the same tokens.
    let mut fresh = smollm2();
    let reference = chat(&mut fresh, &messages, &params);
    assert_eq!(reference.stats.reused_tokens, 0);
    assert_eq!(
        second.tokens, reference.tokens,
        "{:?} vs {:?}",
        second.text, reference.text
    );
    assert!(second.text.contains("Paris"), "{:?}", second.text);
}

#[test]
fn stop_strings_cut_the_text_and_are_never_emitted() {
    let mut engine = smollm2();
    let prompt = engine.encode_prompt(FRANCE).unwrap();
    let free = run(&mut engine, &prompt, &greedy(24));
    let chars: Vec<char> = free.text.chars().collect();
    assert!(
        chars.len() >= 16,
        "completion too short to pick a stop string: {:?}",
        free.text
    );

    // A stop string taken from the middle of the free completion, likely spanning tokens.
    let stop: String = chars[8..13].iter().collect();
    let cut = free.text.find(&stop).unwrap();
    let params = SamplingParams {
        stop: vec![stop.clone()],
        ..greedy(24)
    };
    let mut pieces = Vec::new();
    let stopped = engine
        .generate(&prompt, &params, &CancelToken::new(), &mut |piece| {
            pieces.push(piece.to_string())
        })
        .unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert_eq!(stopped.text, free.text[..cut], "stop string {stop:?}");
    assert_eq!(pieces.concat(), stopped.text);
    assert!(pieces.iter().all(|p| !p.contains(&stop)));
    assert!(stopped.tokens.len() < free.tokens.len());
    // The whole prompt was cached: only its last token ran again.
    assert_eq!(stopped.stats.reused_tokens, prompt.len() - 1);
    assert_eq!(stopped.stats.prefilled_tokens, 1);
    assert_eq!(engine.cached_tokens().len(), engine.model().cache_len());

    // A stop string that never occurs changes nothing.
    let params = SamplingParams {
        stop: vec!["\u{1F600}never".into()],
        ..greedy(24)
    };
    let same = run(&mut engine, &prompt, &params);
    assert_eq!(
        (same.text.as_str(), same.finish_reason),
        (free.text.as_str(), free.finish_reason)
    );
}

#[test]
fn max_tokens_ends_with_length() {
    let mut engine = smollm2();
    let prompt = engine.encode_prompt(FRANCE).unwrap();
    let completion = run(&mut engine, &prompt, &greedy(3));
    assert_eq!(completion.finish_reason, FinishReason::Length);
    assert_eq!(completion.tokens.len(), 3);
    assert_eq!(completion.stats.completion_tokens, 3);
    // The last sampled token was never fed to the model.
    assert_eq!(engine.cached_tokens().len(), prompt.len() + 2);

    let none = run(&mut engine, &prompt, &greedy(0));
    assert_eq!(
        (none.finish_reason, none.tokens.len()),
        (FinishReason::Length, 0)
    );
}

#[test]
fn cancel_from_the_callback_then_answer_a_new_request() {
    let mut engine = smollm2();
    let prompt = engine.encode_prompt(FRANCE).unwrap();
    let cancel = CancelToken::new();
    let mut pieces = 0;
    let completion = engine
        .generate(&prompt, &greedy(64), &cancel, &mut |piece| {
            if !piece.is_empty() {
                pieces += 1;
                cancel.cancel();
            }
        })
        .unwrap();
    assert_eq!(completion.finish_reason, FinishReason::Cancelled);
    assert!(cancel.is_cancelled());
    assert!(
        pieces >= 1 && completion.tokens.len() < 64,
        "{} tokens",
        completion.tokens.len()
    );
    assert_eq!(engine.cached_tokens().len(), engine.model().cache_len());

    // The same engine now answers correctly, like a fresh one.
    let again = run(&mut engine, &prompt, &greedy(8));
    let mut fresh = smollm2();
    let reference = run(&mut fresh, &prompt, &greedy(8));
    assert_eq!(again.tokens, reference.tokens);
    assert!(again.text.starts_with(" Paris"), "{:?}", again.text);

    // A token cancelled before the request starts stops it before any work.
    let cancelled = CancelToken::new();
    cancelled.cancel();
    let completion = engine
        .generate(&prompt, &greedy(8), &cancelled, &mut |_| {})
        .unwrap();
    assert_eq!(
        (completion.finish_reason, completion.tokens.len()),
        (FinishReason::Cancelled, 0)
    );
}

#[test]
fn a_prompt_that_fills_the_context_is_an_error() {
    let mut engine = smollm2();
    let limit = engine.config().context_length;
    let token = engine
        .encode_prompt(" the")
        .unwrap()
        .last()
        .copied()
        .unwrap();
    let prompt = vec![token; limit];
    match engine.generate(&prompt, &greedy(4), &CancelToken::new(), &mut |_| {}) {
        Err(Error::ContextLength { needed, limit: l }) => {
            assert_eq!((needed, l), (limit + 1, limit))
        }
        other => panic!("expected ContextLength, got {other:?}"),
    }
    assert!(matches!(
        engine.generate(&[], &greedy(4), &CancelToken::new(), &mut |_| {}),
        Err(Error::Model(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// A scripted model: exact checks of prefix reuse, chunking, clipping and end-of-sequence.

/// Returns one-hot logits: after a sequence of `n` tokens it predicts `script[n % script.len()]`.
/// Records every `forward` call.
struct ScriptedModel {
    config: LlamaConfig,
    script: Vec<u32>,
    cache: Vec<u32>,
    calls: Arc<Mutex<Vec<Vec<u32>>>>,
}

impl LanguageModel for ScriptedModel {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn start_forward(&mut self, tokens: &[u32], _output: Output) -> Result<PendingForward> {
        if self.cache.len() + tokens.len() > self.config.context_length {
            return Err(Error::ContextLength {
                needed: self.cache.len() + tokens.len(),
                limit: self.config.context_length,
            });
        }
        self.calls.lock().unwrap().push(tokens.to_vec());
        self.cache.extend_from_slice(tokens);
        let mut logits = vec![0.0; self.config.vocab_size];
        logits[self.script[self.cache.len() % self.script.len()] as usize] = 10.0;
        Ok(PendingForward::host_logits(&logits))
    }

    fn forward_all(&mut self, _tokens: &[u32]) -> Result<Vec<f32>> {
        unreachable!("the engine never asks for every row")
    }

    fn cache_len(&self) -> usize {
        self.cache.len()
    }

    fn truncate_cache(&mut self, len: usize) {
        self.cache.truncate(len);
    }

    fn weight_bytes_per_token(&self) -> u64 {
        0
    }

    fn backend_name(&self) -> &'static str {
        "scripted"
    }
}

type Calls = Arc<Mutex<Vec<Vec<u32>>>>;

/// An engine on the scripted model with SmolLM2's tokenizer and template.
fn scripted(
    context_length: usize,
    script_text: &str,
    eos_at: Option<usize>,
) -> (Engine, Calls, Vec<u32>) {
    let source = FileSource::open(model_path()).unwrap();
    let file = GgufFile::read(&source).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let template = ChatTemplate::from_gguf(&file, &tokenizer).unwrap();
    let mut config = LlamaConfig::from_gguf(&file).unwrap();
    config.context_length = context_length;
    let mut script = tokenizer.encode(script_text).unwrap();
    if let Some(at) = eos_at {
        script.insert(at, tokenizer.eos_ids()[0]);
    }
    let calls = Calls::default();
    let model = ScriptedModel {
        config,
        script: script.clone(),
        cache: Vec::new(),
        calls: calls.clone(),
    };
    (
        Engine::from_parts(Box::new(model), tokenizer, template),
        calls,
        script,
    )
}

fn take_calls(calls: &Calls) -> Vec<usize> {
    calls.lock().unwrap().drain(..).map(|c| c.len()).collect()
}

#[test]
fn prefill_is_batched_in_chunks_and_decode_is_one_token_at_a_time() {
    let (mut engine, calls, _) = scripted(4096, "a b c d e f g h", None);
    let prompt: Vec<u32> = (0..1100).map(|i| 100 + i % 50).collect();
    let completion = run(&mut engine, &prompt, &greedy(5));
    assert_eq!(PREFILL_CHUNK, 512);
    assert_eq!(take_calls(&calls), vec![512, 512, 76, 1, 1, 1, 1]);
    assert_eq!(completion.tokens.len(), 5);
    assert_eq!(
        engine.cached_tokens(),
        [&prompt[..], &completion.tokens[..4]].concat()
    );
}

#[test]
fn only_the_new_suffix_is_prefilled() {
    let (mut engine, calls, _) = scripted(4096, "x y z", None);
    let prompt: Vec<u32> = (200..240).collect();
    let first = run(&mut engine, &prompt, &greedy(4));
    take_calls(&calls);

    // Continue the conversation: prompt + completion + 5 new tokens.
    let mut longer = [&prompt[..], &first.tokens[..]].concat();
    longer.extend(300..305);
    let second = run(&mut engine, &longer, &greedy(2));
    // Cached: the prompt and the first 3 completion tokens (the 4th was never fed).
    let cached = prompt.len() + 3;
    assert_eq!(
        (second.stats.reused_tokens, second.stats.prefilled_tokens),
        (cached, longer.len() - cached)
    );
    assert_eq!(take_calls(&calls), vec![longer.len() - cached, 1]);

    // A prompt that diverges early: the cache is cut back to the shared part.
    let mut edited = longer.clone();
    edited[10] = 999;
    let third = run(&mut engine, &edited, &greedy(1));
    assert_eq!(
        (third.stats.reused_tokens, third.stats.prefilled_tokens),
        (10, edited.len() - 10)
    );
    assert_eq!(take_calls(&calls), vec![edited.len() - 10]);

    // The same prompt again: everything but the last token is reused.
    let fourth = run(&mut engine, &edited, &greedy(1));
    assert_eq!(
        (fourth.stats.reused_tokens, fourth.stats.prefilled_tokens),
        (edited.len() - 1, 1)
    );
    assert_eq!(take_calls(&calls), vec![1]);

    // After direct use of the model the engine does not trust its bookkeeping.
    engine.model_mut().forward(&[1, 2, 3]).unwrap();
    let fifth = run(&mut engine, &edited, &greedy(1));
    assert_eq!(fifth.stats.reused_tokens, 0);

    engine.reset();
    assert_eq!(
        (engine.cached_tokens().len(), engine.model().cache_len()),
        (0, 0)
    );
}

#[test]
fn max_tokens_is_clipped_to_the_room_left_in_the_context() {
    let (mut engine, calls, _) =
        scripted(16, "one two three four five six seven eight nine ten", None);
    let prompt: Vec<u32> = (500..510).collect();
    let completion = run(&mut engine, &prompt, &greedy(100));
    assert_eq!(
        (completion.finish_reason, completion.tokens.len()),
        (FinishReason::Length, 6)
    );
    assert_eq!(engine.model().cache_len(), 15);
    take_calls(&calls);

    let completion = run(&mut engine, &(500..515).collect::<Vec<u32>>(), &greedy(100));
    assert_eq!(completion.tokens.len(), 1);

    match engine.generate(
        &(500..516).collect::<Vec<u32>>(),
        &greedy(1),
        &CancelToken::new(),
        &mut |_| {},
    ) {
        Err(Error::ContextLength { needed, limit }) => assert_eq!((needed, limit), (17, 16)),
        other => panic!("expected ContextLength, got {other:?}"),
    }
}

#[test]
fn end_of_sequence_stops_and_is_not_part_of_the_completion() {
    let text = " Paris is the capital";
    let (mut engine, _, script) = scripted(4096, text, Some(3));
    // After a prompt of one token the model predicts script[1], script[2], then the EOS at script[3].
    let completion = run(&mut engine, &[7], &greedy(50));
    assert_eq!(completion.finish_reason, FinishReason::Stop);
    assert_eq!(completion.tokens, script[1..3]);
    assert!(!completion
        .tokens
        .iter()
        .any(|&t| engine.tokenizer().is_eos(t)));
}

#[test]
fn a_chat_turn_renders_the_template_with_the_generation_prompt() {
    let (mut engine, calls, _) = scripted(4096, " fine thanks", None);
    let messages = [Message::user("How are you?")];
    let expected = engine
        .template()
        .render(engine.tokenizer(), &messages, true)
        .unwrap();
    let completion = chat(&mut engine, &messages, &greedy(3));
    assert_eq!(completion.stats.prompt_tokens, expected.len());
    assert_eq!(calls.lock().unwrap()[0], expected);
}

/// Prefix reuse relies on this: running a prompt in two parts (the second part after cached
/// keys and values) gives the same logits as running it at once.
#[test]
fn split_prefill_matches_one_prefill() {
    let mut engine = smollm2();
    let prompt = engine
        .encode_prompt("The quick brown fox jumps over the lazy dog. The capital of France is")
        .unwrap();
    let model = engine.model_mut();
    model.truncate_cache(0);
    let whole = model.forward(&prompt).unwrap();
    for split in [1, prompt.len() / 2, prompt.len() - 1] {
        model.truncate_cache(0);
        model.forward(&prompt[..split]).unwrap();
        let parts = model.forward(&prompt[split..]).unwrap();
        let max_diff = common::max_abs_diff(&whole, &parts);
        // Every row is computed on its own, in the same order however the rows are batched
        // (prompts under 32 tokens: longer Q4_1 prompts multiply dequantized f32 tiles).
        assert!(
            max_diff == 0.0,
            "split at {split} of {}: max logit difference {max_diff}",
            prompt.len()
        );
    }
}

/// And on this: cutting the cache back to a prefix and continuing differently gives the same
/// logits as computing the new sequence from scratch.
#[test]
fn truncated_cache_continues_like_a_fresh_one() {
    let mut engine = smollm2();
    let a = engine
        .encode_prompt("The quick brown fox jumps over the lazy dog.")
        .unwrap();
    let b = engine
        .tokenizer()
        .encode(" Then it ran away into the forest and was never seen again by anyone")
        .unwrap();
    let c = engine
        .tokenizer()
        .encode(" The capital of France is")
        .unwrap();
    let model = engine.model_mut();
    model.truncate_cache(0);
    let fresh = model.forward(&[&a[..], &c[..]].concat()).unwrap();
    model.truncate_cache(0);
    model.forward(&[&a[..], &b[..]].concat()).unwrap();
    model.truncate_cache(a.len());
    assert_eq!(model.cache_len(), a.len());
    let reused = model.forward(&c).unwrap();
    let max_diff = common::max_abs_diff(&fresh, &reused);
    // Same tolerance as above.
    assert!(max_diff < 1e-2, "max logit difference {max_diff}");
}
