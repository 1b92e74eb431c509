//! The engine the CLI, the server and the browser package drive: a model, its tokenizer and chat
//! template, and the bookkeeping that lets a new request reuse the KV cache of the previous one.
//!
//! Every request (`generate` or `chat`) compares its prompt with the tokens the KV cache holds,
//! keeps the longest common prefix, prefills only the rest in batched `forward` calls, then decodes
//! one token at a time until an end-of-sequence token, a stop string, `max_tokens`, the end of the
//! context, or a cancellation.
//!
//! Context policy: the prompt must leave room for at least one generated token
//! (`prompt.len() < context_length`), otherwise the request fails with
//! [`Error::ContextLength`]. When `prompt + max_tokens` exceeds the context, `max_tokens` is clipped
//! to the room left and the completion ends with [`FinishReason::Length`] when it fills it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use web_time::Instant;

use crate::backend::BackendKind;
use crate::chat::{ChatTemplate, Message};
use crate::gguf::{ByteSource, GgufFile};
use crate::model::{Forwarded, LanguageModel, LlamaConfig, Output, PendingForward};
use crate::sampling::{Draw, Sampler, SamplingParams};
use crate::tokenizer::{Detokenizer, Tokenizer};
use crate::{Error, Result};

/// Prompt tokens per batched `forward` call: bounds the activations' memory on long prompts.
pub const PREFILL_CHUNK: usize = 512;

/// A shared flag that stops a running generation. Clone it into another thread, a signal
/// handler or the `on_text` callback and call [`cancel`](Self::cancel).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens`, or the end of the context window.
    Length,
    /// The [`CancelToken`] was cancelled.
    Cancelled,
}

impl FinishReason {
    /// The OpenAI-style name: `stop`, `length`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Token counts and timings of one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already in the cache (the shared prefix).
    pub reused_tokens: usize,
    /// Prompt tokens run through the model in this request (`prompt_tokens - reused_tokens`).
    pub prefilled_tokens: usize,
    /// Tokens generated (`Completion::tokens.len()`).
    pub completion_tokens: usize,
    /// Prefilled tokens per second.
    pub prefill_tok_s: f64,
    /// Decode forward passes per second, as llama.cpp counts them: the first sampled token comes
    /// from the prefill's logits and is not counted. 0 when fewer than two tokens were sampled.
    pub decode_tok_s: f64,
    /// From the start of the request to the first sampled token (prefill included).
    pub time_to_first_token_ms: f64,
    pub total_ms: f64,
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    /// The generated text, without an end-of-sequence token and cut before a stop string. It is
    /// exactly the concatenation of the pieces passed to `on_text`.
    pub text: String,
    /// Generated token ids, without the end-of-sequence token. When a stop string ended the
    /// completion, the token that completed it is the last one here.
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub stats: Stats,
}

/// A model with its tokenizer and chat template, and a KV cache reused across requests.
pub struct Engine {
    model: Box<dyn LanguageModel>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// The tokens whose keys and values the model's KV cache holds, in order.
    cached_tokens: Vec<u32>,
}

impl Engine {
    /// Reads a GGUF model from any byte source: header, tokenizer, chat template, weights (CPU).
    pub fn load(source: &dyn ByteSource) -> Result<Self> {
        let file = GgufFile::read(source)?;
        Self::from_gguf(&file, source)
    }

    /// Like [`load`](Self::load), for a GGUF header already read from `source`.
    pub fn from_gguf(file: &GgufFile, source: &dyn ByteSource) -> Result<Self> {
        Self::from_gguf_on(BackendKind::Cpu, file, source)
    }

    /// Like [`from_gguf`](Self::from_gguf), on the chosen backend.
    pub fn from_gguf_on(
        backend: BackendKind,
        file: &GgufFile,
        source: &dyn ByteSource,
    ) -> Result<Self> {
        let tokenizer = Tokenizer::from_gguf(file)?;
        let template = ChatTemplate::from_gguf(file, &tokenizer)?;
        let model = crate::backend::load_model(backend, file, source)?;
        Ok(Self::from_parts(model, tokenizer, template))
    }

