//! The relay: runs one chat request over the ranked candidates until the answer is complete.
//!
//! Before the first token it fails over (errors, resets, timeouts, a 429's `Retry-After`, a context
//! too small), optionally hedging a slow first candidate with the next. After the first token it
//! rescues cut, stalled or malformed streams on another provider, continuing the text already sent
//! (assistant prefill) or, where the provider cannot continue, restarting visibly. An answer that
//! could not be finished ends with `Failed`, never with a finish reason.
//!
//! Upstream requests always stream, also for non-streaming callers: that is what lets the relay see
//! a stall and keep the part of an answer that arrived. I/O comes from a [`Transport`]: workerd's
//! fetch in the worker, tokio in the tests.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;

use futures::future::{select, Either};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};

use super::api::{ApiError, ChatRequest};
use super::config::{Limits, Prefill, Provider};
use super::policy::{cost_usd, Candidate};
use super::sse::SseParser;
use super::stats::AttemptReport;

/// Bytes of an upstream error body read to classify it.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Back-off before a provider that failed transiently is tried again.
const RETRY_BACKOFF_MS: u64 = 250;
/// Assumed wait after a 429 without `Retry-After`.
const DEFAULT_RETRY_AFTER_MS: u64 = 1000;

/// An upstream HTTP response whose body streams in.
pub struct UpstreamResponse<B> {
    pub status: u16,
    /// The `Retry-After` header, as sent.
    pub retry_after: Option<String>,
    pub body: B,
}

/// The I/O the relay needs. Dropping a pending `post` future or a body aborts that request.
pub trait Transport {
    type Body: Stream<Item = Result<Vec<u8>, String>> + Unpin;
    /// POSTs a JSON body to `{base_url}/chat/completions` with the provider's key.
    fn post(
        &self,
        provider: &Provider,
        body: String,
    ) -> impl Future<Output = Result<UpstreamResponse<Self::Body>, String>>;
    fn sleep(&self, ms: u64) -> impl Future<Output = ()>;
    fn now_ms(&self) -> u64;
    /// `text` with every provider key this transport sends replaced: applied to whatever a
    /// provider wrote that may reach the caller (an error message can echo the key it was sent).
    fn redact(&self, text: &str) -> String;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// What the caller's response is made of, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Downstream {
    /// Answer text, produced by `provider`.
    Delta { provider: String, text: String },
    /// The answer moved to another provider. `continued`: the new one continues the text already
    /// sent; otherwise that text is void and the answer starts again.
    Switch {
        from: String,
        to: String,
        reason: String,
        continued: bool,
    },
    /// The answer is complete.
    Done {
        provider: String,
        finish_reason: String,
        usage: Usage,
        cost_usd: f64,
    },
    /// The request failed; text already sent is an incomplete answer.
    Failed { error: ApiError },
}

impl Downstream {
    /// Whether this is the answer's last event (nothing follows it).
    pub fn is_last(&self) -> bool {
        matches!(self, Downstream::Done { .. } | Downstream::Failed { .. })
    }
}

/// One upstream attempt, for the ledger and the provider statistics.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptRecord {
    pub provider: String,
    /// `ok`, or what went wrong: `http_429`, `http_503`, `connect_error`, `ttft_timeout`, `cut`,
    /// `stalled`, `malformed`, `context_length`, `content_policy`, `hedge_lost`, ...
    pub outcome: String,
    pub status: Option<u16>,
    pub ttft_ms: Option<u64>,
    pub duration_ms: u64,
    pub prompt_tokens: u64,
    /// Tokens of this attempt that reached the caller's answer.
    pub completion_tokens: u64,
    /// What the caller is charged for this attempt: only text that is part of the answer.
    pub cost_usd: f64,
    #[serde(skip)]
    pub report: AttemptReport,
}

/// How the request ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayOutcome {
    Completed,
    /// Failed before any text reached the caller.
    Failed,
    /// Failed after part of the answer was sent.
    Truncated,
    /// The caller went away.
    Cancelled,
}

pub struct RelayResult {
    pub outcome: RelayOutcome,
    pub attempts: Vec<AttemptRecord>,
    pub usage: Usage,
    pub cost_usd: f64,
}

pub struct RelayJob {
    pub request: ChatRequest,
    pub candidates: Vec<Candidate>,
    pub limits: Limits,
    /// Start the next candidate if the first has no token after this long.
    pub hedge_ms: Option<u64>,
    pub prompt_tokens_estimate: u64,
}

/// Runs the job; `emit` returns false once the caller is gone.
pub async fn relay<T: Transport>(
    t: &T,
    job: RelayJob,
    emit: &mut dyn FnMut(Downstream) -> bool,
) -> RelayResult {
    Relay::new(t, job).run(emit).await
}

