//! `edgechat serve`: an OpenAI-compatible HTTP server.
//!
//! Endpoints: `POST /v1/chat/completions` (plain and `stream: true` server-sent events),
//! `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`.
//!
//! The engine holds one sequence (one KV cache), so it lives on its own thread and takes requests
//! one at a time, in arrival order, from a bounded queue: when it is full a request is refused at
//! once with 503 and a `Retry-After` header rather than held open. Each request gets a channel its
//! tokens come back through; when the client goes away (the response future or the event stream
//! is dropped) the request's cancel token is set and the engine stops at the next token.
//! Consecutive requests that share a prefix (a growing conversation) reuse the cached keys and
//! values.
//!
//! Assistant prefill: when the LAST message has role `assistant`, the server does not start a new
//! answer. It renders the conversation before that message with the generation prompt, appends the
//! assistant text (tokenized as plain text) and continues it. The returned content holds only the
//! continuation, not the prefilled text. The router worker uses this to resume a partial answer.
//!
//! Sampling defaults follow OpenAI (temperature 1, top_p 1) plus llama.cpp's server filters
//! (top-k 40, min-p 0.05), which keep small models coherent at temperature 1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::common::{BackendArg, CliError, CliResult};
use edgechat::chat::Message;
use edgechat::sampling::SamplingParams;
use edgechat::session::{CancelToken, Engine, FinishReason};

/// Request bodies larger than this are refused with 413.
const MAX_BODY_BYTES: usize = 4 << 20;

/// Requests that may wait for the engine (besides the one it is running). Each holds a
/// connection and its parsed body; beyond this they are refused with 503.
const MAX_QUEUED_JOBS: usize = 16;

/// Seconds a client refused because the queue is full is told to wait (`Retry-After`).
const RETRY_AFTER_SECONDS: &str = "5";

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model file
    #[arg(long, short)]
    model: PathBuf,
    #[command(flatten)]
    backend: BackendArg,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the chosen port is printed)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Model id reported by /v1/models and in responses (default: the file name without .gguf)
    #[arg(long)]
    model_name: Option<String>,
}

pub fn main(args: Args) -> CliResult {
    let model_name = args.model_name.clone().unwrap_or_else(|| {
        args.model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "edgechat".into())
    });
    let (jobs, context_length) = start_engine_thread(args.model.clone(), args.backend.backend)?;
    let state = AppState {
        jobs,
        model_name,
        created: unix_time(),
        context_length,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .map_err(|e| {
                CliError::Usage(format!("cannot listen on {}:{}: {e}", args.host, args.port))
            })?;
        let address: SocketAddr = listener.local_addr()?;
        println!("listening on http://{address}");
        // Tests and scripts read this line from a pipe: make sure it leaves now.
        use std::io::Write;
        std::io::stdout().flush()?;
        let app = router(state);
        tokio::select! {
            served = axum::serve(listener, app) => served?,
            _ = tokio::signal::ctrl_c() => eprintln!("shutting down"),
        }
        Ok(())
    })
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[derive(Clone)]
struct AppState {
    jobs: std_mpsc::SyncSender<ChatJob>,
    model_name: String,
    created: u64,
    context_length: usize,
}

// ---------------------------------------------------------------------------------------------
// Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    fn server(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// OpenAI's wording. The prompt must leave room for at least one generated token.
    fn context_length_exceeded(prompt_tokens: usize, limit: usize) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "This model's maximum context length is {limit} tokens. However, your messages resulted in \
                 {prompt_tokens} tokens, which leaves no room for the completion."
            ),
            kind: "invalid_request_error",
            param: Some("messages"),
            code: Some("context_length_exceeded"),
        }
    }

    fn body(&self) -> Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// What an engine error means to the client.
    fn from_engine(e: edgechat::Error) -> Self {
        match e {
            edgechat::Error::ContextLength { needed, limit } => {
                Self::context_length_exceeded(needed, limit)
            }
            edgechat::Error::Template(m) => {
                Self::invalid_request(format!("chat template: {m}"), Some("messages"))
            }
            other => Self::server(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message:
            "Unknown endpoint. Available: POST /v1/chat/completions, GET /v1/models, GET /health"
                .into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("not_found"),
    }
}

fn body_too_large() -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("The request body is larger than {MAX_BODY_BYTES} bytes"),
        kind: "invalid_request_error",
        param: None,
        code: Some("request_too_large"),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "Method not allowed on this endpoint".into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("method_not_allowed"),
    }
}

