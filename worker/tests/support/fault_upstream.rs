//! A fault-injecting OpenAI-compatible upstream for router integration tests.
//!
//! It is a real HTTP/1.1 server on 127.0.0.1 written on raw tokio sockets (no hyper/axum) because
//! several faults need byte-level control: resetting the TCP connection, cutting a chunked body
//! mid-way, stalling with the socket held open. Every response carries `Connection: close`, so there
//! is no keep-alive state to get wrong.
//!
//! Include it from an integration test with
//! `#[path = "support/fault_upstream.rs"] mod fault_upstream;`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Largest request body accepted; bigger ones get 413.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Largest request head (request line + headers); bigger ones get 431.
const MAX_HEAD: usize = 64 * 1024;
/// How long the "never answer" faults hold a socket open (unless the server is dropped first).
const HOLD: Duration = Duration::from_secs(120);
/// Pause between stream events, so clients see a real stream rather than one burst.
const CHUNK_GAP: Duration = Duration::from_millis(3);

/// The full answer the upstream gives for a tag. Deterministic and contains the tag.
pub fn answer_for(tag: &str) -> String {
    format!("Answer for {tag}: the quick brown fox jumps over the lazy dog.")
}

/// How `answer_for(tag)` is split into stream chunks: one word per chunk, each word with its
/// leading space except the first. Concatenation == `answer_for(tag)`.
pub fn answer_chunks(tag: &str) -> Vec<String> {
    let answer = answer_for(tag);
    let mut words = answer.split(' ');
    let mut chunks = vec![words.next().unwrap_or("").to_string()];
    chunks.extend(words.map(|w| format!(" {w}")));
    chunks
}

/// The chunks the upstream sends when the last message is an assistant prefill `prefix`: the rest of
/// `answer_for(tag)` with the same chunk boundaries (a chunk cut by the prefix is sent as its
/// remainder), or the single chunk `"PREFILL-MISMATCH"` if the answer does not start with `prefix`.
pub fn continuation_chunks(tag: &str, prefix: &str) -> Vec<String> {
    if !answer_for(tag).starts_with(prefix) {
        return vec!["PREFILL-MISMATCH".to_string()];
    }
    let mut out = Vec::new();
    let mut start = 0;
    for chunk in answer_chunks(tag) {
        let end = start + chunk.len();
        if end > prefix.len() {
            // `prefix` is a prefix of the answer, so `prefix.len()` is a char boundary of it.
            out.push(chunk[prefix.len().saturating_sub(start)..].to_string());
        }
        start = end;
    }
    out
}

/// What the upstream does with requests for one (tag, provider).
#[derive(Clone, Debug)]
pub enum Behavior {
    Normal,
    /// Answer with this HTTP status and JSON body (e.g. an OpenAI error object) for the first `times`
    /// requests (None = always), then behave Normal. `retry_after` adds a `Retry-After: <secs>` header.
    Status {
        code: u16,
        body: Value,
        retry_after: Option<u32>,
        times: Option<u32>,
    },
    /// Read the request, then reset the TCP connection (SO_LINGER 0 then drop) before any response byte.
    ResetBeforeHeaders {
        times: Option<u32>,
    },
    /// Read the request and never answer (hold the socket open ~120 s or until the server is dropped).
    NoResponse {
        times: Option<u32>,
    },
    /// Send 200 + headers at once, then wait `delay_ms` before the first chunk; then Normal streaming.
    /// (Non-streaming requests: headers are sent after the delay, with the whole body.)
    SlowFirstToken {
        delay_ms: u64,
        times: Option<u32>,
    },
    /// Stream `after_chunks` content chunks, then close the socket abruptly (no [DONE], no
    /// terminating 0-size chunk). Non-streaming: half of the Content-Length body, then close.
    CutAfter {
        after_chunks: usize,
        times: Option<u32>,
    },
    /// Stream `after_chunks` chunks, then send nothing more while holding the connection open (~120 s).
    /// Non-streaming: half of the Content-Length body, then hold.
    StallAfter {
        after_chunks: usize,
        times: Option<u32>,
    },
    /// Stream `after_chunks` chunks, then one event `data: {"choices": [` (invalid JSON), then close
    /// properly (terminating 0-size chunk, no [DONE]). Non-streaming: 200 with body `{"choices": [`.
    MalformedAfter {
        after_chunks: usize,
        times: Option<u32>,
    },
    /// Stream the whole answer with finish_reason "stop" (and usage if asked) but no `data: [DONE]`,
    /// then end the response properly. Non-streaming: same as Normal.
    NoDone,
    /// Stream the whole answer and `data: [DONE]`, then hold the connection open (~120 s) without
    /// ending the response. Non-streaming: same as Normal.
    HoldAfterDone,
}