    /// Loads a GGUF file from disk, reading it with positioned reads.
    #[cfg(unix)]
    pub fn load_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let source = crate::gguf::FileSource::open(path)?;
        Self::load(&source)
    }

    /// An engine from pieces loaded elsewhere (another backend, a tokenizer from a JSON file).
    /// Whatever the model's cache holds is dropped.
    pub fn from_parts(
        mut model: Box<dyn LanguageModel>,
        tokenizer: Tokenizer,
        template: ChatTemplate,
    ) -> Self {
        model.truncate_cache(0);
        Self {
            model,
            tokenizer,
            template,
            cached_tokens: Vec::new(),
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    pub fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    pub fn model(&self) -> &dyn LanguageModel {
        self.model.as_ref()
    }

    /// The model, for direct use (perplexity, logits). The engine forgets which tokens the cache
    /// holds, so the next request prefills its whole prompt.
    pub fn model_mut(&mut self) -> &mut dyn LanguageModel {
        self.cached_tokens.clear();
        self.model.as_mut()
    }

    /// The tokens the KV cache holds (the last request's prompt and completion, minus the final
    /// sampled token, which was never run through the model).
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached_tokens
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        self.model.truncate_cache(0);
        self.cached_tokens.clear();
    }

    /// Token ids for a raw text prompt: the BOS token first when the tokenizer asks for one, then
    /// the text (which never produces control tokens). See [`Tokenizer::encode_prompt`].
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode_prompt(text)
    }

    /// Whether [`generate`](Self::generate) accepts `prompt`: it must not be empty and must leave
    /// room for at least one generated token. The errors are [`Error::Model`] for an empty prompt
    /// and [`Error::ContextLength`] for one that is too long.
    pub fn check_prompt(&self, prompt: &[u32]) -> Result<()> {
        let limit = self.model.config().context_length;
        if prompt.is_empty() {
            return Err(Error::Model(
                "the prompt is empty: nothing to continue".into(),
            ));
        }
        if prompt.len() >= limit {
            return Err(Error::ContextLength {
                needed: prompt.len() + 1,
                limit,
            });
        }
        Ok(())
    }

    /// Renders `messages` with the chat template (with the assistant's generation prompt) and
    /// generates the reply. Earlier turns that are still in the cache are not computed again.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn chat(
        &mut self,
        messages: &[Message],
        params: &SamplingParams,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion> {
        pollster::block_on(self.chat_async(messages, params, cancel, on_text))
    }

    /// [`chat`](Self::chat) without blocking (the browser's way).
    pub async fn chat_async(
        &mut self,
        messages: &[Message],
        params: &SamplingParams,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion> {
        let prompt = self.template.render(&self.tokenizer, messages, true)?;
        self.generate_async(&prompt, params, cancel, on_text).await
    }

    /// Generates a continuation of `prompt` (token ids, BOS included if the model wants one),
    /// calling `on_text` with each new piece of text as soon as it is final. Blocks (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion> {
        pollster::block_on(self.generate_async(prompt, params, cancel, on_text))
    }

    /// [`generate`](Self::generate) without blocking: waits for the GPU by awaiting, so it runs
    /// in a browser. A token chosen on the GPU is the only thing read back per step.
    pub async fn generate_async(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        cancel: &CancelToken,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion> {
        let start = Instant::now();
        self.check_prompt(prompt)?;
        let limit = self.model.config().context_length;
        let max_tokens = params.max_tokens.min(limit - prompt.len());
        let mut stats = Stats {
            prompt_tokens: prompt.len(),
            ..Stats::default()
        };

        let finish = |text: String, tokens: Vec<u32>, reason: FinishReason, mut stats: Stats| {
            stats.completion_tokens = tokens.len();
            stats.total_ms = ms(start.elapsed());
            Completion {
                text,
                tokens,
                finish_reason: reason,
                stats,
            }
        };
        if max_tokens == 0 {
            return Ok(finish(
                String::new(),
                Vec::new(),
                FinishReason::Length,
                stats,
            ));
        }

        // Keep the shared prefix; always run at least the last prompt token to get its logits.
        let reused = self.reuse_prefix(prompt).min(prompt.len() - 1);
        self.truncate_to(reused);
        stats.reused_tokens = reused;

        // Prefill. The last chunk's call also chooses the first token.
        let prefill_start = Instant::now();
        let mut sampler = Sampler::new(params);
        let chunks: Vec<&[u32]> = prompt[reused..].chunks(PREFILL_CHUNK).collect();
        let (last_chunk, full_chunks) = chunks.split_last().expect("at least one prompt token");
        for chunk in full_chunks {
            if cancel.is_cancelled() {
                stats.prefilled_tokens = self.cached_tokens.len() - reused;
                return Ok(finish(
                    String::new(),
                    Vec::new(),
                    FinishReason::Cancelled,
                    stats,
                ));
            }
            let call = InFlight::start(self.model.as_mut(), chunk, Output::Logits, None)?;
            call.finish(self.model.as_mut(), &mut self.cached_tokens, &mut sampler)
                .await?;
            yield_to_host().await;
        }
        let draw = sampler.draw();
        let mut in_flight = InFlight::start(
            self.model.as_mut(),
            last_chunk,
            output_for(&sampler, &draw),
            Some(draw),
        )?;

        // Decode. While the host waits for one token, the device already runs the next call on it
        // (`start_forward_sampled`): where sampling is on the device, tokens never wait for the host.
        let mut decode_start = Instant::now();
        let mut tokens = Vec::new();
        let mut text = String::new();
        let mut stop = StopFilter::new(&params.stop);
        let mut detokenizer = Detokenizer::new(&self.tokenizer);
        let mut sampled = 0usize;
        let mut spare_draw = None;
        let reason = loop {
            if cancel.is_cancelled() {
                break FinishReason::Cancelled;
            }
            // The next call, started on the token this one is choosing, unless this one is the last.
            let ahead = if tokens.len() + 1 < max_tokens {
                let draw = spare_draw.take().unwrap_or_else(|| sampler.draw());
                match self
                    .model
                    .start_forward_sampled(output_for(&sampler, &draw))
                {
                    Ok(Some(pending)) => Some((pending, draw)),
                    Ok(None) => {
                        spare_draw = Some(draw);
                        None
                    }
                    Err(e) => {
                        resync(self.model.as_mut(), &mut self.cached_tokens);
                        return Err(e);
                    }
                }
            } else {
                None
            };
            let token = in_flight
                .finish(self.model.as_mut(), &mut self.cached_tokens, &mut sampler)
                .await?;
            sampled += 1;
            if sampled == 1 {
                stats.time_to_first_token_ms = ms(start.elapsed());
                // The prefill ends with the first token's choice.
                stats.prefilled_tokens = prompt.len() - reused;
                stats.prefill_tok_s = rate(
                    stats.prefilled_tokens,
                    prefill_start.elapsed().as_secs_f64(),
                );
                // Decode speed counts the calls after the first token, as llama.cpp does.
                decode_start = Instant::now();
            }
            if self.tokenizer.is_eos(token) {
                break FinishReason::Stop;
            }
            tokens.push(token);

            let (ready, stopped) = stop.push(&detokenizer.push(token));
            if !ready.is_empty() {
                on_text(&ready);
                text.push_str(&ready);
            }
            if stopped {
                break FinishReason::Stop;
            }
            if tokens.len() >= max_tokens {
                break FinishReason::Length;
            }
            // In a browser the engine shares its thread with the page's messages (an abort).
            yield_to_host().await;
            in_flight = match ahead {
                Some((pending, draw)) => InFlight {
                    pending,
                    input: vec![token],
                    draw: Some(draw),
                },
                None => {
                    if cancel.is_cancelled() {
                        break FinishReason::Cancelled;
                    }
                    let draw = spare_draw.take().unwrap_or_else(|| sampler.draw());
                    InFlight::start(
                        self.model.as_mut(),
                        &[token],
                        output_for(&sampler, &draw),
                        Some(draw),
                    )
                    .inspect_err(|_| resync(self.model.as_mut(), &mut self.cached_tokens))?
                }
            };
        };
        if sampled == 0 {
            // Cancelled before the last prompt chunk's result arrived.
            stats.prefilled_tokens = self.cached_tokens.len() - reused;
        }
        // A call started ahead on a token that ended the completion: its position goes.
        if self.model.cache_len() > self.cached_tokens.len() {
            self.model.truncate_cache(self.cached_tokens.len());
        }

        // Text held back (an unfinished character, a possible start of a stop string) is final
        // now, unless a stop string ended the completion.
        if !stop.stopped {
            let rest = stop.finish(&detokenizer.finish());
            if !rest.is_empty() {
                on_text(&rest);
                text.push_str(&rest);
            }
        }
        // The first sampled token came from the prefill's call: no decode pass.
        stats.decode_tok_s = rate(
            sampled.saturating_sub(1),
            decode_start.elapsed().as_secs_f64(),
        );
        Ok(finish(text, tokens, reason, stats))
    }

    /// Length of the prefix of `prompt` the cache already holds.
    fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        // After direct use of the model the bookkeeping cannot be trusted: start over.
        if self.model.cache_len() != self.cached_tokens.len() {
            self.reset();
        }
        self.cached_tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
    }

    fn truncate_to(&mut self, len: usize) {
        self.model.truncate_cache(len);
        self.cached_tokens.truncate(len);
    }
}

