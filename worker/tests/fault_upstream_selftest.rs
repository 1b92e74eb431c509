//! Self test of the fault-injecting upstream used by the router's end-to-end tests: every behaviour is
//! exercised with a real HTTP client, so a router test failure is never the upstream's fault.
#![cfg(not(target_arch = "wasm32"))]

#[path = "support/fault_upstream.rs"]
mod fault_upstream;

use std::time::{Duration, Instant};

use fault_upstream::{answer_chunks, answer_for, continuation_chunks, Behavior, FaultUpstream};
use futures::StreamExt;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn chat_body(tag: &str, stream: bool) -> Value {
    json!({"model": "m-1", "stream": stream, "messages": [{"role": "user", "content": format!("hi [t:{tag}] there")}]})
}

async fn post(
    up: &FaultUpstream,
    provider: &str,
    body: &Value,
) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!("{}/chat/completions", up.base_url(provider)))
        .json(body)
        .send()
        .await
}

/// Reads a streamed body to its end; returns the text and the error it ended with, if any.
async fn read_all(resp: reqwest::Response) -> (String, Option<reqwest::Error>) {
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => text.push_str(std::str::from_utf8(&bytes).unwrap()),
            Err(e) => return (text, Some(e)),
        }
    }
    (text, None)
}

/// The body received until 500 ms pass without a byte, on a response that must stay open.
async fn read_until_silent(resp: reqwest::Response) -> String {
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
            Ok(Some(Ok(b))) => text.push_str(std::str::from_utf8(&b).unwrap()),
            Ok(other) => panic!("the response ended instead of being held open: {other:?}"),
            Err(_) => return text,
        }
    }
}