impl Behavior {
    /// How many requests get this fault (None = all of them).
    fn times(&self) -> Option<u32> {
        match self {
            Behavior::Normal | Behavior::NoDone | Behavior::HoldAfterDone => None,
            Behavior::Status { times, .. }
            | Behavior::ResetBeforeHeaders { times }
            | Behavior::NoResponse { times }
            | Behavior::SlowFirstToken { times, .. }
            | Behavior::CutAfter { times, .. }
            | Behavior::StallAfter { times, .. }
            | Behavior::MalformedAfter { times, .. } => *times,
        }
    }
}

type Key = (String, String);

/// Shared between the test (configuration, inspection) and the connection tasks.
#[derive(Default)]
struct State {
    behaviors: HashMap<Key, Behavior>,
    /// Faulty answers already given per key, for `times`.
    faults_given: HashMap<Key, u32>,
    requests: HashMap<Key, Vec<Value>>,
    auth: HashMap<Key, Vec<Option<String>>>,
}

impl State {
    /// Records one chat request and decides how to answer it.
    fn record_and_pick(&mut self, key: Key, body: Value, auth: Option<String>) -> Behavior {
        self.requests.entry(key.clone()).or_default().push(body);
        self.auth.entry(key.clone()).or_default().push(auth);
        let behavior = self
            .behaviors
            .get(&key)
            .cloned()
            .unwrap_or(Behavior::Normal);
        if matches!(behavior, Behavior::Normal) {
            return behavior;
        }
        let given = self.faults_given.entry(key).or_default();
        if behavior.times().is_some_and(|t| *given >= t) {
            return Behavior::Normal;
        }
        *given += 1;
        behavior
    }
}