/// Why an attempt produced no (further) text.
#[derive(Debug)]
enum Failure {
    /// Another try, here or elsewhere, may work.
    Transient {
        outcome: String,
        status: Option<u16>,
        retry_after_ms: Option<u64>,
        provider_fault: bool,
    },
    /// The prompt does not fit this provider's context.
    ContextLength,
    /// The request itself is refused (content policy): the caller's answer, unless part of the
    /// answer was already sent (then another provider may finish it).
    Refused {
        outcome: String,
        error: Box<ApiError>,
    },
    /// This provider rejected the request as invalid (a 4xx other than the above). The router
    /// validated it, so another provider may take it (one may reject a parameter such as
    /// `stream_options` or an assistant prefill); if none does, this is the caller's answer.
    Rejected {
        outcome: String,
        error: Box<ApiError>,
    },
    /// This provider cannot serve the request (bad key, unknown model): skip it.
    Unusable { outcome: String, status: u16 },
}

impl Failure {
    fn outcome(&self) -> String {
        match self {
            Failure::Transient { outcome, .. }
            | Failure::Refused { outcome, .. }
            | Failure::Rejected { outcome, .. }
            | Failure::Unusable { outcome, .. } => outcome.clone(),
            Failure::ContextLength => "context_length".into(),
        }
    }
    fn status(&self) -> Option<u16> {
        match self {
            Failure::Transient { status, .. } => *status,
            Failure::ContextLength => Some(400),
            Failure::Refused { error, .. } | Failure::Rejected { error, .. } => Some(error.status),
            Failure::Unusable { status, .. } => Some(*status),
        }
    }
    fn transient(outcome: &str, provider_fault: bool) -> Failure {
        Failure::Transient {
            outcome: outcome.into(),
            status: None,
            retry_after_ms: None,
            provider_fault,
        }
    }
}

/// One item of an upstream stream.
#[derive(Debug)]
enum Item {
    Text(String),
    Finish(String),
    Usage(Usage),
    Done,
}

/// Reads an upstream event stream item by item.
struct StreamReader<B> {
    body: B,
    parser: SseParser,
    queue: VecDeque<Item>,
    /// Why the stream failed, reported after the items parsed before the failure.
    failure: Option<Failure>,
    /// The body has ended (it must not be polled again).
    ended: bool,
}

impl<B: Stream<Item = Result<Vec<u8>, String>> + Unpin> StreamReader<B> {
    fn new(body: B) -> Self {
        StreamReader {
            body,
            parser: SseParser::default(),
            queue: VecDeque::new(),
            failure: None,
            ended: false,
        }
    }

    /// The next item, waiting at most `timeout_ms` for it (no limit: the caller has one) — bytes
    /// that carry no item, such as keep-alive comments, do not count; `Ok(None)` when the body
    /// ended.
    async fn next<T: Transport>(
        &mut self,
        t: &T,
        timeout_ms: Option<u64>,
    ) -> Result<Option<Item>, Failure> {
        let deadline = timeout_ms.map(|ms| t.now_ms().saturating_add(ms));
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Ok(Some(item));
            }
            if let Some(failure) = self.failure.take() {
                return Err(failure);
            }
            if self.ended {
                return Ok(None);
            }
            let next = match deadline {
                Some(at) => within(t, at.saturating_sub(t.now_ms()), self.body.next()).await,
                None => Some(self.body.next().await),
            };
            if matches!(next, Some(None) | Some(Some(Err(_)))) {
                self.ended = true;
            }
            let bytes = match next {
                None => return Err(Failure::transient("stalled", true)),
                Some(None) if self.parser.has_partial_event() => {
                    return Err(Failure::transient("cut", true))
                }
                Some(None) => return Ok(None),
                Some(Some(Err(_))) => return Err(Failure::transient("cut", true)),
                Some(Some(Ok(bytes))) => bytes,
            };
            // Items parsed before a bad event still count: a finish reason among them completes
            // the answer.
            match self.parser.push(&bytes) {
                Ok(events) => {
                    for event in events {
                        if let Err(failure) = self.parse_event(&event.data) {
                            self.failure = Some(failure);
                            self.ended = true;
                            break;
                        }
                    }
                }
                Err(_) => {
                    self.failure = Some(Failure::transient("malformed", true));
                    self.ended = true;
                }
            }
        }
    }

    fn parse_event(&mut self, data: &str) -> Result<(), Failure> {
        if data.trim() == "[DONE]" {
            self.queue.push_back(Item::Done);
            return Ok(());
        }
        let malformed = || Failure::transient("malformed", true);
        let value: Value = serde_json::from_str(data).map_err(|_| malformed())?;
        let Some(object) = value.as_object() else {
            return Err(malformed());
        };
        if object.get("error").is_some_and(|e| !e.is_null()) {
            return Err(Failure::transient("stream_error", true));
        }
        // An event without a choice (Azure's opening `"choices": []` with its filter results, a
        // provider's own event types) carries nothing for the answer and is skipped.
        let choice = match object.get("choices") {
            None | Some(Value::Null) => None,
            Some(Value::Array(choices)) => choices.first(),
            Some(_) => return Err(malformed()),
        };
        if let Some(text) = choice
            .and_then(|c| c.pointer("/delta/content"))
            .and_then(Value::as_str)
        {
            if !text.is_empty() {
                self.queue.push_back(Item::Text(text.to_string()));
            }
        }
        if let Some(reason) = choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str)
        {
            self.queue.push_back(Item::Finish(reason.to_string()));
        }
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            let field = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
            let (p, c) = (field("prompt_tokens"), field("completion_tokens"));
            self.queue.push_back(Item::Usage(Usage {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: p + c,
            }));
        }
        Ok(())
    }
}