// ---------------------------------------------------------------------------------------------
// Small endpoints.

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

fn model_object(state: &AppState) -> Value {
    json!({
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "edgechat",
        "context_length": state.context_length,
    })
}

async fn list_models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_object(&state)] }))
}

async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id == state.model_name {
        Ok(Json(model_object(&state)))
    } else {
        Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{id}` does not exist"),
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The request.

/// The fields this server reads. Others are ignored, `model` included: there is one model.
#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    messages: Option<Vec<RequestMessage>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<StopField>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u64>,
}

#[derive(Deserialize)]
struct RequestMessage {
    role: String,
    /// A string, an array of `{type: "text", text}` parts, or null; checked in `message_text`.
    #[serde(default)]
    content: Value,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// A request checked and turned into what the engine needs.
struct ValidRequest {
    messages: Vec<Message>,
    /// The last message is an assistant prefill to continue.
    continue_last: bool,
    params: SamplingParams,
    stream: bool,
    include_usage: bool,
}

fn parse_request(body: &[u8], context_length: usize) -> Result<ValidRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(format!("The request body is not valid JSON: {e}"), None)
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid_request(
            "The request body must be a JSON object",
            None,
        ));
    }
    let request: ChatRequest = serde_json::from_value(value)
        .map_err(|e| ApiError::invalid_request(format!("Invalid request: {e}"), None))?;

    let Some(raw_messages) = request.messages else {
        return Err(ApiError::invalid_request(
            "Missing required parameter: 'messages'.",
            Some("messages"),
        ));
    };
    if raw_messages.is_empty() {
        return Err(ApiError::invalid_request(
            "'messages' must contain at least one message.",
            Some("messages"),
        ));
    }
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, m) in raw_messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid_request(
                    format!("messages[{i}].role `{other}` is not supported (system, developer, user, assistant)"),
                    Some("messages"),
                ))
            }
        };
        let content = message_text(i, m.content)?;
        messages.push(Message {
            role: role.to_string(),
            content,
        });
    }
    let continue_last = messages.last().is_some_and(|m| m.role == "assistant");

    let max_tokens = match request.max_completion_tokens.or(request.max_tokens) {
        Some(0) => {
            return Err(ApiError::invalid_request(
                "max_tokens must be at least 1",
                Some("max_tokens"),
            ))
        }
        Some(n) => n.min(context_length as u64) as usize,
        // No limit asked for: the answer may fill the context.
        None => context_length,
    };
    let temperature = request.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_request(
            "temperature must be between 0 and 2",
            Some("temperature"),
        ));
    }
    let top_p = request.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid_request(
            "top_p must be in (0, 1]",
            Some("top_p"),
        ));
    }
    let frequency_penalty = request.frequency_penalty.unwrap_or(0.0);
    let presence_penalty = request.presence_penalty.unwrap_or(0.0);
    for (name, v) in [
        ("frequency_penalty", frequency_penalty),
        ("presence_penalty", presence_penalty),
    ] {
        if !(-2.0..=2.0).contains(&v) {
            return Err(ApiError::invalid_request(
                format!("{name} must be between -2 and 2"),
                None,
            ));
        }
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_request(
            "Only n = 1 is supported",
            Some("n"),
        ));
    }
    let stop = match request.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid_request(
            "At most 4 stop sequences are allowed",
            Some("stop"),
        ));
    }
    let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();

    let params = SamplingParams {
        temperature,
        top_k: 40,
        top_p,
        min_p: 0.05,
        repetition_penalty: 1.0,
        frequency_penalty,
        presence_penalty,
        penalty_last_n: 64,
        seed: request.seed.map(|s| s as u64),
        max_tokens,
        stop,
    };
    let stream = request.stream.unwrap_or(false);
    let include_usage = stream
        && request
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    Ok(ValidRequest {
        messages,
        continue_last,
        params,
        stream,
        include_usage,
    })
}

/// The text of a message's `content`: a string, or the concatenated `text` of an array of
/// `{type: "text", text}` parts (other part types, such as images, are refused). Null is empty
/// (an assistant message that only called tools).
fn message_text(index: usize, content: Value) -> Result<String, ApiError> {
    let invalid = |why: &str| {
        ApiError::invalid_request(format!("messages[{index}].content {why}"), Some("messages"))
    };
    match content {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some("text"), None) => {
                        return Err(invalid("has a text part without a `text` string"))
                    }
                    (Some(kind), _) => {
                        return Err(invalid(&format!(
                            "has a part of type `{kind}`; only text is supported"
                        )))
                    }
                    (None, _) => return Err(invalid("has a part without a `type`")),
                }
            }
            Ok(text)
        }
        _ => Err(invalid("must be a string or an array of text parts")),
    }
}

// ---------------------------------------------------------------------------------------------
// The engine thread.

/// One request for the engine thread.
struct ChatJob {
    messages: Vec<Message>,
    continue_last: bool,
    params: SamplingParams,
    cancel: CancelToken,
    events: mpsc::UnboundedSender<JobEvent>,
}

enum JobEvent {
    /// The prompt was accepted (it fits the context); text follows.
    Started,
    Text(String),
    Finished {
        finish_reason: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(ApiError),
}

/// Loads the model on a new thread that then serves jobs forever. Returns once loading is done,
/// with the job queue and the model's context length.
fn start_engine_thread(
    model: PathBuf,
    backend: edgechat::backend::BackendKind,
) -> CliResult<(std_mpsc::SyncSender<ChatJob>, usize)> {
    let (jobs_tx, jobs_rx) = std_mpsc::sync_channel::<ChatJob>(MAX_QUEUED_JOBS);
    let (ready_tx, ready_rx) = std_mpsc::channel::<CliResult<usize>>();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            eprintln!("loading {}", model.display());
            let mut engine = match crate::common::load_engine(&model, backend) {
                Ok(engine) => engine,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(engine.config().context_length));
            // The queue: one job at a time, in order. Ends when the server drops its sender.
            while let Ok(job) = jobs_rx.recv() {
                // A bug that panics inside the engine fails this request (its channel closes, the
                // client gets a 500), not the server; the cache may be inconsistent, so drop it.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_job(&mut engine, job)
                }));
                if outcome.is_err() {
                    engine.reset();
                }
            }
        })?;
    let context_length = ready_rx.recv().map_err(|_| {
        CliError::Usage("the engine thread stopped while loading the model".into())
    })??;
    Ok((jobs_tx, context_length))
}

fn run_job(engine: &mut Engine, job: ChatJob) {
    // The client left while the job waited in the queue.
    if job.cancel.is_cancelled() || job.events.is_closed() {
        return;
    }
    let prompt = match job_prompt(engine, &job.messages, job.continue_last) {
        Ok(prompt) => prompt,
        Err(e) => {
            let _ = job.events.send(JobEvent::Failed(e));
            return;
        }
    };
    let _ = job.events.send(JobEvent::Started);
    let events = &job.events;
    let cancel = &job.cancel;
    let result = engine.generate(&prompt, &job.params, cancel, &mut |text: &str| {
        // A closed channel means the client is gone: stop generating.
        if events.send(JobEvent::Text(text.to_string())).is_err() {
            cancel.cancel();
        }
    });
    match &result {
        Ok(completion) => eprintln!(
            "chat completion: {}; finish {}",
            crate::common::stats_line(&completion.stats),
            if completion.finish_reason == FinishReason::Cancelled {
                "cancelled (client gone)"
            } else {
                completion.finish_reason.as_str()
            }
        ),
        Err(e) => eprintln!("chat completion failed: {e}"),
    }
    let event = match result {
        Ok(completion) => JobEvent::Finished {
            finish_reason: match completion.finish_reason {
                FinishReason::Length => "length",
                FinishReason::Stop | FinishReason::Cancelled => "stop",
            },
            prompt_tokens: completion.stats.prompt_tokens,
            completion_tokens: completion.stats.completion_tokens,
        },
        Err(e) => JobEvent::Failed(ApiError::from_engine(e)),
    };
    let _ = events.send(event);
}

/// The prompt tokens of a request, checked against the context (which must leave room for at
/// least one new token). With `continue_last`, the last (assistant) message is not rendered as a
/// finished turn: the conversation before it gets the generation prompt and the assistant text
/// follows as plain text, so the model continues it.
fn job_prompt(
    engine: &Engine,
    messages: &[Message],
    continue_last: bool,
) -> Result<Vec<u32>, ApiError> {
    let template = engine.template();
    let tokenizer = engine.tokenizer();
    let prompt = if continue_last {
        let (prefill, before) = messages.split_last().ok_or_else(|| {
            ApiError::invalid_request(
                "'messages' must contain at least one message.",
                Some("messages"),
            )
        })?;
        let mut prompt = template
            .render(tokenizer, before, true)
            .map_err(ApiError::from_engine)?;
        prompt.extend(
            tokenizer
                .encode(&prefill.content)
                .map_err(ApiError::from_engine)?,
        );
        prompt
    } else {
        template
            .render(tokenizer, messages, true)
            .map_err(ApiError::from_engine)?
    };
    // The checks `generate` makes, answered in the API's terms (`check_prompt` fails with
    // ContextLength for a prompt that is too long, otherwise only for an empty one).
    match engine.check_prompt(&prompt) {
        Ok(()) => Ok(prompt),
        Err(edgechat::Error::ContextLength { limit, .. }) => {
            Err(ApiError::context_length_exceeded(prompt.len(), limit))
        }
        Err(_) => Err(ApiError::invalid_request(
            "The conversation renders to an empty prompt",
            Some("messages"),
        )),
    }
}

/// Puts `job` in the engine's queue without waiting; when the queue is full, the answer is a 503
/// with `Retry-After` (OpenAI's shape for an overloaded server).
fn queue_job(jobs: &std_mpsc::SyncSender<ChatJob>, job: ChatJob) -> Result<(), Response> {
    match jobs.try_send(job) {
        Ok(()) => Ok(()),
        Err(std_mpsc::TrySendError::Full(_)) => {
            let busy = ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "The server is busy: {MAX_QUEUED_JOBS} requests are already waiting. Please retry later."
                ),
                kind: "server_error",
                param: None,
                code: Some("server_busy"),
            };
            Err(([(header::RETRY_AFTER, RETRY_AFTER_SECONDS)], busy).into_response())
        }
        Err(std_mpsc::TrySendError::Disconnected(_)) => {
            Err(ApiError::server("the engine has stopped").into_response())
        }
    }
}

/// Sets the request's cancel token when dropped, unless the request finished first. Held by the
/// response future and the event stream: axum drops them when the client disconnects.
struct CancelOnDrop {
    token: CancelToken,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.token.cancel();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /v1/chat/completions

async fn chat_completions(State(state): State<AppState>, request: Request) -> Response {
    // A declared length over the limit is refused before a byte of the body is read (an
    // undeclared one is cut off at the limit by `DefaultBodyLimit` while reading).
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return body_too_large().into_response();
    }
    let body = match Bytes::from_request(request, &state).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return body_too_large().into_response()
        }
        Err(rejection) => {
            let status = rejection.status();
            let message = rejection.body_text();
            return ApiError {
                status,
                message,
                kind: "invalid_request_error",
                param: None,
                code: None,
            }
            .into_response();
        }
    };
    let request = match parse_request(&body, state.context_length) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let cancel = CancelToken::new();
    let mut guard = CancelOnDrop {
        token: cancel.clone(),
        armed: true,
    };
    let job = ChatJob {
        messages: request.messages,
        continue_last: request.continue_last,
        params: request.params,
        cancel,
        events: events_tx,
    };
    if let Err(refused) = queue_job(&state.jobs, job) {
        return refused;
    }

    // Wait until the engine takes the job and accepts the prompt, so that a prompt that is too
    // long is still a plain 400 and not an error inside a 200 event stream.
    match events.recv().await {
        Some(JobEvent::Started) => {}
        Some(JobEvent::Failed(e)) => {
            guard.armed = false;
            return e.into_response();
        }
        Some(_) | None => {
            guard.armed = false;
            return ApiError::server("the engine stopped before answering").into_response();
        }
    }

    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_time();
    let model = state.model_name.clone();

    if !request.stream {
        let mut content = String::new();
        loop {
            match events.recv().await {
                Some(JobEvent::Text(t)) => content.push_str(&t),
                Some(JobEvent::Finished {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    guard.armed = false;
                    return Json(json!({
                        "id": id,
                        "object": "chat.completion",
                        "created": created,
                        "model": model,
                        "choices": [{
                            "index": 0,
                            "message": { "role": "assistant", "content": content },
                            "logprobs": null,
                            "finish_reason": finish_reason,
                        }],
                        "usage": usage(prompt_tokens, completion_tokens),
                    }))
                    .into_response();
                }
                Some(JobEvent::Failed(e)) => {
                    guard.armed = false;
                    return e.into_response();
                }
                Some(JobEvent::Started) => {}
                None => {
                    guard.armed = false;
                    return ApiError::server("the engine stopped while answering").into_response();
                }
            }
        }
    }

    let chunk = ChunkWriter {
        id,
        created,
        model,
        include_usage: request.include_usage,
    };
    let first = chunk.delta(json!({ "role": "assistant", "content": "" }), None);
    let stream_state = StreamState {
        events,
        guard,
        chunk,
        done: false,
    };
    let rest = futures::stream::unfold(stream_state, |mut s| async move {
        if s.done {
            return None;
        }
        let out = match s.events.recv().await {
            Some(JobEvent::Text(t)) => vec![s.chunk.delta(json!({ "content": t }), None)],
            Some(JobEvent::Started) => Vec::new(),
            Some(JobEvent::Finished {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                s.guard.armed = false;
                s.done = true;
                let mut out = vec![s.chunk.delta(json!({}), Some(finish_reason))];
                if s.chunk.include_usage {
                    out.push(s.chunk.usage_chunk(prompt_tokens, completion_tokens));
                }
                out.push(Event::default().data("[DONE]"));
                out
            }
            Some(JobEvent::Failed(e)) => {
                s.guard.armed = false;
                s.done = true;
                vec![Event::default().data(e.body().to_string())]
            }
            None => {
                s.done = true;
                let e = ApiError::server("the engine stopped while answering");
                vec![Event::default().data(e.body().to_string())]
            }
        };
        Some((
            futures::stream::iter(out.into_iter().map(Ok::<_, Infallible>)),
            s,
        ))
    })
    .flatten();
    let events = futures::stream::once(async move { Ok::<_, Infallible>(first) }).chain(rest);
    Sse::new(events).into_response()
}

struct StreamState {
    events: mpsc::UnboundedReceiver<JobEvent>,
    guard: CancelOnDrop,
    chunk: ChunkWriter,
    done: bool,
}

/// Builds `chat.completion.chunk` events for one response.
struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChunkWriter {
    fn delta(&self, delta: Value, finish_reason: Option<&str>) -> Event {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        Event::default().data(chunk.to_string())
    }

    fn usage_chunk(&self, prompt_tokens: usize, completion_tokens: usize) -> Event {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(prompt_tokens, completion_tokens),
        });
        Event::default().data(chunk.to_string())
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> ChatJob {
        ChatJob {
            messages: Vec::new(),
            continue_last: false,
            params: SamplingParams::default(),
            cancel: CancelToken::new(),
            events: mpsc::unbounded_channel().0,
        }
    }

    #[test]
    fn a_full_queue_answers_503_with_retry_after() {
        let (jobs, waiting) = std_mpsc::sync_channel::<ChatJob>(1);
        assert!(queue_job(&jobs, job()).is_ok());
        let refused = queue_job(&jobs, job()).expect_err("the queue holds one job");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            refused.headers().get(header::RETRY_AFTER).unwrap(),
            RETRY_AFTER_SECONDS
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = runtime
            .block_on(axum::body::to_bytes(refused.into_body(), usize::MAX))
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["error"]["code"], "server_busy");

        // Once the engine takes the waiting job there is room again.
        drop(waiting.recv().unwrap());
        assert!(queue_job(&jobs, job()).is_ok());
        drop(waiting);
        let stopped = queue_job(&jobs, job()).expect_err("the engine is gone");
        assert_eq!(stopped.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
