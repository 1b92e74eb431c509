//! The workerd shell: HTTP routing, CORS, tokens, and the bindings (D1 `DB`, Durable Objects
//! `PROVIDER_BOARD` and `TOKEN_GATE`, var `ROUTER_CONFIG`, provider key secrets) around the
//! routing core in [`crate::router`].

mod ledger;
mod objects;
mod transport;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use futures::channel::mpsc;
use futures::StreamExt;
use serde_json::{json, Value};
use worker::{console_error, event, Context, Date, Delay, Env, Headers, Method, Request, Response};

use crate::router::api::{ApiError, ChatRequest};
use crate::router::auth::{parse_authorization, verify_secret};
use crate::router::config::BreakerConfig;
use crate::router::config::RouterConfig;
use crate::router::policy::{estimate_prompt_tokens, rank, Route};
use crate::router::relay::{relay, Downstream, RelayJob};
use crate::router::response::{Collector, SseWriter};
use crate::router::stats::ProviderBoard;
use ledger::{Finished, RequestEntry, TokenRow};
use objects::{BoardReport, GateAnswer, GateCharge, GateCharged, GateRequest};
use transport::WorkerTransport;

thread_local! {
    /// The parsed configuration, kept per isolate while `ROUTER_CONFIG` stays the same.
    static CONFIG: RefCell<Option<(String, Rc<RouterConfig>)>> = const { RefCell::new(None) };
}

fn config(env: &Env) -> Result<Rc<RouterConfig>, ApiError> {
    let text = env
        .var("ROUTER_CONFIG")
        .map_err(|_| ApiError::internal("the router has no ROUTER_CONFIG"))?
        .to_string();
    if let Some(config) = CONFIG.with_borrow(|c| {
        c.as_ref()
            .filter(|(t, _)| *t == text)
            .map(|(_, c)| c.clone())
    }) {
        return Ok(config);
    }
    let config = Rc::new(RouterConfig::from_json(&text).map_err(|e| {
        console_error!("{e}");
        ApiError::internal("the router's configuration is invalid (see the worker log)")
    })?);
    CONFIG.with_borrow_mut(|c| *c = Some((text, config.clone())));
    Ok(config)
}

/// Storage or binding failures: logged, answered as a generic 500.
fn internal(context: &str, error: worker::Error) -> ApiError {
    console_error!("{context}: {error}");
    ApiError::internal(format!("{context} failed"))
}

fn json_response(status: u16, body: &Value) -> Response {
    let response =
        Response::from_json(body).unwrap_or_else(|_| Response::empty().expect("an empty response"));
    response.with_status(status)
}

fn error_response(error: &ApiError) -> Response {
    let response = json_response(error.status, &error.body());
    if let Some(seconds) = error.retry_after_s {
        let _ = response.headers().set("retry-after", &seconds.to_string());
    }
    response
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let origin = req.headers().get("origin").ok().flatten();
    let config = match config(&env) {
        Ok(c) => c,
        Err(e) => return Ok(error_response(&e)),
    };
    let response = if req.method() == Method::Options {
        preflight(&req, origin.as_deref(), &config)
    } else {
        handle(req, &env, &ctx, &config)
            .await
            .unwrap_or_else(|e| error_response(&e))
    };
    if let Some(origin) = origin.filter(|o| config.allows_origin(o)) {
        let headers = response.headers();
        let _ = headers.set("access-control-allow-origin", &origin);
        let _ = headers.set("vary", "origin");
        let _ = headers.set(
            "access-control-expose-headers",
            "x-edgechat-provider, x-request-id, retry-after",
        );
    }
    Ok(response)
}

fn preflight(req: &Request, origin: Option<&str>, config: &RouterConfig) -> Response {
    if !origin.is_some_and(|o| config.allows_origin(o)) {
        return error_response(&ApiError {
            status: 403,
            ..ApiError::invalid_request("origin not allowed", None)
        });
    }
    let response = Response::empty()
        .expect("an empty response")
        .with_status(204);
    let headers = response.headers();
    let requested = req
        .headers()
        .get("access-control-request-headers")
        .ok()
        .flatten();
    let _ = headers.set("access-control-allow-methods", "GET, POST, OPTIONS");
    let _ = headers.set(
        "access-control-allow-headers",
        requested
            .as_deref()
            .unwrap_or("authorization, content-type"),
    );
    let _ = headers.set("access-control-max-age", "86400");
    response
}