/// An attempt that produced its first item.
struct Started<B> {
    candidate: Candidate,
    reader: StreamReader<B>,
    first: Item,
    sent_ms: u64,
    ttft_ms: u64,
}

/// Runs `future` for at most `ms`.
async fn within<T: Transport, F: Future>(t: &T, ms: u64, future: F) -> Option<F::Output> {
    match select(pin!(future), pin!(t.sleep(ms))).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

/// Sends one attempt and waits for its first token (or an immediate finish).
async fn first_token<T: Transport>(
    t: &T,
    candidate: Candidate,
    body: String,
    ttft_ms: u64,
) -> Result<Started<T::Body>, (Candidate, Failure)> {
    let sent_ms = t.now_ms();
    let attempt = async {
        let response = t
            .post(&candidate.provider, body)
            .await
            .map_err(|_| Failure::transient("connect_error", true))?;
        if !(200..300).contains(&response.status) {
            return Err(classify_error(t, response).await);
        }
        let mut reader = StreamReader::new(response.body);
        loop {
            match reader.next(t, None).await? {
                Some(Item::Usage(_)) => continue,
                Some(item) => return Ok((reader, item)),
                None => return Err(Failure::transient("empty_stream", true)),
            }
        }
    };
    match within(t, ttft_ms, attempt).await {
        Some(Ok((reader, first))) => {
            let ttft_ms = t.now_ms().saturating_sub(sent_ms);
            Ok(Started {
                candidate,
                reader,
                first,
                sent_ms,
                ttft_ms,
            })
        }
        Some(Err(failure)) => Err((candidate, failure)),
        None => Err((candidate, Failure::transient("ttft_timeout", true))),
    }
}

/// Reads an upstream error response and decides what it means for routing.
async fn classify_error<T: Transport>(t: &T, response: UpstreamResponse<T::Body>) -> Failure {
    let status = response.status;
    let retry_after_ms = response
        .retry_after
        .as_deref()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.saturating_mul(1000));
    let mut body = response.body;
    let mut bytes = Vec::new();
    // A bounded, short read: the error body only refines the status.
    let _ = within(t, 2000, async {
        while let Some(Ok(chunk)) = body.next().await {
            bytes.extend_from_slice(&chunk);
            if bytes.len() >= MAX_ERROR_BODY {
                break;
            }
        }
    })
    .await;
    let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let error = parsed.get("error").cloned().unwrap_or(Value::Null);
    let text = |k: &str| {
        error
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    // What the provider wrote may reach the caller: never with a key in it.
    let (code, kind, message) = (
        t.redact(&text("code")),
        text("type"),
        t.redact(&text("message")),
    );
    let message_lower = message.to_lowercase();
    let outcome = format!("http_{status}");
    if status == 429 {
        let retry_after_ms = Some(retry_after_ms.unwrap_or(DEFAULT_RETRY_AFTER_MS));
        return Failure::Transient {
            outcome,
            status: Some(status),
            retry_after_ms,
            provider_fault: false,
        };
    }
    if status >= 500 || status == 408 {
        return Failure::Transient {
            outcome,
            status: Some(status),
            retry_after_ms,
            provider_fault: true,
        };
    }
    if code == "context_length_exceeded"
        || message_lower.contains("context length")
        || message_lower.contains("context window")
        || message_lower.contains("maximum context")
    {
        return Failure::ContextLength;
    }
    if [
        "content_policy_violation",
        "content_filter",
        "content_filtered",
    ]
    .contains(&code.as_str())
        || kind == "content_filter"
        || message_lower.contains("content policy")
    {
        let error = ApiError {
            status,
            kind: "invalid_request_error",
            code: Some(if code.is_empty() {
                "content_policy_violation".into()
            } else {
                code
            }),
            message: if message.is_empty() {
                "the provider refused this request (content policy)".into()
            } else {
                truncate(&message, 500)
            },
            param: None,
            retry_after_s: None,
        };
        return Failure::Refused {
            outcome: "content_policy".into(),
            error: Box::new(error),
        };
    }
    if matches!(status, 401 | 403 | 404) {
        return Failure::Unusable { outcome, status };
    }
    let error = ApiError {
        status,
        kind: "invalid_request_error",
        code: (!code.is_empty()).then_some(code),
        message: if message.is_empty() {
            format!("the provider rejected the request with HTTP {status}")
        } else {
            truncate(&message, 500)
        },
        param: None,
        retry_after_s: None,
    };
    Failure::Rejected {
        outcome,
        error: Box::new(error),
    }
}

/// `text` with each of `secrets` replaced by `[redacted]`. Values under 8 characters are left:
/// no real key is that short, and replacing them would garble the message.
pub fn redact_secrets<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = text.to_string();
    for secret in secrets {
        if secret.len() >= 8 && text.contains(secret) {
            text = text.replace(secret, "[redacted]");
        }
    }
    text
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// How a started attempt ended.
enum StreamEnd {
    Complete {
        finish_reason: String,
        usage: Option<Usage>,
    },
    Failed(Failure),
    CallerGone,
}

struct Relay<'t, T: Transport> {
    t: &'t T,
    request: ChatRequest,
    limits: Limits,
    hedge_ms: Option<u64>,
    prompt_tokens_estimate: u64,
    deadline_ms: u64,
    fresh: VecDeque<Candidate>,
    /// Candidates that failed transiently, with the time they may be tried again.
    retry: Vec<(Candidate, u64)>,
    /// Context length that proved too small: only larger ones are tried.
    too_small_context: Option<u32>,
    attempts: Vec<AttemptRecord>,
    /// The text of the request's trailing assistant message: the start of the answer, which the
    /// caller has (its own prefill, or the npm package handing over an answer its local engine
    /// began). Providers that can continue a text continue it; others get the message as sent.
    caller_prefix: String,
    /// Answer text the caller has from this relay (since the last restart).
    sent_text: String,
    sent_tokens: u64,
    /// The provider whose text the caller has, and why it stopped, when a rescue is under way.
    rescue_from: Option<(String, String)>,
    last_error: Option<ApiError>,
    /// The first provider's rejection of the request as invalid: the caller's answer when no
    /// provider takes the request (more telling than a later provider's outage).
    rejection: Option<ApiError>,
}