/// The `data:` payloads of complete SSE events.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// Concatenated `delta.content` of the JSON chunk events.
fn content(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

fn finish_reasons(events: &[String]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn answer_chunks_concatenate_to_answer() {
    for tag in ["", "abc", "x y"] {
        let chunks = answer_chunks(tag);
        assert!(chunks.len() >= 10, "{chunks:?}");
        assert_eq!(chunks.concat(), answer_for(tag));
        assert!(answer_for(tag).contains(tag));
        assert!(chunks[1..].iter().all(|c| c.starts_with(' ')));
    }
}

#[tokio::test]
async fn normal_stream() {
    let up = FaultUpstream::start().await;
    let resp = post(&up, "a", &chat_body("n1", true)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (text, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    let ev = events(&text);
    assert_eq!(content(&ev), answer_for("n1"));
    assert_eq!(ev.last().unwrap(), "[DONE]");
    assert_eq!(finish_reasons(&ev), vec!["stop"]);
    let first: Value = serde_json::from_str(&ev[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["model"], "m-1");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(first["id"].as_str().unwrap().starts_with("up-"));
    // no usage chunk unless asked
    assert!(!text.contains("\"usage\""));
    assert_eq!(up.requests("n1", "a").len(), 1);
}

#[tokio::test]
async fn include_usage_chunk() {
    let up = FaultUpstream::start().await;
    let mut body = chat_body("u1", true);
    body["stream_options"] = json!({"include_usage": true});
    let (text, err) = read_all(post(&up, "a", &body).await.unwrap()).await;
    assert!(err.is_none());
    let ev = events(&text);
    let usage: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    let prompt_chars = "hi [t:u1] there".len() as u64;
    let chunks = answer_chunks("u1").len() as u64;
    assert_eq!(usage["usage"]["prompt_tokens"], prompt_chars / 4);
    assert_eq!(usage["usage"]["completion_tokens"], chunks);
    assert_eq!(usage["usage"]["total_tokens"], prompt_chars / 4 + chunks);
    assert_eq!(ev.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn non_stream_json() {
    let up = FaultUpstream::start().await;
    let resp = post(&up, "a", &chat_body("j1", false)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], answer_for("j1"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], answer_chunks("j1").len());
}

#[tokio::test]
async fn continuation_answers_the_rest() {
    let up = FaultUpstream::start().await;
    let answer = answer_for("c1");
    let chunks = answer_chunks("c1");
    let with_prefill = |prefix: &str| {
        let mut body = chat_body("c1", true);
        body["messages"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "assistant", "content": prefix, "prefix": true}));
        body
    };
    // prefix on a chunk boundary: same chunks as answer_chunks
    let prefix = chunks[..3].concat();
    let (text, _) = read_all(post(&up, "a", &with_prefill(&prefix)).await.unwrap()).await;
    assert_eq!(content(&events(&text)), answer[prefix.len()..]);
    assert_eq!(continuation_chunks("c1", &prefix), chunks[3..].to_vec());
    // prefix mid-chunk: first chunk is the remainder of the cut chunk
    let prefix = &answer[..prefix.len() + 2];
    let (text, _) = read_all(post(&up, "a", &with_prefill(prefix)).await.unwrap()).await;
    let ev = events(&text);
    assert_eq!(content(&ev), answer[prefix.len()..]);
    let first: Value = serde_json::from_str(&ev[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["content"], chunks[3][2..]);
    // the whole answer as prefix: nothing left but the finish
    let (text, _) = read_all(post(&up, "a", &with_prefill(&answer)).await.unwrap()).await;
    assert_eq!(content(&events(&text)), "");
    assert_eq!(finish_reasons(&events(&text)), vec!["stop"]);
    // mismatch fails loudly
    let (text, _) = read_all(
        post(&up, "a", &with_prefill("Something else"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(content(&events(&text)), "PREFILL-MISMATCH");
    assert_eq!(up.requests("c1", "a").len(), 4);
}

#[tokio::test]
async fn max_tokens_truncates_with_length() {
    let up = FaultUpstream::start().await;
    let mut body = chat_body("m1", true);
    body["max_tokens"] = json!(3);
    body["stream_options"] = json!({"include_usage": true});
    let (text, _) = read_all(post(&up, "a", &body).await.unwrap()).await;
    let ev = events(&text);
    assert_eq!(content(&ev), answer_chunks("m1")[..3].concat());
    assert_eq!(finish_reasons(&ev), vec!["length"]);
    assert!(text.contains("\"completion_tokens\":3"));
    let mut body = chat_body("m1", false);
    body["max_completion_tokens"] = json!(2);
    let v: Value = post(&up, "a", &body).await.unwrap().json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        answer_chunks("m1")[..2].concat()
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn status_once_then_normal() {
    let up = FaultUpstream::start().await;
    let err = json!({"error": {"message": "slow down", "type": "rate_limit_error"}});
    up.set(
        "s1",
        "a",
        Behavior::Status {
            code: 429,
            body: err.clone(),
            retry_after: Some(7),
            times: Some(1),
        },
    );
    let resp = post(&up, "a", &chat_body("s1", true)).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.json::<Value>().await.unwrap(), err);
    let resp = post(&up, "a", &chat_body("s1", true)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (text, _) = read_all(resp).await;
    assert_eq!(content(&events(&text)), answer_for("s1"));
    // other provider, same tag: unaffected
    assert_eq!(
        post(&up, "b", &chat_body("s1", true))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(up.requests("s1", "a").len(), 2);
    assert_eq!(up.requests("s1", "b").len(), 1);
    // times = None: always
    up.set(
        "s2",
        "a",
        Behavior::Status {
            code: 503,
            body: json!({}),
            retry_after: None,
            times: None,
        },
    );
    for _ in 0..3 {
        let resp = post(&up, "a", &chat_body("s2", false)).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().get("retry-after").is_none());
    }
}

#[tokio::test]
async fn reset_before_headers() {
    let up = FaultUpstream::start().await;
    up.set("r1", "a", Behavior::ResetBeforeHeaders { times: Some(1) });
    let err = post(&up, "a", &chat_body("r1", true)).await.unwrap_err();
    assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
    assert_eq!(
        post(&up, "a", &chat_body("r1", true))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(up.requests("r1", "a").len(), 2);
}

#[tokio::test]
async fn no_response_times_out() {
    let up = FaultUpstream::start().await;
    up.set("x1", "a", Behavior::NoResponse { times: Some(1) });
    let timeout_client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let url = format!("{}/chat/completions", up.base_url("a"));
    let err = timeout_client
        .post(&url)
        .json(&chat_body("x1", true))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let resp = timeout_client
        .post(&url)
        .json(&chat_body("x1", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.requests("x1", "a").len(), 2);
}

#[tokio::test]
async fn slow_first_token() {
    let up = FaultUpstream::start().await;
    up.set(
        "f1",
        "a",
        Behavior::SlowFirstToken {
            delay_ms: 400,
            times: None,
        },
    );
    let t0 = Instant::now();
    let resp = post(&up, "a", &chat_body("f1", true)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "headers late: {:?}",
        t0.elapsed()
    );
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "first chunk early: {:?}",
        t0.elapsed()
    );
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    while let Some(b) = stream.next().await {
        text.push_str(std::str::from_utf8(&b.unwrap()).unwrap());
    }
    assert_eq!(content(&events(&text)), answer_for("f1"));
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn cut_after_gives_body_error() {
    let up = FaultUpstream::start().await;
    up.set(
        "k1",
        "a",
        Behavior::CutAfter {
            after_chunks: 3,
            times: Some(1),
        },
    );
    let (text, err) = read_all(post(&up, "a", &chat_body("k1", true)).await.unwrap()).await;
    assert!(
        err.is_some(),
        "expected a body error, got clean end: {text}"
    );
    let ev = events(&text);
    assert_eq!(content(&ev), answer_chunks("k1")[..3].concat());
    assert!(!text.contains("[DONE]") && finish_reasons(&ev).is_empty());
    // times exhausted: normal again
    let (text, err) = read_all(post(&up, "a", &chat_body("k1", true)).await.unwrap()).await;
    assert!(err.is_none());
    assert_eq!(content(&events(&text)), answer_for("k1"));
    // non-streaming: truncated body is an error too
    up.set(
        "k1",
        "a",
        Behavior::CutAfter {
            after_chunks: 3,
            times: Some(1),
        },
    );
    assert!(post(&up, "a", &chat_body("k1", false))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .is_err());
}

#[tokio::test]
async fn stall_after_stalls() {
    let up = FaultUpstream::start().await;
    up.set(
        "t1",
        "a",
        Behavior::StallAfter {
            after_chunks: 2,
            times: None,
        },
    );
    let resp = post(&up, "a", &chat_body("t1", true)).await.unwrap();
    let text = read_until_silent(resp).await;
    assert_eq!(content(&events(&text)), answer_chunks("t1")[..2].concat());
    assert_eq!(events(&text).len(), 2);
}

#[tokio::test]
async fn malformed_after_sends_bad_event() {
    let up = FaultUpstream::start().await;
    up.set(
        "b1",
        "a",
        Behavior::MalformedAfter {
            after_chunks: 2,
            times: Some(1),
        },
    );
    let (text, err) = read_all(post(&up, "a", &chat_body("b1", true)).await.unwrap()).await;
    assert!(err.is_none(), "should end properly: {err:?}");
    let ev = events(&text);
    assert_eq!(ev.len(), 3);
    assert_eq!(content(&ev), answer_chunks("b1")[..2].concat());
    assert_eq!(ev[2], r#"{"choices": ["#);
    assert!(serde_json::from_str::<Value>(&ev[2]).is_err());
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn no_done_ends_without_done() {
    let up = FaultUpstream::start().await;
    up.set("d1", "a", Behavior::NoDone);
    let mut body = chat_body("d1", true);
    body["stream_options"] = json!({"include_usage": true});
    let (text, err) = read_all(post(&up, "a", &body).await.unwrap()).await;
    assert!(err.is_none(), "should end properly: {err:?}");
    let ev = events(&text);
    assert_eq!(content(&ev), answer_for("d1"));
    assert_eq!(finish_reasons(&ev), vec!["stop"]);
    assert!(text.contains("\"usage\""));
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn hold_after_done_keeps_the_connection_open() {
    let up = FaultUpstream::start().await;
    up.set("h1", "a", Behavior::HoldAfterDone);
    let resp = post(&up, "a", &chat_body("h1", true)).await.unwrap();
    let text = read_until_silent(resp).await;
    let ev = events(&text);
    assert_eq!(content(&ev), answer_for("h1"));
    assert_eq!(finish_reasons(&ev), vec!["stop"]);
    assert!(text.contains("[DONE]"));
}

#[tokio::test]
async fn requests_and_auth_headers_are_recorded() {
    let up = FaultUpstream::start().await;
    let url = |p: &str| format!("{}/chat/completions", up.base_url(p));
    for key in ["k-1", "k-2"] {
        client()
            .post(url("a"))
            .bearer_auth(key)
            .json(&chat_body("h1", false))
            .send()
            .await
            .unwrap();
    }
    client()
        .post(url("a"))
        .json(&chat_body("h1", false))
        .send()
        .await
        .unwrap();
    client()
        .post(url("b"))
        .bearer_auth("k-b")
        .json(&chat_body("h1", false))
        .send()
        .await
        .unwrap();
    // untagged request: tag ""
    let untagged = json!({"model": "m", "messages": [{"role": "user", "content": "no tag"}]});
    let v: Value = client()
        .post(url("a"))
        .json(&untagged)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], answer_for(""));

    assert_eq!(
        up.auth_headers("h1", "a"),
        vec![
            Some("Bearer k-1".to_string()),
            Some("Bearer k-2".to_string()),
            None
        ]
    );
    assert_eq!(
        up.auth_headers("h1", "b"),
        vec![Some("Bearer k-b".to_string())]
    );
    assert_eq!(up.requests("h1", "a").len(), 3);
    assert_eq!(up.requests("h1", "a")[0], chat_body("h1", false));
    assert_eq!(up.requests("", "a"), vec![untagged]);
    assert!(up.requests("h1", "c").is_empty());
}

#[tokio::test]
async fn models_404_413_and_drop() {
    let up = FaultUpstream::start().await;
    let resp = client()
        .get(format!("{}/models", up.base_url("a")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"object": "list", "data": []})
    );
    let resp = client()
        .get(format!("http://127.0.0.1:{}/nope", up.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_object());
    let huge = "x".repeat(8 * 1024 * 1024 + 1);
    let resp = client()
        .post(format!("{}/chat/completions", up.base_url("a")))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // dropping stops the server, including a connection held by NoResponse
    up.set("z1", "a", Behavior::NoResponse { times: None });
    let url = format!("{}/chat/completions", up.base_url("a"));
    let held =
        tokio::spawn(async move { client().post(url).json(&chat_body("z1", true)).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let port = up.port();
    drop(up);
    let err = tokio::time::timeout(Duration::from_secs(2), held)
        .await
        .expect("held request not released")
        .unwrap();
    assert!(err.is_err());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(client()
        .get(format!("http://127.0.0.1:{port}/p/a/v1/models"))
        .send()
        .await
        .is_err());
}