async fn handle(
    req: Request,
    env: &Env,
    ctx: &Context,
    config: &Rc<RouterConfig>,
) -> Result<Response, ApiError> {
    let path = req.path();
    let method = req.method();
    match (method, path.as_str()) {
        (Method::Get, "/health") => Ok(json_response(
            200,
            &json!({"status": "ok", "providers": config.providers.len()}),
        )),
        (Method::Get, "/v1/models") => {
            authenticate(&req, env).await?;
            let board = board_snapshot(env).await?;
            Ok(json_response(200, &models(config, &board)))
        }
        (Method::Get, "/v1/usage") => {
            let token = authenticate(&req, env).await?;
            let url = req.url().map_err(|e| internal("url", e))?;
            let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
            let limit = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(50u32)
                .clamp(1, 500);
            let db = env.d1("DB").map_err(|e| internal("D1 binding", e))?;
            let body = ledger::usage(
                &db,
                &token,
                query.get("request_id").map(String::as_str),
                limit,
            )
            .await
            .map_err(|e| internal("ledger read", e))?;
            Ok(json_response(200, &body))
        }
        (Method::Post, "/v1/chat/completions") => chat(req, env, ctx, config).await,
        (_, "/health" | "/v1/models" | "/v1/usage" | "/v1/chat/completions") => {
            Err(ApiError::method_not_allowed())
        }
        _ => Err(ApiError::not_found(format!("no route for {path}"))),
    }
}

/// How long an isolate keeps a token's row (secret hash and limits) before reading D1 again. The
/// budget is enforced by the token's gate, not from this copy.
const TOKEN_CACHE_MS: u64 = 10_000;

thread_local! {
    static TOKENS: RefCell<HashMap<String, (TokenRow, u64)>> = RefCell::default();
}

/// The caller's token row, after checking the secret.
async fn authenticate(req: &Request, env: &Env) -> Result<TokenRow, ApiError> {
    let header = req.headers().get("authorization").ok().flatten();
    let bearer = parse_authorization(header.as_deref())?;
    let now = Date::now().as_millis();
    let cached = TOKENS.with_borrow(|t| {
        t.get(bearer.id)
            .filter(|(_, at)| now.saturating_sub(*at) < TOKEN_CACHE_MS)
            .map(|(row, _)| row.clone())
    });
    let row = match cached {
        Some(row) => Some(row),
        None => {
            let db = env.d1("DB").map_err(|e| internal("D1 binding", e))?;
            let row = ledger::find_token(&db, bearer.id)
                .await
                .map_err(|e| internal("token lookup", e))?;
            if let Some(row) = &row {
                TOKENS.with_borrow_mut(|t| {
                    if t.len() > 10_000 {
                        t.clear(); // bounded: an isolate never holds more than this many rows
                    }
                    t.insert(row.id.clone(), (row.clone(), now));
                });
            }
            row
        }
    };
    match row {
        Some(row) if verify_secret(bearer.secret, &row.secret_sha256) => Ok(row),
        _ => Err(ApiError::unauthorized("invalid token")),
    }
}

/// How long a chat request routes on this isolate's last copy of the provider board instead of
/// asking the board object: a Durable Object round trip off each request's critical path. The
/// isolate's own reports refresh the copy as the board answers them, and `/v1/models` always
/// reads the board, so only other isolates' changes (a breaker opening elsewhere) arrive late, by
/// at most this long.
const BOARD_COPY_MS: u64 = 1_000;

thread_local! {
    /// The board as last read or reported to, and when.
    static BOARD: RefCell<Option<(Rc<ProviderBoard>, u64)>> = const { RefCell::new(None) };
}

fn keep_board_copy(board: ProviderBoard) -> Rc<ProviderBoard> {
    let board = Rc::new(board);
    BOARD.set(Some((board.clone(), Date::now().as_millis())));
    board
}

/// The one provider board object.
fn board_stub(env: &Env) -> worker::Result<worker::Stub> {
    env.durable_object("PROVIDER_BOARD")?.get_by_name("global")
}