impl<'t, T: Transport> Relay<'t, T> {
    fn new(t: &'t T, job: RelayJob) -> Self {
        let deadline_ms = t.now_ms() + job.limits.overall_deadline_ms;
        let caller_prefix = match job.request.messages.last() {
            Some(last) if last["role"] == "assistant" && last.get("tool_calls").is_none() => {
                last["content"].as_str().unwrap_or_default().to_string()
            }
            _ => String::new(),
        };
        Relay {
            caller_prefix,
            t,
            request: job.request,
            limits: job.limits,
            hedge_ms: job.hedge_ms,
            prompt_tokens_estimate: job.prompt_tokens_estimate,
            deadline_ms,
            fresh: job.candidates.into(),
            retry: Vec::new(),
            too_small_context: None,
            attempts: Vec::new(),
            sent_text: String::new(),
            sent_tokens: 0,
            rescue_from: None,
            last_error: None,
            rejection: None,
        }
    }

    async fn run(mut self, emit: &mut dyn FnMut(Downstream) -> bool) -> RelayResult {
        loop {
            if self.max_tokens_left() == Some(0) {
                // The cut came exactly at the caller's max_tokens: the answer is complete.
                let provider = self.rescue_from.take().map(|(p, _)| p).unwrap_or_default();
                return self.finish(emit, provider, "length".into(), None);
            }
            let Some(candidate) = self.next_candidate().await else {
                break;
            };
            let hedge = self.hedge_partner();
            let started = match hedge {
                Some((partner, delay)) => self.hedged(candidate, partner, delay).await,
                None => {
                    let body = self.upstream_body(&candidate);
                    first_token(self.t, candidate, body, self.ttft_timeout()).await
                }
            };
            match started {
                Ok(started) => match self.stream(started, emit).await {
                    Some(result) => return result,
                    None => continue,
                },
                Err((candidate, failure)) => {
                    if let Some(error) = self.attempt_failed(candidate, failure, None, 0) {
                        // Refused by the provider: the caller's answer, not retried.
                        self.last_error = Some(error);
                        break;
                    }
                }
            }
        }
        self.give_up(emit)
    }