/// How the next token is chosen: on the device where the sampler allows it.
fn output_for(sampler: &Sampler, draw: &Draw) -> Output {
    match sampler.device_request(draw) {
        Some(request) => Output::Sample(request),
        None => Output::Logits,
    }
}

/// A forward call submitted and not yet read back. `cached_tokens` records its input once its
/// result arrives (the model's cache holds the positions already).
struct InFlight {
    pending: PendingForward,
    input: Vec<u32>,
    /// The draw for the token this call chooses (none for a prefill chunk before the last).
    draw: Option<Draw>,
}

impl InFlight {
    fn start(
        model: &mut dyn LanguageModel,
        input: &[u32],
        output: Output,
        draw: Option<Draw>,
    ) -> Result<Self> {
        Ok(InFlight {
            pending: model.start_forward(input, output)?,
            input: input.to_vec(),
            draw,
        })
    }

    /// Waits for the result, records the input as cached, and returns the chosen token (sampled
    /// on the host from the logits where the device did not choose). On failure, resyncs the
    /// cache and its bookkeeping.
    async fn finish(
        self,
        model: &mut dyn LanguageModel,
        cached_tokens: &mut Vec<u32>,
        sampler: &mut Sampler,
    ) -> Result<u32> {
        let forwarded = match self.pending.wait_async().await {
            Ok(forwarded) => forwarded,
            Err(e) => {
                resync(model, cached_tokens);
                return Err(e);
            }
        };
        cached_tokens.extend_from_slice(&self.input);
        Ok(match (forwarded, self.draw) {
            (Forwarded::Token(token), _) => token,
            // The history is the prompt and the tokens generated so far, as penalties expect.
            (Forwarded::Logits(logits), Some(draw)) => {
                sampler.sample_drawn(&logits, cached_tokens, &draw)
            }
            (Forwarded::Logits(_), None) => 0, // a prefill chunk: nothing to choose
        })
    }
}