/// The board, read from its Durable Object.
async fn board_snapshot(env: &Env) -> Result<Rc<ProviderBoard>, ApiError> {
    let stub = board_stub(env).map_err(|e| internal("provider board binding", e))?;
    let mut response = stub
        .fetch_with_str("https://board/")
        .await
        .map_err(|e| internal("provider board", e))?;
    let board = response
        .json()
        .await
        .map_err(|e| internal("provider board", e))?;
    Ok(keep_board_copy(board))
}

/// The isolate's copy of the board if it is recent, else the board itself.
async fn recent_board(env: &Env) -> Result<Rc<ProviderBoard>, ApiError> {
    let now = Date::now().as_millis();
    let copy = BOARD.with_borrow(|b| {
        b.as_ref()
            .filter(|(_, at)| now.saturating_sub(*at) < BOARD_COPY_MS)
            .map(|(board, _)| board.clone())
    });
    match copy {
        Some(board) => Ok(board),
        None => board_snapshot(env).await,
    }
}

fn token_gate(env: &Env, token_id: &str) -> Result<worker::Stub, ApiError> {
    env.durable_object("TOKEN_GATE")
        .and_then(|ns| ns.get_by_name(token_id))
        .map_err(|e| internal("token gate binding", e))
}

async fn post_json(
    stub: &worker::Stub,
    url: &str,
    body: &impl serde::Serialize,
) -> worker::Result<Response> {
    let mut init = worker::RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(serde_json::to_string(body)?.into()));
    stub.fetch_with_request(Request::new_with_init(url, &init)?)
        .await
}

/// How long an isolate admits a token's requests from a lease its gate granted.
const GATE_LEASE_MS: u64 = 1_000;
/// The most requests one lease admits, and its largest share of a token's per-minute limit.
const GATE_LEASE_MAX: u32 = 32;
const GATE_LEASE_SHARE: u32 = 20;

/// What an isolate may still admit for one token without asking its gate, and how many of the
/// token's requests it saw in the last second (the size of the next lease).
#[derive(Default)]
struct Lease {
    left: u32,
    expires_ms: u64,
    second_start_ms: u64,
    this_second: u32,
    last_second: u32,
}

impl Lease {
    fn count(&mut self, now: u64) {
        if now >= self.second_start_ms + 1_000 {
            self.last_second = if now < self.second_start_ms + 2_000 {
                self.this_second
            } else {
                0
            };
            self.second_start_ms = now;
            self.this_second = 0;
        }
        self.this_second += 1;
    }

    /// Requests to ask the gate for: as many as the token made here in the last second, so a
    /// lease is used up within it (the unused rest counts against the limit as if made).
    fn size(&self, rpm_limit: u32) -> u32 {
        self.last_second
            .max(self.this_second)
            .min(GATE_LEASE_MAX)
            .min(rpm_limit / GATE_LEASE_SHARE)
            .max(1)
    }
}

thread_local! {
    static LEASES: RefCell<HashMap<String, Lease>> = RefCell::new(HashMap::new());
}

/// Counts the request against the token's per-minute limit and checks its budget. A busy token
/// mostly passes without a round trip to its gate: the gate admits a few requests at a time,
/// as many as the token made here in the last second (at most 32, and a 20th of its per-minute
/// limit, so a token with a low limit is checked on every request), and this isolate admits
/// them for up to a second. A budget spent meanwhile ends the lease when its charge lands.
async fn pass_gate(env: &Env, token: &TokenRow) -> Result<(), ApiError> {
    let now = Date::now().as_millis();
    let take = LEASES.with_borrow_mut(|leases| {
        if leases.len() > 10_000 && !leases.contains_key(&token.id) {
            leases.clear(); // bounded, as the token cache
        }
        let lease = leases.entry(token.id.clone()).or_default();
        lease.count(now);
        if lease.left > 0 && now < lease.expires_ms {
            lease.left -= 1;
            return None;
        }
        Some(lease.size(token.rpm_limit))
    });
    let Some(take) = take else {
        return Ok(());
    };
    let stub = token_gate(env, &token.id)?;
    let ask = GateRequest {
        rpm_limit: token.rpm_limit,
        budget_usd: token.budget_usd,
        spent_seed_usd: token.spent_usd,
        take,
    };
    let mut response = post_json(&stub, "https://gate/take", &ask)
        .await
        .map_err(|e| internal("token gate", e))?;
    let answer: GateAnswer = response
        .json()
        .await
        .map_err(|e| internal("token gate", e))?;
    if answer.budget_exhausted {
        return Err(ApiError::budget_exhausted(token.budget_usd));
    }
    if let Some(s) = answer.retry_after_s {
        return Err(ApiError::rate_limited(s, token.rpm_limit));
    }
    if answer.granted > 1 {
        let now = Date::now().as_millis();
        LEASES.with_borrow_mut(|leases| {
            let lease = leases.entry(token.id.clone()).or_default();
            lease.left = if now < lease.expires_ms {
                lease.left
            } else {
                0
            } + answer.granted
                - 1;
            lease.expires_ms = now + GATE_LEASE_MS;
        });
    }
    Ok(())
}

