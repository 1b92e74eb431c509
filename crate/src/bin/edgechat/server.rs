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
//! Requests are read and answers shaped by `edgechat::openai`, shared with the browser package:
//! see there for assistant prefill (a last `assistant` message is continued) and sampling defaults.

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
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::common::{BackendArg, CliError, CliResult};
use edgechat::openai::{finish_reason_name, Answer, ChatRequest, PromptError, RequestError};
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
    fn server(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
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
        Self::from_prompt(PromptError::from(e))
    }

    fn from_prompt(e: PromptError) -> Self {
        match e {
            PromptError::Request(e) => e.into(),
            PromptError::Engine(edgechat::Error::ContextLength { needed, limit }) => {
                RequestError::context_length_exceeded(needed, limit).into()
            }
            PromptError::Engine(other) => Self::server(other.to_string()),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: e.message,
            kind: "invalid_request_error",
            param: e.param,
            code: e.code,
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
// The engine thread.

/// One request for the engine thread.
struct ChatJob {
    request: ChatRequest,
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
    let prompt = match job.request.prompt(engine) {
        Ok(prompt) => prompt,
        Err(e) => {
            let _ = job.events.send(JobEvent::Failed(ApiError::from_prompt(e)));
            return;
        }
    };
    let _ = job.events.send(JobEvent::Started);
    let events = &job.events;
    let cancel = &job.cancel;
    let result = engine.generate(&prompt, &job.request.params, cancel, &mut |text: &str| {
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
            finish_reason: finish_reason_name(completion.finish_reason),
            prompt_tokens: completion.stats.prompt_tokens,
            completion_tokens: completion.stats.completion_tokens,
        },
        Err(e) => JobEvent::Failed(ApiError::from_engine(e)),
    };
    let _ = events.send(event);
}

/// Puts `job` in the engine's queue without waiting; when the queue is full, the answer is a 503
/// with `Retry-After` (OpenAI's shape for an overloaded server).
// The refusal is the handler's answer as it is sent, once per request.
#[allow(clippy::result_large_err)]
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
    let request = match ChatRequest::parse(&body, state.context_length) {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (stream, include_usage) = (request.stream, request.include_usage);

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let cancel = CancelToken::new();
    let mut guard = CancelOnDrop {
        token: cancel.clone(),
        armed: true,
    };
    let job = ChatJob {
        request,
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

    let answer = Answer {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: unix_time(),
        model: state.model_name.clone(),
        include_usage,
    };

    if !stream {
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
                    return Json(answer.completion(
                        &content,
                        finish_reason,
                        prompt_tokens,
                        completion_tokens,
                    ))
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

    let first = event(answer.chunk(json!({ "role": "assistant", "content": "" }), None));
    let stream_state = StreamState {
        events,
        guard,
        answer,
        done: false,
    };
    let rest = futures::stream::unfold(stream_state, |mut s| async move {
        if s.done {
            return None;
        }
        let out = match s.events.recv().await {
            Some(JobEvent::Text(t)) => vec![event(s.answer.chunk(json!({ "content": t }), None))],
            Some(JobEvent::Started) => Vec::new(),
            Some(JobEvent::Finished {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                s.guard.armed = false;
                s.done = true;
                let mut out = vec![event(s.answer.chunk(json!({}), Some(finish_reason)))];
                if s.answer.include_usage {
                    out.push(event(
                        s.answer.usage_chunk(prompt_tokens, completion_tokens),
                    ));
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
    answer: Answer,
    done: bool,
}

fn event(chunk: Value) -> Event {
    Event::default().data(chunk.to_string())
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
            request: ChatRequest::from_value(
                json!({"messages": [{"role": "user", "content": "Hi"}]}),
                16,
            )
            .unwrap(),
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