/// After a failed forward pass: make the cache and its bookkeeping agree again, dropping
/// whatever the model may have partly written.
fn resync(model: &mut dyn LanguageModel, cached_tokens: &mut Vec<u32>) {
    if model.cache_len() >= cached_tokens.len() {
        model.truncate_cache(cached_tokens.len());
    } else {
        model.truncate_cache(0);
        cached_tokens.clear();
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rate(count: usize, secs: f64) -> f64 {
    if count == 0 || secs <= 0.0 {
        0.0
    } else {
        count as f64 / secs
    }
}

/// Holds back generated text that could be the start of a stop string until it is resolved, and
/// cuts the text before the first stop string.
struct StopFilter<'p> {
    stops: Vec<&'p str>,
    /// Text received but not yet released.
    pending: String,
    stopped: bool,
}

impl<'p> StopFilter<'p> {
    fn new(stops: &'p [String]) -> Self {
        Self {
            stops: stops
                .iter()
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Adds `piece`; returns the text that is now safe to release, and whether a stop string
    /// was found (then nothing after it is ever released).
    fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        let first_match = self.stops.iter().filter_map(|s| self.pending.find(s)).min();
        if let Some(at) = first_match {
            self.stopped = true;
            let ready = self.pending[..at].to_string();
            self.pending.clear();
            return (ready, true);
        }
        let hold = self.longest_partial_match();
        let release = self.pending.len() - hold;
        let ready = self.pending[..release].to_string();
        self.pending.drain(..release);
        (ready, false)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn longest_partial_match(&self) -> usize {
        let mut longest = 0;
        for stop in &self.stops {
            // Suffixes start at character boundaries; a stop string's first byte always does.
            let shortest_start = self.pending.len().saturating_sub(stop.len() - 1);
            for (start, _) in self
                .pending
                .char_indices()
                .filter(|&(i, _)| i >= shortest_start)
            {
                let suffix = &self.pending[start..];
                if stop.starts_with(suffix) {
                    longest = longest.max(suffix.len());
                    break;
                }
            }
        }
        longest
    }

    /// Releases everything held back, with `tail` (the detokenizer's last bytes) appended,
    /// still cut before a stop string.
    fn finish(&mut self, tail: &str) -> String {
        let (mut ready, stopped) = self.push(tail);
        if !stopped {
            ready.push_str(&self.pending);
            self.pending.clear();
        }
        ready
    }
}

/// Lets a browser's event loop run between tokens; natively there is nothing to do.
#[cfg(target_arch = "wasm32")]
async fn yield_to_host() {
    crate::wasm::yield_now().await
}

#[cfg(not(target_arch = "wasm32"))]
async fn yield_to_host() {}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    /// Feeds pieces through a filter; returns the released text and whether it stopped.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut filter = StopFilter::new(&stops);
        let mut out = String::new();
        for piece in pieces {
            let (ready, stopped) = filter.push(piece);
            out.push_str(&ready);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&filter.finish(""));
        (out, false)
    }

    #[test]
    fn no_stop_strings_passes_everything() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&[""], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn stop_inside_one_piece() {
        assert_eq!(
            run(&["STOP"], &["hello STOP world"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn stop_split_over_pieces() {
        assert_eq!(
            run(&["</end>"], &["abc<", "/e", "nd>tail"]),
            ("abc".into(), true)
        );
    }

    #[test]
    fn partial_match_that_does_not_complete_is_released() {
        assert_eq!(
            run(&["</end>"], &["abc</e", "x"]),
            ("abc</ex".into(), false)
        );
        assert_eq!(run(&["</end>"], &["abc</e"]), ("abc</e".into(), false));
    }

    #[test]
    fn held_text_is_only_the_possible_prefix() {
        let stops = vec!["\n\nUser:".to_string()];
        let mut filter = StopFilter::new(&stops);
        assert_eq!(filter.push("Hi\n"), ("Hi".into(), false));
        assert_eq!(filter.push("\nUs"), (String::new(), false));
        assert_eq!(filter.push("ually"), ("\n\nUsually".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
        assert_eq!(run(&["cd", "bcde"], &["abcdef"]), ("a".into(), true));
    }

    #[test]
    fn multibyte_text_is_cut_at_character_boundaries() {
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), true));
        assert_eq!(run(&["😀x"], &["a😀", "y"]), ("a😀y".into(), false));
    }
}