fn models(config: &RouterConfig, board: &ProviderBoard) -> Value {
    let now = Date::now().as_millis();
    let data: Vec<Value> = config
        .model_names()
        .iter()
        .map(|model| {
            let providers: Vec<Value> = config
                .offers(model)
                .iter()
                .map(|(provider, offer)| {
                    let health = board.health(&provider.name);
                    let status =
                        if health.cooldown_until_ms > now { "cooling_down" } else { health.breaker.name(now) };
                    json!({
                        "provider": provider.name,
                        "upstream_model": offer.upstream_model,
                        "input_usd_per_mtok": offer.input_usd_per_mtok,
                        "output_usd_per_mtok": offer.output_usd_per_mtok,
                        "context_length": offer.context_length,
                        "continuation": provider.prefill,
                        "status": status,
                        "ttft_ms": health.ttft_ms,
                        "tokens_per_second": health.tokens_per_second,
                        "successes": health.successes,
                        "failures": health.failures,
                    })
                })
                .collect();
            json!({"id": model, "object": "model", "created": 0, "owned_by": "edgechat", "providers": providers})
        })
        .collect();
    json!({"object": "list", "data": data})
}

fn random_id() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("crypto.getRandomValues");
    hex::encode(bytes)
}

/// Provider name → API key.
type ProviderKeys = Rc<HashMap<String, String>>;

thread_local! {
    /// Provider keys, read from the secrets once per isolate and configuration (not per request).
    static KEYS: RefCell<Option<(Rc<RouterConfig>, ProviderKeys)>> = const { RefCell::new(None) };
}

/// Provider name → key, from the secrets the configuration names.
fn provider_keys(env: &Env, config: &Rc<RouterConfig>) -> ProviderKeys {
    let cached = KEYS.with_borrow(|k| {
        k.as_ref()
            .filter(|(c, _)| Rc::ptr_eq(c, config))
            .map(|(_, keys)| keys.clone())
    });
    if let Some(keys) = cached {
        return keys;
    }
    let mut keys = HashMap::new();
    for provider in &config.providers {
        let Some(secret) = &provider.api_key_secret else {
            continue;
        };
        match env.secret(secret) {
            Ok(value) => {
                keys.insert(provider.name.clone(), value.to_string());
            }
            // The secret's name is not secret; its value is never logged.
            Err(_) => console_error!("provider {}: secret {} is not set", provider.name, secret),
        }
    }
    let keys = Rc::new(keys);
    KEYS.set(Some((config.clone(), keys.clone())));
    keys
}

