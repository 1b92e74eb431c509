//! The relay against scripted upstreams on tokio's paused clock (timeouts are exact and instant).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;

use futures::Stream;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::*;
use crate::router::config::{ModelOffer, Provider};

/// How a scripted stream ends.
#[derive(Clone)]
enum End {
    Done,
    /// Finish reason sent, then the body ends without `[DONE]`.
    NoDone,
    /// Connection cut after the chunks (no finish reason).
    Cut,
    /// Silence after the chunks.
    Hang,
    /// An invalid event after the chunks.
    Malformed,
}

#[derive(Clone)]
enum Script {
    Status {
        code: u16,
        retry_after: Option<&'static str>,
        body: Value,
    },
    ConnectError,
    /// Headers at once, first chunk after `first_ms`, then the given chunks 10 ms apart.
    Stream {
        first_ms: u64,
        chunks: Vec<&'static str>,
        end: End,
    },
    /// Headers at once, then these bytes as they are, one read each, 10 ms apart.
    Raw(Vec<&'static str>),
}

fn ok(chunks: &[&'static str]) -> Script {
    Script::Stream {
        first_ms: 5,
        chunks: chunks.to_vec(),
        end: End::Done,
    }
}

struct FakeTransport {
    start: Instant,
    scripts: RefCell<HashMap<String, VecDeque<Script>>>,
    /// (provider, request body) per post, in order.
    posts: RefCell<Vec<(String, Value)>>,
}

type Body = Pin<Box<dyn Stream<Item = Result<Vec<u8>, String>>>>;

impl FakeTransport {
    fn new(scripts: &[(&str, Vec<Script>)]) -> Self {
        FakeTransport {
            start: Instant::now(),
            scripts: RefCell::new(
                scripts
                    .iter()
                    .map(|(p, s)| (p.to_string(), s.iter().cloned().collect()))
                    .collect(),
            ),
            posts: RefCell::new(Vec::new()),
        }
    }
    fn posts_to(&self, provider: &str) -> Vec<Value> {
        self.posts
            .borrow()
            .iter()
            .filter(|(p, _)| p == provider)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn event(value: Value) -> Vec<u8> {
    format!("data: {value}\n\n").into_bytes()
}

fn body_of(script: Script) -> Body {
    if let Script::Raw(reads) = script {
        return Box::pin(futures::stream::unfold(
            reads.into_iter(),
            |mut reads| async move {
                let read = reads.next()?;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                Some((Ok(read.as_bytes().to_vec()), reads))
            },
        ));
    }
    let Script::Stream {
        first_ms,
        chunks,
        end,
    } = script
    else {
        unreachable!()
    };
    let mut pieces: Vec<(u64, Result<Vec<u8>, String>)> = Vec::new();
    pieces.push((first_ms, Ok(event(json!({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]})))));
    for chunk in &chunks {
        pieces.push((10, Ok(event(json!({"choices": [{"index": 0, "delta": {"content": chunk}, "finish_reason": null}]})))));
    }
    let finish = event(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
    let usage = event(
        json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": chunks.len(), "total_tokens": 7 + chunks.len()}}),
    );
    let hang = match end {
        End::Done => {
            pieces.push((1, Ok(finish)));
            pieces.push((1, Ok(usage)));
            pieces.push((1, Ok(b"data: [DONE]\n\n".to_vec())));
            false
        }
        End::NoDone => {
            pieces.push((1, Ok(finish)));
            false
        }
        End::Cut => {
            pieces.push((1, Err("connection reset".into())));
            false
        }
        End::Hang => true,
        End::Malformed => {
            pieces.push((1, Ok(b"data: {\"choices\": [\n\n".to_vec())));
            false
        }
    };
    Box::pin(futures::stream::unfold(
        (pieces.into_iter(), hang),
        |(mut it, hang)| async move {
            match it.next() {
                Some((delay, item)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    Some((item, (it, hang)))
                }
                None if hang => {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    None
                }
                None => None,
            }
        },
    ))
}

impl Transport for FakeTransport {
    type Body = Body;
    async fn post(
        &self,
        provider: &Provider,
        body: String,
    ) -> Result<UpstreamResponse<Body>, String> {
        self.posts
            .borrow_mut()
            .push((provider.name.clone(), serde_json::from_str(&body).unwrap()));
        let script = self
            .scripts
            .borrow_mut()
            .get_mut(&provider.name)
            .and_then(VecDeque::pop_front);
        match script.unwrap_or_else(|| panic!("no script left for {}", provider.name)) {
            Script::ConnectError => Err("connection refused".into()),
            Script::Status {
                code,
                retry_after,
                body,
            } => Ok(UpstreamResponse {
                status: code,
                retry_after: retry_after.map(String::from),
                body: Box::pin(futures::stream::iter([Ok(body.to_string().into_bytes())])),
            }),
            stream => Ok(UpstreamResponse {
                status: 200,
                retry_after: None,
                body: body_of(stream),
            }),
        }
    }
    async fn sleep(&self, ms: u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await
    }
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    fn redact(&self, text: &str) -> String {
        let keys: Vec<String> = self.scripts.borrow().keys().map(|p| key_of(p)).collect();
        redact_secrets(text, keys.iter().map(String::as_str))
    }
}

/// The key this transport would send to `provider`.
fn key_of(provider: &str) -> String {
    format!("sk-fake-key-of-{provider}")
}

fn candidate(name: &str, prefill: Prefill, context_length: u32, price: f64) -> Candidate {
    Candidate {
        provider: Provider {
            name: name.into(),
            base_url: format!("http://{name}/v1"),
            api_key_secret: None,
            prefill,
            models: Vec::new(),
        },
        offer: ModelOffer {
            model: "m".into(),
            upstream_model: format!("{name}-m"),
            input_usd_per_mtok: price,
            output_usd_per_mtok: price * 2.0,
            context_length,
        },
    }
}

fn job(candidates: Vec<Candidate>, max_tokens: Option<u32>, hedge_ms: Option<u64>) -> RelayJob {
    let mut body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hello"}], "temperature": 0});
    if let Some(m) = max_tokens {
        body["max_tokens"] = json!(m);
    }
    let limits = Limits {
        ttft_deadline_ms: 1000,
        stall_deadline_ms: 500,
        ..Limits::default()
    };
    RelayJob {
        request: ChatRequest::parse(body.to_string().as_bytes()).unwrap(),
        candidates,
        limits,
        hedge_ms,
        prompt_tokens_estimate: 6,
    }
}

struct Run {
    events: Vec<Downstream>,
    result: RelayResult,
    elapsed_ms: u64,
}

impl Run {
    /// The caller's text, applying restarts.
    fn text(&self) -> String {
        let mut text = String::new();
        for e in &self.events {
            match e {
                Downstream::Delta { text: t, .. } => text.push_str(t),
                Downstream::Switch {
                    continued: false, ..
                } => text.clear(),
                _ => {}
            }
        }
        text
    }
    fn outcomes(&self) -> Vec<(&str, &str)> {
        self.result
            .attempts
            .iter()
            .map(|a| (a.provider.as_str(), a.outcome.as_str()))
            .collect()
    }
    fn done(&self) -> (&str, &str, Usage) {
        match self.events.last() {
            Some(Downstream::Done {
                provider,
                finish_reason,
                usage,
                ..
            }) => (provider, finish_reason, *usage),
            other => panic!("expected Done, got {other:?}"),
        }
    }
    fn failed(&self) -> &ApiError {
        match self.events.last() {
            Some(Downstream::Failed { error }) => error,
            other => panic!("expected Failed, got {other:?}"),
        }
    }
}

async fn run(t: &FakeTransport, job: RelayJob) -> Run {
    let mut events = Vec::new();
    let result = relay(t, job, &mut |e| {
        events.push(e);
        true
    })
    .await;
    // The shell ends the caller's body at the first last event: every run has one, at the end.
    let last: Vec<usize> = (0..events.len()).filter(|&i| events[i].is_last()).collect();
    assert_eq!(
        last,
        [events.len() - 1],
        "one last event, at the end: {events:?}"
    );
    Run {
        events,
        result,
        elapsed_ms: t.now_ms(),
    }
}

const WORDS: &[&str] = &["The", " sky", " is", " blue", "."];

#[tokio::test(start_paused = true)]
async fn a_healthy_provider_answers_with_usage_and_cost() {
    let t = FakeTransport::new(&[("a", vec![ok(WORDS)])]);
    let r = run(
        &t,
        job(
            vec![
                candidate("a", Prefill::None, 100, 1.0),
                candidate("b", Prefill::None, 100, 2.0),
            ],
            None,
            None,
        ),
    )
    .await;
    assert_eq!(r.text(), "The sky is blue.");
    assert_eq!(
        r.done(),
        (
            "a",
            "stop",
            Usage {
                prompt_tokens: 7,
                completion_tokens: 5,
                total_tokens: 12
            }
        )
    );
    assert_eq!(r.result.outcome, RelayOutcome::Completed);
    assert!((r.result.cost_usd - (7.0 * 1.0 + 5.0 * 2.0) / 1e6).abs() < 1e-15);
    let sent = &t.posts_to("a")[0];
    assert_eq!(sent["model"], "a-m");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["temperature"], 0);
    assert_eq!(r.result.attempts[0].ttft_ms, Some(15));
}

#[tokio::test(start_paused = true)]
async fn errors_before_the_first_token_fail_over() {
    let t = FakeTransport::new(&[
        (
            "a",
            vec![Script::Status {
                code: 503,
                retry_after: None,
                body: json!({}),
            }],
        ),
        ("b", vec![Script::ConnectError]),
        (
            "c",
            vec![Script::Stream {
                first_ms: 5000,
                chunks: WORDS.to_vec(),
                end: End::Done,
            }],
        ),
        ("d", vec![ok(WORDS)]),
    ]);
    let names = ["a", "b", "c", "d"];
    let r = run(
        &t,
        job(
            names
                .iter()
                .map(|n| candidate(n, Prefill::None, 100, 1.0))
                .collect(),
            None,
            None,
        ),
    )
    .await;
    assert_eq!(r.text(), "The sky is blue.");
    assert_eq!(
        r.outcomes(),
        [
            ("a", "http_503"),
            ("b", "connect_error"),
            ("c", "ttft_timeout"),
            ("d", "ok")
        ]
    );
    assert_eq!(r.done().0, "d");
    assert!(
        r.result.attempts[..3].iter().all(|a| a.cost_usd == 0.0),
        "failed attempts are not billed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_alone_is_retried_after_its_retry_after() {
    let t = FakeTransport::new(&[(
        "a",
        vec![
            Script::Status {
                code: 429,
                retry_after: Some("2"),
                body: json!({}),
            },
            ok(WORDS),
        ],
    )]);
    let r = run(
        &t,
        job(vec![candidate("a", Prefill::None, 100, 1.0)], None, None),
    )
    .await;
    assert_eq!(r.text(), "The sky is blue.");
    assert_eq!(r.outcomes(), [("a", "http_429"), ("a", "ok")]);
    assert!(r.elapsed_ms >= 2000, "waited {} ms", r.elapsed_ms);
    assert_eq!(r.result.attempts[0].report.retry_after_ms, Some(2000));
    assert!(
        !r.result.attempts[0].report.provider_fault,
        "a 429 does not count against the breaker"
    );
}

#[tokio::test(start_paused = true)]
async fn a_too_long_retry_after_fails_with_503_and_retry_after() {
    // An hour, and the largest number a header can hold (its milliseconds must not wrap around
    // to a short wait and an immediate retry).
    for (retry_after, seconds) in [
        ("3600", 3600),
        ("18446744073709551615", u64::MAX / 1000 + 1),
    ] {
        let t = FakeTransport::new(&[(
            "a",
            vec![Script::Status {
                code: 429,
                retry_after: Some(retry_after),
                body: json!({}),
            }],
        )]);
        let r = run(
            &t,
            job(vec![candidate("a", Prefill::None, 100, 1.0)], None, None),
        )
        .await;
        let e = r.failed();
        assert_eq!((e.status, e.retry_after_s), (503, Some(seconds)));
        assert_eq!(r.result.outcome, RelayOutcome::Failed);
        assert_eq!(t.posts_to("a").len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn context_length_goes_to_a_larger_context_never_the_same_one() {
    let too_long = json!({"error": {"message": "This model's maximum context length is 100 tokens", "code": "context_length_exceeded"}});
    let t = FakeTransport::new(&[
        (
            "small",
            vec![Script::Status {
                code: 400,
                retry_after: None,
                body: too_long.clone(),
            }],
        ),
        ("same", vec![]),
        ("big", vec![ok(WORDS)]),
    ]);
    let cands = vec![
        candidate("small", Prefill::None, 100, 1.0),
        candidate("same", Prefill::None, 100, 1.0),
        candidate("big", Prefill::None, 1000, 1.0),
    ];
    let r = run(&t, job(cands, None, None)).await;
    assert_eq!(r.outcomes(), [("small", "context_length"), ("big", "ok")]);
    assert!(t.posts_to("same").is_empty());
    // With no larger context left, the caller gets the context error.
    let t = FakeTransport::new(&[(
        "small",
        vec![Script::Status {
            code: 400,
            retry_after: None,
            body: too_long,
        }],
    )]);
    let r = run(
        &t,
        job(
            vec![candidate("small", Prefill::None, 100, 1.0)],
            None,
            None,
        ),
    )
    .await;
    assert_eq!(
        (r.failed().status, r.failed().code.as_deref()),
        (400, Some("context_length_exceeded"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_content_policy_refusal_is_the_callers_answer_and_not_retried() {
    let refusal = json!({"error": {"message": "flagged by content policy", "type": "invalid_request_error", "code": "content_policy_violation"}});
    let t = FakeTransport::new(&[
        (
            "a",
            vec![Script::Status {
                code: 400,
                retry_after: None,
                body: refusal,
            }],
        ),
        ("b", vec![]),
    ]);
    let r = run(
        &t,
        job(
            vec![
                candidate("a", Prefill::None, 100, 1.0),
                candidate("b", Prefill::None, 100, 1.0),
            ],
            None,
            None,
        ),
    )
    .await;
    let e = r.failed();
    assert_eq!(
        (e.status, e.code.as_deref(), e.message.as_str()),
        (
            400,
            Some("content_policy_violation"),
            "flagged by content policy"
        )
    );
    assert!(t.posts_to("b").is_empty());
    assert_eq!(r.outcomes(), [("a", "content_policy")]);
}

#[tokio::test(start_paused = true)]
async fn a_cut_stream_continues_on_a_prefill_provider_without_loss_or_repeat() {
    let t = FakeTransport::new(&[
        (
            "a",
            vec![Script::Stream {
                first_ms: 5,
                chunks: vec!["The", " sky"],
                end: End::Cut,
            }],
        ),
        ("b", vec![ok(&[" is", " blue", "."])]),
    ]);
    let r = run(
        &t,
        job(
            vec![
                candidate("a", Prefill::None, 100, 1.0),
                candidate("b", Prefill::MistralPrefix, 100, 1.0),
            ],
            Some(10),
            None,
        ),
    )
    .await;
    assert_eq!(r.text(), "The sky is blue.");
    assert!(r.events.contains(&Downstream::Switch {
        from: "a".into(),
        to: "b".into(),
        reason: "cut".into(),
        continued: true
    }));
    let rescue = &t.posts_to("b")[0];
    let last = rescue["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        last,
        json!({"role": "assistant", "content": "The sky", "prefix": true})
    );
    assert_eq!(
        rescue["max_tokens"], 8,
        "max_tokens less the two tokens already sent"
    );
    let (provider, reason, usage) = r.done();
    assert_eq!(
        (provider, reason, usage.completion_tokens),
        ("b", "stop", 5)
    );
    assert_eq!(r.outcomes(), [("a", "cut"), ("b", "ok")]);
    assert_eq!(
        r.result.attempts[0].completion_tokens, 2,
        "the delivered part is billed"
    );
}

#[tokio::test(start_paused = true)]
async fn continuation_styles_follow_the_provider() {
    for (prefill, expect_flag) in [
        (Prefill::ContinueFinalMessage, true),
        (Prefill::TrailingAssistant, false),
    ] {
        let t = FakeTransport::new(&[
            (
                "a",
                vec![Script::Stream {
                    first_ms: 5,
                    chunks: vec!["The"],
                    end: End::Malformed,
                }],
            ),
            ("b", vec![ok(&[" sky", " is", " blue", "."])]),
        ]);
        let r = run(
            &t,
            job(
                vec![
                    candidate("a", Prefill::None, 100, 1.0),
                    candidate("b", prefill, 100, 1.0),
                ],
                None,
                None,
            ),
        )
        .await;
        assert_eq!(r.text(), "The sky is blue.");
        assert_eq!(r.outcomes(), [("a", "malformed"), ("b", "ok")]);
        let body = &t.posts_to("b")[0];
        assert_eq!(
            body["messages"][1],
            json!({"role": "assistant", "content": "The"})
        );
        assert_eq!(body.get("continue_final_message").is_some(), expect_flag);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_restarts_visibly_where_no_prefill_is_possible() {
    let t = FakeTransport::new(&[
        (
            "a",
            vec![Script::Stream {
                first_ms: 5,
                chunks: vec!["The", " sky"],
                end: End::Hang,
            }],
        ),
        ("b", vec![ok(WORDS)]),
    ]);
    let r = run(
        &t,
        job(
            vec![
                candidate("a", Prefill::None, 100, 1.0),
                candidate("b", Prefill::None, 100, 1.0),
            ],
            None,
            None,
        ),
    )
    .await;
    assert_eq!(r.text(), "The sky is blue.");
    assert!(r.events.contains(&Downstream::Switch {
        from: "a".into(),
        to: "b".into(),
        reason: "stalled".into(),
        continued: false
    }));
    assert_eq!(
        t.posts_to("b")[0]["messages"].as_array().unwrap().len(),
        1,
        "a restart sends the original messages"
    );
    assert_eq!(r.outcomes(), [("a", "stalled"), ("b", "ok")]);
    assert_eq!(
        r.result.attempts[0].cost_usd, 0.0,
        "discarded text is not billed"
    );
    assert_eq!(r.done().2.completion_tokens, 5);
}

#[tokio::test(start_paused = true)]
async fn a_missing_done_after_the_finish_reason_is_a_complete_answer() {
    let t = FakeTransport::new(&[(
        "a",
        vec![Script::Stream {
            first_ms: 5,
            chunks: WORDS.to_vec(),
            end: End::NoDone,
        }],
    )]);
    let r = run(
        &t,
        job(vec![candidate("a", Prefill::None, 100, 1.0)], None, None),
    )
    .await;
    assert_eq!(r.text(), "The sky is blue.");
    assert_eq!(r.done().1, "stop");
    assert_eq!(
        r.done().2.prompt_tokens,
        6,
        "no usage from upstream: the estimate"
    );
}

#[tokio::test(start_paused = true)]
async fn when_every_rescue_fails_the_answer_ends_with_an_error_not_a_finish() {
    let cut = || Script::Stream {
        first_ms: 5,
        chunks: vec!["The"],
        end: End::Cut,
    };
    let t = FakeTransport::new(&[(
        "a",
        vec![
            cut(),
            Script::ConnectError,
            Script::ConnectError,
            Script::ConnectError,
        ],
    )]);
    let r = run(
        &t,
        job(
            vec![candidate("a", Prefill::TrailingAssistant, 100, 1.0)],
            None,
            None,
        ),
    )
    .await;
    assert_eq!(r.text(), "The");
    let e = r.failed();
    assert_eq!(
        (e.status, e.code.as_deref()),
        (502, Some("incomplete_answer"))
    );
    assert_eq!(r.result.outcome, RelayOutcome::Truncated);
    assert!(!r
        .events
        .iter()
        .any(|e| matches!(e, Downstream::Done { .. })));
    assert_eq!(r.result.attempts.len(), 4, "bounded by max_attempts");
}

#[tokio::test(start_paused = true)]
async fn a_cut_exactly_at_max_tokens_is_a_length_finish() {
    let t = FakeTransport::new(&[(
        "a",
        vec![Script::Stream {
            first_ms: 5,
            chunks: vec!["The", " sky"],
            end: End::Cut,
        }],
    )]);
    let r = run(
        &t,
        job(
            vec![candidate("a", Prefill::TrailingAssistant, 100, 1.0)],
            Some(2),
            None,
        ),
    )
    .await;
    assert_eq!(r.text(), "The sky");
    assert_eq!(r.done().1, "length");
}

#[tokio::test(start_paused = true)]
async fn hedging_starts_the_second_after_the_delay_and_the_first_token_wins() {
    let t = FakeTransport::new(&[
        (
            "slow",
            vec![Script::Stream {
                first_ms: 800,
                chunks: WORDS.to_vec(),
                end: End::Done,
            }],
        ),
        ("quick", vec![ok(WORDS)]),
    ]);
    let cands = vec![
        candidate("slow", Prefill::None, 100, 1.0),
        candidate("quick", Prefill::None, 100, 1.0),
    ];
    let r = run(&t, job(cands, None, Some(200))).await;
    assert_eq!(r.text(), "The sky is blue.");
    assert_eq!(r.done().0, "quick");
    assert_eq!(r.outcomes(), [("slow", "hedge_lost"), ("quick", "ok")]);
    assert_eq!(r.result.attempts[0].cost_usd, 0.0);
    assert!(
        r.elapsed_ms < 800,
        "the answer did not wait for the slow provider ({} ms)",
        r.elapsed_ms
    );
    // A first candidate that answers within the delay is never hedged.
    let t = FakeTransport::new(&[("slow", vec![ok(WORDS)]), ("quick", vec![])]);
    let cands = vec![
        candidate("slow", Prefill::None, 100, 1.0),
        candidate("quick", Prefill::None, 100, 1.0),
    ];
    let r = run(&t, job(cands, None, Some(200))).await;
    assert_eq!(r.outcomes(), [("slow", "ok")]);
    assert!(t.posts_to("quick").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_stops_the_relay() {
    let t = FakeTransport::new(&[("a", vec![ok(WORDS)])]);
    let mut seen = 0;
    let result = relay(
        &t,
        job(vec![candidate("a", Prefill::None, 100, 1.0)], None, None),
        &mut |_| {
            seen += 1;
            seen < 2
        },
    )
    .await;
    assert_eq!(result.outcome, RelayOutcome::Cancelled);
    assert_eq!(result.attempts[0].outcome, "client_cancelled");
    assert_eq!(result.attempts[0].completion_tokens, 2);
}

#[tokio::test(start_paused = true)]
async fn the_overall_deadline_bounds_every_wait() {
    let slow = || Script::Stream {
        first_ms: 1100,
        chunks: WORDS.to_vec(),
        end: End::Done,
    };
    let t = FakeTransport::new(&[("a", vec![slow()]), ("b", vec![slow()])]);
    let mut job = job(
        vec![
            candidate("a", Prefill::None, 100, 1.0),
            candidate("b", Prefill::None, 100, 1.0),
        ],
        None,
        None,
    );
    job.limits.overall_deadline_ms = 1200;
    let r = run(&t, job).await;
    assert_eq!(
        r.outcomes(),
        [("a", "ttft_timeout"), ("b", "ttft_timeout")],
        "b got only the time left"
    );
    assert!(r.elapsed_ms <= 1200, "{} ms", r.elapsed_ms);
    assert_eq!(r.failed().status, 502);
}

#[tokio::test(start_paused = true)]
async fn a_rescue_prefers_a_provider_that_continues_over_one_that_restarts() {
    let t = FakeTransport::new(&[
        (
            "a",
            vec![Script::Stream {
                first_ms: 5,
                chunks: vec!["The", " sky"],
                end: End::Cut,
            }],
        ),
        ("restarts", vec![]),
        ("continues", vec![ok(&[" is", " blue", "."])]),
    ]);
    let cands = vec![
        candidate("a", Prefill::None, 100, 1.0),
        candidate("restarts", Prefill::None, 100, 1.0),
        candidate("continues", Prefill::MistralPrefix, 100, 5.0),
    ];
    let r = run(&t, job(cands, None, None)).await;
    assert_eq!(r.text(), "The sky is blue.");
    assert_eq!(r.outcomes(), [("a", "cut"), ("continues", "ok")]);
    assert!(t.posts_to("restarts").is_empty());
    assert!(!r.events.iter().any(|e| matches!(
        e,
        Downstream::Switch {
            continued: false,
            ..
        }
    )));
}

fn status(code: u16, body: Value) -> Script {
    Script::Status {
        code,
        retry_after: None,
        body,
    }
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_rejects_the_request_hands_it_to_the_next() {
    let rejected = json!({"error": {"message": "Unrecognized request argument supplied: stream_options", "type": "invalid_request_error"}});
    let t = FakeTransport::new(&[("a", vec![status(400, rejected)]), ("b", vec![ok(WORDS)])]);
    let cands = vec![
        candidate("a", Prefill::None, 100, 1.0),
        candidate("b", Prefill::None, 100, 1.0),
    ];
    let r = run(&t, job(cands, None, None)).await;
    assert_eq!(r.text(), "The sky is blue.");
    assert_eq!(r.outcomes(), [("a", "http_400"), ("b", "ok")]);
    assert!(!r.result.attempts[0].report.provider_fault);
}

#[tokio::test(start_paused = true)]
async fn when_every_provider_fails_a_rejection_is_the_answer_without_the_key_it_echoed() {
    let echo = json!({"error": {"message": format!("invalid value for top_k (request sent with key {})", key_of("a")), "code": "invalid_value"}});
    let t = FakeTransport::new(&[
        ("a", vec![status(422, echo)]),
        (
            "b",
            // Down for an hour: not waited for.
            vec![Script::Status {
                code: 503,
                retry_after: Some("3600"),
                body: json!({}),
            }],
        ),
    ]);
    let cands = vec![
        candidate("a", Prefill::None, 100, 1.0),
        candidate("b", Prefill::None, 100, 1.0),
    ];
    let r = run(&t, job(cands, None, None)).await;
    let e = r.failed();
    assert_eq!((e.status, e.code.as_deref()), (422, Some("invalid_value")));
    assert_eq!(
        e.message,
        "invalid value for top_k (request sent with key [redacted])"
    );
    assert_eq!(r.result.outcome, RelayOutcome::Failed);
    // Rejected once: not retried on the same provider.
    assert_eq!(t.posts_to("a").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rescue_provider_that_rejects_the_prefill_hands_the_rest_to_the_next() {
    let t = FakeTransport::new(&[
        (
            "a",
            vec![Script::Stream {
                first_ms: 5,
                chunks: vec!["The", " sky"],
                end: End::Cut,
            }],
        ),
        (
            "b",
            vec![status(
                400,
                json!({"error": {"message": "prefix is not supported"}}),
            )],
        ),
        ("c", vec![ok(&[" is", " blue", "."])]),
    ]);
    let cands = vec![
        candidate("a", Prefill::None, 100, 1.0),
        candidate("b", Prefill::MistralPrefix, 100, 1.0),
        candidate("c", Prefill::TrailingAssistant, 100, 1.0),
    ];
    let r = run(&t, job(cands, None, None)).await;
    assert_eq!(r.text(), "The sky is blue.");
    assert_eq!(r.outcomes(), [("a", "cut"), ("b", "http_400"), ("c", "ok")]);
    assert_eq!(r.result.outcome, RelayOutcome::Completed);
}

const OPENING: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"The sky\"},\"finish_reason\":null}]}\n\n";

#[tokio::test(start_paused = true)]
async fn a_finish_before_a_bad_event_in_the_same_read_completes_the_answer() {
    let t = FakeTransport::new(&[(
        "a",
        vec![Script::Raw(vec![
            OPENING,
            concat!(
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" is blue.\"},\"finish_reason\":\"stop\"}]}\n\n",
                "data: {\"choices\": [\n\n",
            ),
        ])],
    )]);
    let r = run(
        &t,
        job(vec![candidate("a", Prefill::None, 100, 1.0)], None, None),
    )
    .await;
    assert_eq!(r.text(), "The sky is blue.");
    assert_eq!(r.done().1, "stop");
    assert_eq!(r.outcomes(), [("a", "ok")]);
}

#[tokio::test(start_paused = true)]
async fn events_without_a_choice_are_skipped_but_broken_ones_are_not() {
    // Azure opens with `"choices": []` and its filter results; some providers add their own events.
    let t = FakeTransport::new(&[(
        "a",
        vec![Script::Raw(vec![
            "data: {\"choices\":[],\"prompt_filter_results\":[{\"prompt_index\":0}]}\n\n",
            OPENING,
            "data: {\"type\":\"ping\"}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" is blue.\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
        ])],
    )]);
    let r = run(
        &t,
        job(vec![candidate("a", Prefill::None, 100, 1.0)], None, None),
    )
    .await;
    assert_eq!(r.text(), "The sky is blue.");
    assert_eq!(r.outcomes(), [("a", "ok")]);
    // Valid JSON that is not an event object, or whose choices are not a list, is malformed.
    for bad in ["data: [1, 2]\n\n", "data: {\"choices\": {\"0\": 1}}\n\n"] {
        let t = FakeTransport::new(&[
            ("a", vec![Script::Raw(vec![OPENING, bad])]),
            ("b", vec![ok(&[" is", " blue", "."])]),
        ]);
        let cands = vec![
            candidate("a", Prefill::None, 100, 1.0),
            candidate("b", Prefill::TrailingAssistant, 100, 1.0),
        ];
        let r = run(&t, job(cands, None, None)).await;
        assert_eq!(r.text(), "The sky is blue.", "{bad}");
        assert_eq!(r.outcomes(), [("a", "malformed"), ("b", "ok")], "{bad}");
    }
}

#[tokio::test(start_paused = true)]
async fn keep_alive_comments_do_not_hide_a_stall() {
    // An SSE comment every 10 ms and no token: stalled at the 500 ms stall deadline all the same.
    let mut reads = vec![OPENING];
    reads.extend(std::iter::repeat_n(": keep-alive\n\n", 100));
    let t = FakeTransport::new(&[
        ("a", vec![Script::Raw(reads)]),
        ("b", vec![ok(&[" is", " blue", "."])]),
    ]);
    let cands = vec![
        candidate("a", Prefill::None, 100, 1.0),
        candidate("b", Prefill::TrailingAssistant, 100, 1.0),
    ];
    let r = run(&t, job(cands, None, None)).await;
    assert_eq!(r.text(), "The sky is blue.");
    assert_eq!(r.outcomes(), [("a", "stalled"), ("b", "ok")]);
}

/// `job` with the caller's own start of the answer as a trailing assistant message.
fn job_continuing(candidates: Vec<Candidate>, start: &str) -> RelayJob {
    let mut job = job(candidates, None, None);
    job.request
        .messages
        .push(json!({"role": "assistant", "content": start}));
    job
}

#[tokio::test(start_paused = true)]
async fn the_callers_trailing_assistant_text_is_continued_in_each_providers_own_way() {
    let t = FakeTransport::new(&[
        ("plain", vec![]),
        (
            "mistral",
            vec![Script::Stream {
                first_ms: 5,
                chunks: vec![" is"],
                end: End::Cut,
            }],
        ),
        ("vllm", vec![ok(&[" blue", "."])]),
    ]);
    let cands = vec![
        candidate("plain", Prefill::None, 100, 1.0),
        candidate("mistral", Prefill::MistralPrefix, 100, 2.0),
        candidate("vllm", Prefill::ContinueFinalMessage, 100, 3.0),
    ];
    let r = run(&t, job_continuing(cands, "The sky")).await;
    // The relay's text is what comes after the caller's.
    assert_eq!(r.text(), " is blue.");
    assert_eq!(r.outcomes(), [("mistral", "cut"), ("vllm", "ok")]);
    assert!(t.posts_to("plain").is_empty());
    let first = &t.posts_to("mistral")[0];
    assert_eq!(
        first["messages"],
        json!([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "The sky", "prefix": true}])
    );
    let rescue = &t.posts_to("vllm")[0];
    assert_eq!(
        rescue["messages"],
        json!([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "The sky is"}])
    );
    assert_eq!(rescue["continue_final_message"], true);
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_cannot_continue_gets_the_callers_messages_as_sent() {
    let t = FakeTransport::new(&[("plain", vec![ok(&[" is", " blue", "."])])]);
    let r = run(
        &t,
        job_continuing(vec![candidate("plain", Prefill::None, 100, 1.0)], "The sky"),
    )
    .await;
    assert_eq!(r.text(), " is blue.");
    assert_eq!(
        t.posts_to("plain")[0]["messages"],
        json!([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "The sky"}])
    );
}