    fn max_tokens_left(&self) -> Option<u64> {
        self.request
            .max_tokens
            .map(|m| u64::from(m).saturating_sub(self.sent_tokens))
    }

    /// The next candidate to try, waiting for a retry time if that is all that is left.
    async fn next_candidate(&mut self) -> Option<Candidate> {
        if self.attempts.len() as u32 >= self.limits.max_attempts {
            return None;
        }
        let fits =
            |c: &Candidate, limit: Option<u32>| limit.is_none_or(|l| c.offer.context_length > l);
        let limit = self.too_small_context;
        self.fresh.retain(|c| fits(c, limit));
        // With text to continue (a rescue, or the caller's own prefill), the first provider that
        // can continue it goes before one that would restart the answer in view (or answer anew
        // after the caller's text), whatever their order by price or speed.
        let continuing = !self.sent_text.is_empty() || !self.caller_prefix.is_empty();
        let index = continuing
            .then(|| {
                self.fresh
                    .iter()
                    .position(|c| c.provider.prefill != Prefill::None)
            })
            .flatten()
            .unwrap_or(0);
        if let Some(candidate) = self.fresh.remove(index) {
            return Some(candidate);
        }
        self.retry.retain(|(c, _)| fits(c, limit));
        let index = (0..self.retry.len()).min_by_key(|&i| self.retry[i].1)?;
        let now = self.t.now_ms();
        let wait = self.retry[index].1.saturating_sub(now);
        if wait > self.limits.max_retry_after_ms || now.saturating_add(wait) >= self.deadline_ms {
            return None;
        }
        let (candidate, _) = self.retry.swap_remove(index);
        if wait > 0 {
            self.t.sleep(wait).await;
        }
        Some(candidate)
    }

    /// A second candidate to hedge with, when hedging is on and this is the answer's start.
    fn hedge_partner(&mut self) -> Option<(Candidate, u64)> {
        let delay = self.hedge_ms?;
        if !self.sent_text.is_empty() || self.attempts.len() as u32 + 2 > self.limits.max_attempts {
            return None;
        }
        let limit = self.too_small_context;
        let index = self
            .fresh
            .iter()
            .position(|c| limit.is_none_or(|l| c.offer.context_length > l))?;
        self.fresh.remove(index).map(|c| (c, delay))
    }

    /// Runs `first` and, if it has no token within `delay`, `second` beside it; the first to
    /// produce a token wins and the other is dropped (aborted), recorded as `hedge_lost`.
    async fn hedged(
        &mut self,
        first: Candidate,
        second: Candidate,
        delay: u64,
    ) -> Result<Started<T::Body>, (Candidate, Failure)> {
        let ttft = self.ttft_timeout();
        let t = self.t;
        let first_body = self.upstream_body(&first);
        let second_body = self.upstream_body(&second);
        let first_name = first.provider.name.clone();
        let mut first_attempt = pin!(first_token(t, first, first_body, ttft));
        let hedge_start = t.now_ms();
        if let Some(result) = within(t, delay, first_attempt.as_mut()).await {
            // Settled before the hedge was needed: the second goes back to the front of the queue.
            self.fresh.push_front(second);
            return result;
        }
        let second_name = second.provider.name.clone();
        let second_attempt = pin!(first_token(t, second, second_body, ttft));
        match select(first_attempt, second_attempt).await {
            Either::Left((Ok(started), _)) => {
                self.record_lost(&second_name, t.now_ms().saturating_sub(hedge_start + delay));
                Ok(started)
            }
            Either::Right((Ok(started), _)) => {
                self.record_lost(&first_name, t.now_ms().saturating_sub(hedge_start));
                Ok(started)
            }
            Either::Left((Err((candidate, failure)), other)) => {
                self.hedge_failed(candidate, failure, &second_name, hedge_start + delay, other)
                    .await
            }
            Either::Right((Err((candidate, failure)), other)) => {
                self.hedge_failed(candidate, failure, &first_name, hedge_start, other)
                    .await
            }
        }
    }

    /// One side of a hedge failed before its first token: the other goes on alone, unless the
    /// request itself was refused (then the other would be refused too, and is dropped).
    async fn hedge_failed<F>(
        &mut self,
        candidate: Candidate,
        failure: Failure,
        other_name: &str,
        other_start: u64,
        other: F,
    ) -> Result<Started<T::Body>, (Candidate, Failure)>
    where
        F: Future<Output = Result<Started<T::Body>, (Candidate, Failure)>>,
    {
        if matches!(failure, Failure::Refused { .. }) {
            self.record_lost(other_name, self.t.now_ms().saturating_sub(other_start));
            return Err((candidate, failure));
        }
        self.attempt_failed(candidate, failure, None, 0);
        other.await
    }