async fn chat(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    config: &Rc<RouterConfig>,
) -> Result<Response, ApiError> {
    let token = authenticate(&req, env).await?;
    let limit = config.limits.max_body_bytes;
    let declared = req
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|l| l.parse::<usize>().ok());
    if declared.is_some_and(|l| l > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    let (gate, board) = futures::join!(pass_gate(env, &token), recent_board(env));
    gate?;
    let board = board?;
    let body = req
        .bytes()
        .await
        .map_err(|_| ApiError::invalid_request("could not read the request body", None))?;
    if body.len() > limit {
        return Err(ApiError::body_too_large(limit));
    }
    let request = ChatRequest::parse(&body)?;
    let route = Route::resolve(&request.model, config)?;
    let now = Date::now().as_millis();
    let prompt_tokens = estimate_prompt_tokens(request.prompt_chars(), request.messages.len());
    let candidates = rank(
        &route,
        config,
        &board,
        now,
        prompt_tokens,
        request.max_tokens,
    );
    let hedge_ms = request
        .hedge_ms
        .or_else(|| config.hedge_ms.get(route.policy.name()).copied());
    let entry = RequestEntry {
        id: format!("chatcmpl-{}", random_id()),
        token_id: token.id.clone(),
        created_ms: now,
        model: route.model.clone(),
        policy: route.policy.name().to_string(),
        stream: request.stream,
    };
    let (id, created, model, stream, include_usage) = (
        entry.id.clone(),
        now / 1000,
        request.model.clone(),
        request.stream,
        request.include_usage,
    );
    let job = RelayJob {
        request,
        candidates,
        limits: config.limits.clone(),
        hedge_ms,
        prompt_tokens_estimate: prompt_tokens,
    };

    // The relay runs past this handler (the body streams after it returns), then writes the
    // ledger and the provider statistics.
    let (tx, mut rx) = mpsc::unbounded::<Downstream>();
    let transport = WorkerTransport {
        keys: provider_keys(env, config),
    };
    let env = env.clone();
    let breaker = config.breaker.clone();
    let budget_usd = token.budget_usd;
    ctx.wait_until(async move {
        let result = relay(&transport, job, &mut |event| {
            tx.unbounded_send(event).is_ok()
        })
        .await;
        drop(tx);
        let finished = Finished { entry, result };
        if let Err(e) = after_answer(&env, breaker, finished, budget_usd).await {
            console_error!("after an answer: {e}");
        }
    });

    let first = rx
        .next()
        .await
        .ok_or_else(|| ApiError::internal("the relay ended without an answer"))?;
    let provider = match &first {
        Downstream::Failed { error } => return Err(error.clone()),
        Downstream::Delta { provider, .. } | Downstream::Done { provider, .. } => provider.clone(),
        Downstream::Switch { to, .. } => to.clone(),
    };
    if stream {
        let headers = Headers::new();
        let _ = headers.set("x-request-id", &id);
        let _ = headers.set("content-type", "text/event-stream; charset=utf-8");
        let _ = headers.set("cache-control", "no-cache");
        let _ = headers.set("x-edgechat-provider", &provider);
        let mut writer = SseWriter::new(id, created, model, include_usage);
        // The body ends with the answer's last event, not when the relay drops the channel: the
        // relay keeps reading the upstream body to its end afterwards (connection reuse).
        let mut events = futures::stream::iter([first]).chain(rx);
        let mut ended = false;
        let events = futures::stream::poll_fn(move |cx| {
            if ended {
                return Poll::Ready(None);
            }
            let next = events.poll_next_unpin(cx);
            if let Poll::Ready(Some(event)) = &next {
                ended = event.is_last();
            }
            next
        });
        // The events ready together (one upstream read carries several) go out as one chunk:
        // each chunk is a round trip through the JS stream and a write to the socket.
        let events = events.ready_chunks(16);
        let body = events.map(move |events| {
            let text: String = events.iter().map(|event| writer.write(event)).collect();
            Ok::<Vec<u8>, worker::Error>(text.into_bytes())
        });
        let response = Response::from_stream(body).map_err(|e| internal("response stream", e))?;
        return Ok(response.with_headers(headers));
    }
    let mut collector = Collector::default();
    collector.push(first);
    while !collector.is_finished() {
        match rx.next().await {
            Some(event) => collector.push(event),
            None => break,
        }
    }
    let (provider, body) = collector.finish(&id, created, &model)?;
    let response = json_response(200, &body);
    let _ = response.headers().set("x-request-id", &id);
    let _ = response.headers().set("x-edgechat-provider", &provider);
    Ok(response)
}

/// How long a finished answer waits in the isolate for others: the answers an isolate finishes
/// in this time are reported to the provider board in one request, written to the ledger in one
/// D1 batch, and charged to each token's budget in one request per token. Each batch costs the
/// isolate a few milliseconds in which requests wait (and under local workerd, the SQLite writes
/// and fsyncs of D1 and the Durable Objects run on its one event-loop thread): at 50 ms, a busy
/// isolate's stalls hit 2 % of its requests and set its p99 (bench-router, C=1: 6.3-7.4 ms
/// against 2.2-3.2 ms at 250 ms). 250 ms stays well inside the lease (a second) and the board
/// copy's age (a second), so budgets and breakers react as before; it also means a fifth of
/// the D1 writes and Durable Object requests. A batch holds at most this long's answers of one
/// isolate (a few hundred at its fastest; its rows go to D1 as one JSON value of ~300 B each).
const AFTER_ANSWER_BATCH_MS: u64 = 250;