/// A running fault-injecting upstream. Stops (listener and every open connection) when dropped.
pub struct FaultUpstream {
    port: u16,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

impl FaultUpstream {
    /// Binds 127.0.0.1:0 and spawns the accept loop on the current tokio runtime.
    pub async fn start() -> FaultUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fault upstream");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            // Owned by this task: aborting it drops the set, which aborts every connection task
            // (so NoResponse/StallAfter sockets close when the server is dropped).
            let mut conns = JoinSet::new();
            loop {
                match listener.accept().await {
                    Ok((sock, _)) => {
                        while conns.try_join_next().is_some() {}
                        conns.spawn(handle_conn(sock, shared.clone()));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        FaultUpstream {
            port,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Base URL for one provider name, e.g. `http://127.0.0.1:PORT/p/<provider>/v1`.
    pub fn base_url(&self, provider: &str) -> String {
        format!("http://127.0.0.1:{}/p/{provider}/v1", self.port)
    }

    /// Behaviour for requests carrying `tag` that reach `provider` (default: Normal).
    /// Also resets the `times` counter for that pair.
    pub fn set(&self, tag: &str, provider: &str, behavior: Behavior) {
        let key = (tag.to_string(), provider.to_string());
        let mut st = self.state.lock().unwrap();
        st.faults_given.remove(&key);
        st.behaviors.insert(key, behavior);
    }

    /// Request bodies (parsed JSON) received for (tag, provider), in order. A body that is not JSON
    /// is recorded under tag "" as a JSON string.
    pub fn requests(&self, tag: &str, provider: &str) -> Vec<Value> {
        let key = (tag.to_string(), provider.to_string());
        self.state
            .lock()
            .unwrap()
            .requests
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// The Authorization header values seen for (tag, provider), in order.
    pub fn auth_headers(&self, tag: &str, provider: &str) -> Vec<Option<String>> {
        let key = (tag.to_string(), provider.to_string());
        self.state
            .lock()
            .unwrap()
            .auth
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for FaultUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 request parsing

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request. `Ok(Err(status))` means "answer with this error status".
async fn read_request(stream: &mut TcpStream) -> io::Result<Result<Request, u16>> {
    let mut r = BufReader::new(stream);
    let mut head_len = 0;
    let request_line = read_line(&mut r, &mut head_len).await?;
    let mut parts = request_line.split(' ');
    let (method, target) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => (m.to_string(), t.to_string()),
        _ => return Ok(Err(400)),
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut r, &mut head_len).await?;
        if head_len > MAX_HEAD {
            return Ok(Err(431));
        }
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let mut req = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };

    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        // Not expected from the router, but cheap to support so a streamed request body still works.
        loop {
            let size_line = read_line(&mut r, &mut head_len).await?;
            let size_hex = size_line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size_hex, 16) else {
                return Ok(Err(400));
            };
            if size == 0 {
                while !read_line(&mut r, &mut head_len).await?.is_empty() {} // trailers
                break;
            }
            if req.body.len() + size > MAX_BODY {
                return Ok(Err(413));
            }
            let at = req.body.len();
            req.body.resize(at + size, 0);
            r.read_exact(&mut req.body[at..]).await?;
            read_line(&mut r, &mut head_len).await?; // CRLF after the data
        }
    } else if let Some(len) = req.header("content-length") {
        let Ok(len) = len.parse::<usize>() else {
            return Ok(Err(400));
        };
        if len > MAX_BODY {
            return Ok(Err(413));
        }
        req.body.resize(len, 0);
        r.read_exact(&mut req.body).await?;
    }
    Ok(Ok(req))
}

/// One CRLF (or LF) terminated line without its terminator; EOF before it is an error.
async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    total: &mut usize,
) -> io::Result<String> {
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line).await?;
    if n == 0 || !line.ends_with(b"\n") {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    *total += n;
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Routing and answering

async fn handle_conn(mut stream: TcpStream, state: Arc<Mutex<State>>) -> io::Result<()> {
    let _ = stream.set_nodelay(true); // each SSE event leaves at once
    let req = match read_request(&mut stream).await? {
        Ok(req) => req,
        Err(code) => {
            respond_json(&mut stream, code, &error_body(reason(code)), None).await?;
            return close(stream).await;
        }
    };
    let path = req.target.split('?').next().unwrap_or("");
    let route = path.strip_prefix("/p/").and_then(|p| p.split_once('/'));
    match (req.method.as_str(), route) {
        ("GET", Some((_, "v1/models"))) => {
            respond_json(
                &mut stream,
                200,
                &json!({"object": "list", "data": []}),
                None,
            )
            .await?;
        }
        ("POST", Some((provider, "v1/chat/completions"))) => {
            let provider = provider.to_string();
            return chat(stream, &state, &provider, &req).await;
        }
        _ => {
            respond_json(
                &mut stream,
                404,
                &error_body(&format!("no route for {path}")),
                None,
            )
            .await?
        }
    }
    close(stream).await
}

/// Everything about the answer that comes from the request itself.
struct Plan {
    model: Value,
    stream: bool,
    include_usage: bool,
    chunks: Vec<String>,
    finish: &'static str,
    prompt_tokens: u64,
}

impl Plan {
    fn from_request(tag: &str, body: &Value) -> Plan {
        let empty = Vec::new();
        let messages = body["messages"].as_array().unwrap_or(&empty);
        let mut chunks = match messages.last() {
            Some(last) if last["role"] == "assistant" => {
                continuation_chunks(tag, &content_text(last))
            }
            _ => answer_chunks(tag),
        };
        let mut finish = "stop";
        if let Some(max) = body["max_tokens"]
            .as_u64()
            .or(body["max_completion_tokens"].as_u64())
        {
            if (max as usize) < chunks.len() {
                chunks.truncate(max as usize);
                finish = "length";
            }
        }
        let chars: usize = messages
            .iter()
            .map(|m| content_text(m).chars().count())
            .sum();
        Plan {
            model: body["model"].clone(),
            stream: body["stream"].as_bool() == Some(true),
            include_usage: body["stream_options"]["include_usage"].as_bool() == Some(true),
            chunks,
            finish,
            prompt_tokens: (chars as u64 / 4).max(1),
        }
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        let c = completion_tokens as u64;
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": c, "total_tokens": self.prompt_tokens + c})
    }
}

/// A message's text: string content, or the `text` of its parts.
fn content_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// The first `[t:<tag>]` in any message's content, or "".
fn find_tag(body: &Value) -> String {
    let Some(messages) = body["messages"].as_array() else {
        return String::new();
    };
    for m in messages {
        let text = content_text(m);
        if let Some(start) = text.find("[t:") {
            if let Some(len) = text[start + 3..].find(']') {
                return text[start + 3..start + 3 + len].to_string();
            }
        }
    }
    String::new()
}

async fn chat(
    mut stream: TcpStream,
    state: &Mutex<State>,
    provider: &str,
    req: &Request,
) -> io::Result<()> {
    let auth = req.header("authorization").map(str::to_string);
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        let raw = Value::String(String::from_utf8_lossy(&req.body).into_owned());
        state
            .lock()
            .unwrap()
            .record_and_pick((String::new(), provider.to_string()), raw, auth);
        respond_json(&mut stream, 400, &error_body("body is not JSON"), None).await?;
        return close(stream).await;
    };
    let tag = find_tag(&body);
    let plan = Plan::from_request(&tag, &body);
    let behavior = state
        .lock()
        .unwrap()
        .record_and_pick((tag, provider.to_string()), body, auth);

    match behavior {
        Behavior::Status {
            code,
            body,
            retry_after,
            ..
        } => {
            respond_json(&mut stream, code, &body, retry_after).await?;
            close(stream).await
        }
        Behavior::ResetBeforeHeaders { .. } => {
            // Linger 0 turns the close into an RST instead of a FIN.
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
            drop(stream);
            Ok(())
        }
        Behavior::NoResponse { .. } => {
            tokio::time::sleep(HOLD).await;
            Ok(())
        }
        other if plan.stream => stream_answer(stream, &plan, &other).await,
        other => json_answer(stream, &plan, &other).await,
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How a (streaming or not) answer ends, derived from the behaviour.
enum Ending {
    Normal,
    Cut,
    Stall,
    Malformed,
    NoDone,
    HoldAfterDone,
}

fn ending_of(behavior: &Behavior) -> (Option<usize>, Ending) {
    match behavior {
        Behavior::CutAfter { after_chunks, .. } => (Some(*after_chunks), Ending::Cut),
        Behavior::StallAfter { after_chunks, .. } => (Some(*after_chunks), Ending::Stall),
        Behavior::MalformedAfter { after_chunks, .. } => (Some(*after_chunks), Ending::Malformed),
        Behavior::NoDone => (None, Ending::NoDone),
        Behavior::HoldAfterDone => (None, Ending::HoldAfterDone),
        _ => (None, Ending::Normal),
    }
}

async fn stream_answer(mut stream: TcpStream, plan: &Plan, behavior: &Behavior) -> io::Result<()> {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await?;
    if let Behavior::SlowFirstToken { delay_ms, .. } = behavior {
        tokio::time::sleep(Duration::from_millis(*delay_ms)).await;
    }
    let (stop_after, ending) = ending_of(behavior);
    let id = format!("up-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let created = unix_now();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": plan.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };

    let mut sent = 0;
    for (i, text) in plan.chunks.iter().enumerate() {
        if stop_after.is_some_and(|n| i >= n) {
            break;
        }
        if i > 0 {
            tokio::time::sleep(CHUNK_GAP).await;
        }
        let delta = if i == 0 {
            json!({"role": "assistant", "content": text})
        } else {
            json!({"content": text})
        };
        send_event(&mut stream, &chunk(delta, Value::Null)).await?;
        sent += 1;
    }

    match ending {
        Ending::Cut => {
            // A plain FIN in the middle of a chunked body: the client sees an incomplete body.
            drop(stream);
            return Ok(());
        }
        Ending::Stall => {
            tokio::time::sleep(HOLD).await;
            return Ok(());
        }
        Ending::Malformed => {
            tokio::time::sleep(CHUNK_GAP).await;
            send_event(&mut stream, r#"{"choices": ["#).await?;
        }
        Ending::Normal | Ending::NoDone | Ending::HoldAfterDone => {
            tokio::time::sleep(CHUNK_GAP).await;
            send_event(&mut stream, &chunk(json!({}), json!(plan.finish))).await?;
            if plan.include_usage {
                let usage = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                   "model": plan.model, "choices": [], "usage": plan.usage(sent)});
                send_event(&mut stream, &usage.to_string()).await?;
            }
            if !matches!(ending, Ending::NoDone) {
                send_event(&mut stream, "[DONE]").await?;
            }
            if matches!(ending, Ending::HoldAfterDone) {
                tokio::time::sleep(HOLD).await;
                return Ok(());
            }
        }
    }
    stream.write_all(b"0\r\n\r\n").await?;
    close(stream).await
}

/// Writes one SSE event `data: <data>\n\n` as its own HTTP chunk.
async fn send_event(stream: &mut TcpStream, data: &str) -> io::Result<()> {
    let event = format!("data: {data}\n\n");
    let framed = format!("{:x}\r\n{event}\r\n", event.len());
    stream.write_all(framed.as_bytes()).await?;
    stream.flush().await
}

async fn json_answer(mut stream: TcpStream, plan: &Plan, behavior: &Behavior) -> io::Result<()> {
    if let Behavior::SlowFirstToken { delay_ms, .. } = behavior {
        tokio::time::sleep(Duration::from_millis(*delay_ms)).await;
    }
    let text: String = plan.chunks.concat();
    let body = json!({
        "id": format!("up-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        "object": "chat.completion", "created": unix_now(), "model": plan.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": plan.finish}],
        "usage": plan.usage(plan.chunks.len()),
    });
    let bytes = body.to_string().into_bytes();
    match ending_of(behavior).1 {
        Ending::Normal | Ending::NoDone | Ending::HoldAfterDone => {
            respond_json(&mut stream, 200, &body, None).await?
        }
        Ending::Malformed => {
            write_head(
                &mut stream,
                200,
                "application/json",
                br#"{"choices": ["#.len(),
                None,
            )
            .await?;
            stream.write_all(br#"{"choices": ["#).await?;
        }
        ending @ (Ending::Cut | Ending::Stall) => {
            write_head(&mut stream, 200, "application/json", bytes.len(), None).await?;
            stream.write_all(&bytes[..bytes.len() / 2]).await?;
            if matches!(ending, Ending::Stall) {
                tokio::time::sleep(HOLD).await;
            }
            return Ok(());
        }
    }
    close(stream).await
}

fn error_body(message: &str) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error", "code": null}})
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

async fn write_head(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    len: usize,
    retry_after: Option<u32>,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n",
        reason(code)
    );
    if let Some(secs) = retry_after {
        head.push_str(&format!("Retry-After: {secs}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await
}

async fn respond_json(
    stream: &mut TcpStream,
    code: u16,
    body: &Value,
    retry_after: Option<u32>,
) -> io::Result<()> {
    let bytes = body.to_string().into_bytes();
    write_head(stream, code, "application/json", bytes.len(), retry_after).await?;
    stream.write_all(&bytes).await?;
    stream.flush().await
}

/// Ends a response cleanly: FIN, then drain whatever the client still sends (e.g. the rest of a
/// rejected oversized body) so the kernel does not answer it with an RST that could hide the response.
async fn close(mut stream: TcpStream) -> io::Result<()> {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}