    fn record_lost(&mut self, provider: &str, duration_ms: u64) {
        self.attempts.push(AttemptRecord {
            provider: provider.to_string(),
            outcome: "hedge_lost".into(),
            status: None,
            ttft_ms: None,
            duration_ms,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            report: AttemptReport {
                provider: provider.to_string(),
                ok: false,
                provider_fault: false,
                ttft_ms: None,
                tokens_per_second: None,
                retry_after_ms: None,
            },
        });
    }

    /// Records a failed attempt and queues what comes next. Returns the caller's error when the
    /// request was refused (not retried anywhere).
    fn attempt_failed(
        &mut self,
        candidate: Candidate,
        failure: Failure,
        ttft_ms: Option<u64>,
        tokens: u64,
    ) -> Option<ApiError> {
        let now = self.t.now_ms();
        let provider = candidate.provider.name.clone();
        let mut report = AttemptReport {
            provider: provider.clone(),
            ok: false,
            provider_fault: false,
            ttft_ms,
            tokens_per_second: None,
            retry_after_ms: None,
        };
        let mut refused = None;
        match &failure {
            Failure::Transient {
                outcome,
                status,
                retry_after_ms,
                provider_fault,
            } => {
                report.provider_fault = *provider_fault;
                report.retry_after_ms = *retry_after_ms;
                let backoff = retry_after_ms.unwrap_or(RETRY_BACKOFF_MS);
                self.last_error = Some(match status {
                    Some(429) => ApiError::unavailable(
                        format!("provider {provider} is rate limited"),
                        Some(backoff.div_ceil(1000)),
                    ),
                    _ => {
                        ApiError::upstream_failed(format!("provider {provider} failed: {outcome}"))
                    }
                });
                self.retry.push((candidate, now.saturating_add(backoff)));
            }
            Failure::ContextLength => {
                let context = candidate.offer.context_length;
                self.too_small_context =
                    Some(self.too_small_context.map_or(context, |c| c.max(context)));
                let mut e = ApiError::invalid_request(
                    format!("the prompt is longer than the context of every provider tried (largest {context} tokens)"),
                    Some("messages"),
                );
                e.code = Some("context_length_exceeded".into());
                self.last_error = Some(e);
            }
            Failure::Refused { error, .. } if self.sent_text.is_empty() => {
                refused = Some((**error).clone())
            }
            // Refused while continuing an answer already under way: another provider may finish it.
            Failure::Refused { error, .. } => self.last_error = Some((**error).clone()),
            Failure::Rejected { error, .. } => {
                self.rejection.get_or_insert_with(|| (**error).clone());
            }
            Failure::Unusable { outcome, .. } => {
                report.provider_fault = true;
                self.last_error = Some(ApiError::upstream_failed(format!(
                    "provider {provider} failed: {outcome}"
                )));
            }
        }
        self.attempts.push(AttemptRecord {
            provider,
            outcome: failure.outcome(),
            status: failure.status(),
            ttft_ms,
            duration_ms: 0,
            prompt_tokens: 0,
            completion_tokens: tokens,
            cost_usd: 0.0,
            report,
        });
        refused
    }

    /// The upstream request body for `candidate`: the caller's request with the provider's model
    /// id, always streaming with usage, continuing the text already sent where possible.
    fn upstream_body(&self, candidate: &Candidate) -> String {
        let mut messages = self.request.messages.clone();
        let mut body = serde_json::Map::new();
        let text = format!("{}{}", self.caller_prefix, self.sent_text);
        let continued = match candidate.provider.prefill {
            _ if text.is_empty() => None,
            Prefill::None => None,
            Prefill::TrailingAssistant | Prefill::ContinueFinalMessage => {
                Some(json!({"role": "assistant", "content": text}))
            }
            Prefill::MistralPrefix => {
                Some(json!({"role": "assistant", "content": text, "prefix": true}))
            }
        };
        if let Some(message) = continued {
            if !self.caller_prefix.is_empty() {
                messages.pop(); // the caller's assistant message, continued in `text`
            }
            messages.push(message);
            if candidate.provider.prefill == Prefill::ContinueFinalMessage {
                body.insert("continue_final_message".into(), json!(true));
                body.insert("add_generation_prompt".into(), json!(false));
            }
        }
        body.insert("model".into(), json!(candidate.offer.upstream_model));
        body.insert("messages".into(), Value::Array(messages));
        for (k, v) in &self.request.sampling {
            body.insert(k.clone(), v.clone());
        }
        let continuing = !self.sent_text.is_empty() && candidate.provider.prefill != Prefill::None;
        let max_tokens = if continuing {
            self.max_tokens_left()
        } else {
            self.request.max_tokens.map(u64::from)
        };
        if let Some(m) = max_tokens {
            body.insert("max_tokens".into(), json!(m.max(1)));
        }
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
        Value::Object(body).to_string()
    }