/// Finished answers not yet written anywhere, and the breaker settings they were routed with.
struct AfterAnswers {
    breaker: BreakerConfig,
    finished: Vec<Finished>,
    /// Each token's budget, for its charge.
    budgets: HashMap<String, f64>,
}

thread_local! {
    static UNSENT_ANSWERS: RefCell<Option<AfterAnswers>> = const { RefCell::new(None) };
}

/// Adds a finished answer to the isolate's next batch. The request that starts a batch waits,
/// then sends it itself: its timer, fetches and responses stay in its own request context
/// (workerd ties I/O to the request that made it). The others return at once, their answers in
/// the batch: had they waited for the sender, each would have had its `waitUntil` promise resolved
/// from the sender's request, which workerd answers with a warning and a stack trace per request
/// (under `wrangler dev`, source-mapped by wrangler's Node process: 2.7 ms of CPU per request).
async fn after_answer(
    env: &Env,
    breaker: BreakerConfig,
    finished: Finished,
    budget_usd: f64,
) -> Result<(), String> {
    let starts_batch = UNSENT_ANSWERS.with_borrow_mut(|unsent| {
        let starts_batch = unsent.is_none();
        let batch = unsent.get_or_insert_with(|| AfterAnswers {
            breaker: breaker.clone(),
            budgets: HashMap::new(),
            finished: Vec::new(),
        });
        batch.breaker = breaker;
        batch
            .budgets
            .insert(finished.entry.token_id.clone(), budget_usd);
        batch.finished.push(finished);
        starts_batch
    });
    if !starts_batch {
        return Ok(());
    }
    Delay::from(Duration::from_millis(AFTER_ANSWER_BATCH_MS)).await;
    match UNSENT_ANSWERS.take() {
        Some(batch) => send_after_answers(env, batch).await,
        None => Ok(()),
    }
}

/// Writes a batch: the board report, the ledger rows and the budget charges, at the same time.
async fn send_after_answers(env: &Env, batch: AfterAnswers) -> Result<(), String> {
    let report = BoardReport {
        breaker: batch.breaker,
        reports: batch
            .finished
            .iter()
            .flat_map(|f| f.result.attempts.iter().map(|a| a.report.clone()))
            .collect(),
    };
    // One charge per token, of what its answers in the batch cost.
    let costs = ledger::cost_by_token(&batch.finished);
    let budgets = &batch.budgets;
    let charges = futures::future::join_all(costs.iter().map(|&(token, cost)| async move {
        let stub = token_gate(env, token).map_err(|e| e.message)?;
        let charge = GateCharge {
            cost_usd: cost,
            budget_usd: budgets.get(token).copied().unwrap_or(0.0),
        };
        let charged: GateCharged = async {
            post_json(&stub, "https://gate/charge", &charge)
                .await?
                .json()
                .await
        }
        .await
        .map_err(|e| format!("budget charge for token {token}: {e}"))?;
        if charged.budget_exhausted {
            // This isolate's next request for the token asks the gate (and gets its 402).
            LEASES.with_borrow_mut(|leases| leases.remove(token));
        }
        Ok(())
    }));
    let board = async {
        if report.reports.is_empty() {
            return Ok(());
        }
        send_board_report(env, &report)
            .await
            .map_err(|e| format!("provider board report: {e}"))
    };
    let ledger = async {
        let db = env.d1("DB").map_err(|e| e.to_string())?;
        ledger::record(&db, &batch.finished)
            .await
            .map_err(|e| format!("ledger write of {} answers: {e}", batch.finished.len()))
    };
    let (charged, board, ledger) = futures::join!(charges, board, ledger);
    let errors: Vec<String> = charged
        .into_iter()
        .chain([board, ledger])
        .filter_map(Result::err)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

async fn send_board_report(env: &Env, report: &BoardReport) -> worker::Result<()> {
    let stub = board_stub(env)?;
    // The board answers with itself, updated: this isolate's next requests route on it.
    let board = post_json(&stub, "https://board/", report)
        .await?
        .json()
        .await?;
    keep_board_copy(board);
    Ok(())
}