    /// Streams a started attempt to the caller. Returns the request's result when it is over, or
    /// `None` to go on with the next candidate.
    async fn stream(
        &mut self,
        started: Started<T::Body>,
        emit: &mut dyn FnMut(Downstream) -> bool,
    ) -> Option<RelayResult> {
        let Started {
            candidate,
            mut reader,
            first,
            sent_ms,
            ttft_ms,
        } = started;
        let provider = candidate.provider.name.clone();
        let continuing = candidate.provider.prefill != Prefill::None;
        if let Some((from, reason)) = self.rescue_from.take() {
            if !continuing {
                // The discarded text's tokens are not part of the answer: not billed.
                self.sent_text.clear();
                self.sent_tokens = 0;
                for a in self
                    .attempts
                    .iter_mut()
                    .filter(|a| a.completion_tokens > 0 && a.outcome != "ok")
                {
                    a.completion_tokens = 0;
                    a.cost_usd = 0.0;
                }
            }
            if !emit(Downstream::Switch {
                from,
                to: provider.clone(),
                reason,
                continued: continuing,
            }) {
                return Some(self.cancelled(candidate, ttft_ms, 0, sent_ms));
            }
        }
        let first_text_ms = self.t.now_ms();
        let mut tokens = 0u64;
        let mut item = Some(first);
        let mut finish_reason = None;
        let mut usage = None;
        let end = loop {
            let current = match item.take() {
                Some(i) => Ok(Some(i)),
                None => reader.next(self.t, Some(self.stall_timeout())).await,
            };
            match current {
                Ok(Some(Item::Text(text))) => {
                    if finish_reason.is_some() {
                        continue; // text after the finish is not part of the answer
                    }
                    tokens += 1;
                    self.sent_tokens += 1;
                    self.sent_text.push_str(&text);
                    if !emit(Downstream::Delta {
                        provider: provider.clone(),
                        text,
                    }) {
                        break StreamEnd::CallerGone;
                    }
                }
                Ok(Some(Item::Finish(reason))) => finish_reason = Some(reason),
                Ok(Some(Item::Usage(u))) => usage = Some(u),
                Ok(Some(Item::Done)) | Ok(None) => match finish_reason.take() {
                    Some(reason) => {
                        break StreamEnd::Complete {
                            finish_reason: reason,
                            usage,
                        }
                    }
                    // [DONE] without a finish reason still ends the answer explicitly.
                    None if matches!(current, Ok(Some(Item::Done))) => {
                        break StreamEnd::Complete {
                            finish_reason: "stop".into(),
                            usage,
                        }
                    }
                    None => break StreamEnd::Failed(Failure::transient("cut", true)),
                },
                // After the finish reason the answer is whole: a missing [DONE] or usage is no loss.
                Err(_) if finish_reason.is_some() => {
                    break StreamEnd::Complete {
                        finish_reason: finish_reason.take().unwrap(),
                        usage,
                    }
                }
                Err(failure) => break StreamEnd::Failed(failure),
            }
        };
        let now = self.t.now_ms();
        let seconds = now.saturating_sub(first_text_ms) as f64 / 1000.0;
        let tokens_per_second =
            (tokens >= 4 && seconds > 0.0).then(|| (tokens - 1) as f64 / seconds);
        match end {
            StreamEnd::Complete {
                finish_reason,
                usage,
            } => {
                let prompt_tokens = usage.map_or(self.prompt_tokens_estimate, |u| u.prompt_tokens);
                let completion_tokens = usage.map_or(tokens, |u| u.completion_tokens.max(tokens));
                let cost = cost_usd(&candidate.offer, prompt_tokens, completion_tokens);
                self.attempts.push(AttemptRecord {
                    provider: provider.clone(),
                    outcome: "ok".into(),
                    status: Some(200),
                    ttft_ms: Some(ttft_ms),
                    duration_ms: now.saturating_sub(sent_ms),
                    prompt_tokens,
                    completion_tokens,
                    cost_usd: cost,
                    report: AttemptReport {
                        provider: provider.clone(),
                        ok: true,
                        provider_fault: false,
                        ttft_ms: Some(ttft_ms),
                        tokens_per_second,
                        retry_after_ms: None,
                    },
                });
                self.sent_tokens += completion_tokens - tokens;
                let result = self.finish(emit, provider, finish_reason, Some(prompt_tokens));
                // Read the body to its end (the caller already has everything): a response read to
                // the end lets the runtime reuse the connection for the next request.
                if !reader.ended {
                    let _ = within(self.t, self.limits.drain_deadline_ms, async {
                        while reader.body.next().await.is_some() {}
                    })
                    .await;
                }
                Some(result)
            }
            StreamEnd::CallerGone => Some(self.cancelled(candidate, ttft_ms, tokens, sent_ms)),
            StreamEnd::Failed(failure) => {
                // Text already sent stays the caller's: bill it, and continue elsewhere.
                let reason = failure.outcome();
                let prompt_tokens = self.prompt_tokens_estimate;
                let cost = cost_usd(&candidate.offer, prompt_tokens, tokens);
                let retry_at = now + RETRY_BACKOFF_MS;
                self.attempts.push(AttemptRecord {
                    provider: provider.clone(),
                    outcome: reason.clone(),
                    status: Some(200),
                    ttft_ms: Some(ttft_ms),
                    duration_ms: now.saturating_sub(sent_ms),
                    prompt_tokens,
                    completion_tokens: tokens,
                    cost_usd: cost,
                    report: AttemptReport {
                        provider: provider.clone(),
                        ok: false,
                        provider_fault: true,
                        ttft_ms: Some(ttft_ms),
                        tokens_per_second: None,
                        retry_after_ms: None,
                    },
                });
                self.last_error = Some(ApiError::upstream_failed(format!(
                    "provider {provider} stream {reason}"
                )));
                self.retry.push((candidate, retry_at));
                self.rescue_from = Some((provider, reason));
                None
            }
        }
    }

    /// The first-token deadline, cut short by the overall deadline.
    fn ttft_timeout(&self) -> u64 {
        let left = self.deadline_ms.saturating_sub(self.t.now_ms()).max(1);
        self.limits.ttft_deadline_ms.min(left)
    }

    fn stall_timeout(&self) -> u64 {
        let left = self.deadline_ms.saturating_sub(self.t.now_ms()).max(1);
        self.limits.stall_deadline_ms.min(left)
    }

    fn cancelled(
        &mut self,
        candidate: Candidate,
        ttft_ms: u64,
        tokens: u64,
        sent_ms: u64,
    ) -> RelayResult {
        let now = self.t.now_ms();
        let provider = candidate.provider.name.clone();
        let prompt_tokens = self.prompt_tokens_estimate;
        self.attempts.push(AttemptRecord {
            provider: provider.clone(),
            outcome: "client_cancelled".into(),
            status: Some(200),
            ttft_ms: Some(ttft_ms),
            duration_ms: now.saturating_sub(sent_ms),
            prompt_tokens,
            completion_tokens: tokens,
            cost_usd: cost_usd(&candidate.offer, prompt_tokens, tokens),
            report: AttemptReport {
                provider,
                ok: true,
                provider_fault: false,
                ttft_ms: Some(ttft_ms),
                tokens_per_second: None,
                retry_after_ms: None,
            },
        });
        self.result(RelayOutcome::Cancelled, prompt_tokens)
    }

    fn finish(
        &mut self,
        emit: &mut dyn FnMut(Downstream) -> bool,
        provider: String,
        finish_reason: String,
        prompt_tokens: Option<u64>,
    ) -> RelayResult {
        let result = self.result(
            RelayOutcome::Completed,
            prompt_tokens.unwrap_or(self.prompt_tokens_estimate),
        );
        emit(Downstream::Done {
            provider,
            finish_reason,
            usage: result.usage,
            cost_usd: result.cost_usd,
        });
        result
    }

    fn give_up(&mut self, emit: &mut dyn FnMut(Downstream) -> bool) -> RelayResult {
        let mut error = self
            .rejection
            .clone()
            .or_else(|| self.last_error.clone())
            .unwrap_or_else(|| {
                ApiError::unavailable("no provider is available for this model", Some(1))
            });
        let outcome = if self.sent_text.is_empty() {
            RelayOutcome::Failed
        } else {
            error = ApiError::upstream_failed(format!(
                "the answer is incomplete: every provider failed after {} tokens ({})",
                self.sent_tokens, error.message
            ));
            error.code = Some("incomplete_answer".into());
            RelayOutcome::Truncated
        };
        emit(Downstream::Failed { error });
        self.result(outcome, self.prompt_tokens_estimate)
    }

    fn result(&self, outcome: RelayOutcome, prompt_tokens: u64) -> RelayResult {
        let completion_tokens: u64 = self.attempts.iter().map(|a| a.completion_tokens).sum();
        let cost_usd = self.attempts.iter().map(|a| a.cost_usd).sum();
        RelayResult {
            outcome,
            attempts: self.attempts.clone(),
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            },
            cost_usd,
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
#[path = "relay_tests.rs"]
mod tests;
