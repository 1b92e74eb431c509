//! The router end to end in real workerd (`wrangler dev`, local D1 and Durable Objects), in front
//! of real upstreams on loopback: our fault-injecting upstream (tests/support/fault_upstream.rs)
//! and `edgechat serve` with SmolLM2-135M as a real provider.
//!
//! Each scenario model (`s-<name>`) has its own providers, so one test's failures never open
//! another test's breakers; each request carries a tag (`[t:<tag>]`) that the fault upstream uses
//! to pick its behaviour and to count the attempts it saw. Every test checks the caller's whole
//! answer, the serving provider, the attempts the upstream saw, and the ledger rows in D1.
//!
//! Needs node and the worker's npm packages (scripts/setup), worker-build (scripts/setup) and the
//! SmolLM2 model (scripts/models). Takes ~1 minute, mostly workerd start-up and the wasm build.

#[path = "support/fault_upstream.rs"]
mod fault_upstream;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fault_upstream::{answer_chunks, answer_for, Behavior, FaultUpstream};
use futures::StreamExt;
use serde_json::{json, Value};

const FAULT_KEY: &str = "sk-test-9f8e7d6c5b4a-SECRET";
const ENGINE_MODEL: &str = "smollm2-135m-instruct";

struct Harness {
    upstream: FaultUpstream,
    url: String,
    main_token: String,
    limited_token: String,
    poor_token: String,
    burst_token: String,
    /// Everything wrangler and workerd printed.
    log: Arc<Mutex<String>>,
    /// Keeps the fault upstream's runtime alive.
    _runtime: tokio::runtime::Runtime,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Process groups of the servers started here, killed when the test process exits.
static CHILD_GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// The local D1 and Durable Object state of this run, removed at exit.
static STATE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn stop_servers() {
    if let Ok(groups) = CHILD_GROUPS.lock() {
        for &group in groups.iter() {
            // The whole group: wrangler's node processes and the workerd they started.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }
    if let Some(dir) = STATE_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Starts a server in its own process group, stopped at exit (libtest exits through `exit`, which
/// runs `atexit` handlers); if this process is killed instead, the direct child still gets
/// SIGTERM from the kernel and wrangler stops workerd itself.
fn spawn_tied(command: &mut Command) -> std::process::Child {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| unsafe {
        libc::atexit(stop_servers);
    });
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command.process_group(0);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    CHILD_GROUPS.lock().unwrap().push(child.id() as i32);
    child
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn wrangler(args: &[&str]) -> Command {
    let root = repo_root();
    let mut command = Command::new("node");
    command
        .arg(root.join("worker/node_modules/wrangler/bin/wrangler.js"))
        .args(args)
        .current_dir(root.join("worker"));
    command
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CI", "true");
    command
}

/// A provider entry of the router configuration.
fn provider(
    name: &str,
    base_url: &str,
    prefill: &str,
    model: &str,
    price: f64,
    context: u32,
    key: Option<&str>,
) -> Value {
    json!({
        "name": name, "base_url": base_url, "prefill": prefill, "api_key_secret": key,
        "models": [{"model": model, "upstream_model": format!("{name}-model"),
                    "input_usd_per_mtok": price, "output_usd_per_mtok": price * 2.0, "context_length": context}],
    })
}

/// Scenarios with the usual pair: `<name>-a` (cheapest, no prefill) and `<name>-b` (continues a
/// prefill), serving model `s-<name>`.
const PAIRED: &[&str] = &[
    "ok",
    "r429ra",
    "r429",
    "r503",
    "reset",
    "noresp",
    "slow",
    "cut",
    "stall",
    "malformed",
    "nodone",
    "policy",
    "trunc",
    "hedge",
    "breaker",
    "openai",
    "stats",
];

fn router_config(upstream: &FaultUpstream, engine_url: &str) -> Value {
    let mut providers = Vec::new();
    for name in PAIRED {
        let model = format!("s-{name}");
        providers.push(provider(
            &format!("{name}-a"),
            &upstream.base_url(&format!("{name}-a")),
            "none",
            &model,
            0.1,
            4096,
            None,
        ));
        providers.push(provider(
            &format!("{name}-b"),
            &upstream.base_url(&format!("{name}-b")),
            "trailing_assistant",
            &model,
            1.0,
            4096,
            None,
        ));
    }
    // A rescue where the next provider cannot continue: a visible restart.
    providers.push(provider(
        "restart-a",
        &upstream.base_url("restart-a"),
        "none",
        "s-restart",
        0.1,
        4096,
        None,
    ));
    providers.push(provider(
        "restart-b",
        &upstream.base_url("restart-b"),
        "none",
        "s-restart",
        1.0,
        4096,
        None,
    ));
    // One provider alone: retries go back to it.
    for name in ["solo429", "solo500", "down", "hold"] {
        providers.push(provider(
            name,
            &upstream.base_url(name),
            "none",
            &format!("s-{name}"),
            0.1,
            4096,
            None,
        ));
    }
    // Context lengths: two small ones and a large one.
    providers.push(provider(
        "ctx-small",
        &upstream.base_url("ctx-small"),
        "none",
        "s-ctx",
        0.1,
        64,
        None,
    ));
    providers.push(provider(
        "ctx-small2",
        &upstream.base_url("ctx-small2"),
        "none",
        "s-ctx",
        0.2,
        64,
        None,
    ));
    providers.push(provider(
        "ctx-big",
        &upstream.base_url("ctx-big"),
        "none",
        "s-ctx",
        1.0,
        100_000,
        None,
    ));
    // A provider with a key (the key must reach it and nothing else).
    providers.push(provider(
        "keyed",
        &upstream.base_url("keyed"),
        "none",
        "s-keyed",
        0.1,
        4096,
        Some("FAULT_KEY"),
    ));
    providers.push(provider(
        "keyed-b",
        &upstream.base_url("keyed-b"),
        "none",
        "s-keyed",
        1.0,
        4096,
        None,
    ));
    // Expensive, for the budget test: one answer costs more than the poor token's budget.
    providers.push(provider(
        "pricey",
        &upstream.base_url("pricey"),
        "none",
        "s-pricey",
        100_000.0,
        4096,
        None,
    ));
    // The real engine, alone and as the rescuer of a cut stream.
    providers.push(provider(
        "engine",
        engine_url,
        "trailing_assistant",
        "smollm2",
        0.0,
        8192,
        None,
    ));
    providers.push(provider(
        "engine-cut",
        &upstream.base_url("engine-cut"),
        "none",
        "smollm2-rescue",
        0.0,
        8192,
        None,
    ));
    let mut engine_rescuer = provider(
        "engine-rescue",
        engine_url,
        "trailing_assistant",
        "smollm2-rescue",
        0.5,
        8192,
        None,
    );
    engine_rescuer["models"][0]["upstream_model"] = json!(ENGINE_MODEL);
    providers.push(engine_rescuer);
    for p in providers.iter_mut().filter(|p| p["name"] == "engine") {
        p["models"][0]["upstream_model"] = json!(ENGINE_MODEL);
    }
    json!({
        "default_policy": "cheapest",
        "cors_allow_origins": ["http://localhost:8000"],
        "limits": {"max_attempts": 4, "overall_deadline_ms": 30000, "ttft_deadline_ms": 3000,
                   "stall_deadline_ms": 2000, "drain_deadline_ms": 20000, "max_retry_after_ms": 3000,
                   "max_body_bytes": 65536},
        "breaker": {"failure_threshold": 3, "open_ms": 2000},
        "providers": providers,
    })
}

fn start() -> Harness {
    let root = repo_root();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = runtime.block_on(FaultUpstream::start());

    // The real provider: edgechat serve on SmolLM2.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo)
        .args(["build", "--release", "-p", "edgechat", "--bin", "edgechat"])
        .current_dir(&root));
    let model = root.join("models/smollm2-135m-instruct-q4_1.gguf");
    assert!(
        model.exists(),
        "{} is missing: run scripts/models",
        model.display()
    );
    let mut engine = spawn_tied(
        Command::new(root.join("target/release/edgechat"))
            .args([
                "serve",
                "--port",
                "0",
                "--model-name",
                ENGINE_MODEL,
                "--model",
            ])
            .arg(&model)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut first_line = String::new();
    BufReader::new(engine.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let engine_url = format!(
        "{}/v1",
        first_line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening on ...")
    );

    // The worker, built and served on workerd with a fresh local D1.
    run(Command::new(root.join("scripts/worker")).arg("build"));
    let state =
        STATE_DIR.get_or_init(|| root.join(format!("target/e2e-workerd-{}", std::process::id())));
    let state_arg = state.to_str().unwrap().to_string();
    run(&mut wrangler(&[
        "d1",
        "migrations",
        "apply",
        "edgechat-ledger",
        "--local",
        "--persist-to",
        &state_arg,
    ]));
    let token = |id: &str, secret: &str, rpm: u32, budget: f64| {
        let hash = edgechat_worker::router::auth::hash_secret(secret);
        (
            format!("ec_{id}_{secret}"),
            format!("('{id}', '{id}', '{hash}', {rpm}, {budget}, 0)"),
        )
    };
    let (main_token, main_row) = token("main", "mainsecret", 100_000, 1000.0);
    let (limited_token, limited_row) = token("limited", "limitedsecret", 2, 1000.0);
    let (poor_token, poor_row) = token("poor", "poorsecret", 100, 0.01);
    let (burst_token, burst_row) = token("burst", "burstsecret", 100, 1000.0);
    let insert = format!(
        "INSERT INTO tokens (id, name, secret_sha256, rpm_limit, budget_usd, created_ms) VALUES {main_row}, {limited_row}, {poor_row}, {burst_row}"
    );
    run(&mut wrangler(&[
        "d1",
        "execute",
        "edgechat-ledger",
        "--local",
        "--persist-to",
        &state_arg,
        "--command",
        &insert,
    ]));

    let port = free_port();
    let config = router_config(&upstream, &engine_url).to_string();
    let mut dev = spawn_tied(
        wrangler(&[
            "dev",
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--inspector-port",
            &free_port().to_string(),
            "--persist-to",
            &state_arg,
            "--show-interactive-dev-session=false",
            "--var",
            &format!("ROUTER_CONFIG:{config}"),
            "--var",
            &format!("FAULT_KEY:{FAULT_KEY}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    );
    let log = Arc::new(Mutex::new(String::new()));
    for pipe in [
        Box::new(dev.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(dev.stderr.take().unwrap()),
    ] {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if health_ok(port) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "wrangler dev did not come up:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The processes live as long as the keeper thread that owns them.
    std::mem::forget(engine);
    std::mem::forget(dev);
    Harness {
        upstream,
        url,
        main_token,
        limited_token,
        poor_token,
        burst_token,
        log,
        _runtime: runtime,
    }
}

/// `GET /health` answers 200 (plain std, before any async runtime exists).
fn health_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request =
        format!("GET /health HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n");
    let mut response = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut response).is_ok()
        && response.starts_with("HTTP/1.1 200")
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        // The keeper thread starts the servers and then never ends, so they outlive every test.
        std::thread::spawn(move || {
            let harness = start();
            tx.send(harness).ok();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the test servers started")
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn ask(model: &str, tag: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": format!("[t:{tag}] tell me")}]})
}

async fn post(token: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", harness().url))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("the worker answers")
}

/// A streamed answer as the caller sees it.
struct Streamed {
    status: u16,
    provider_header: Option<String>,
    request_id: String,
    chunks: Vec<Value>,
    done: bool,
    /// The text, with restarts applied (what a caller ends up showing).
    text: String,
}

impl Streamed {
    fn finish_reason(&self) -> Option<&str> {
        self.chunks
            .iter()
            .rev()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str())
    }
    fn rescue_events(&self) -> Vec<&str> {
        self.chunks
            .iter()
            .filter_map(|c| c["edgechat"]["event"].as_str())
            .collect()
    }
    fn error(&self) -> Option<&Value> {
        self.chunks.iter().find_map(|c| c.get("error"))
    }
    fn usage(&self) -> &Value {
        self.chunks
            .iter()
            .rev()
            .find(|c| c["usage"].is_object())
            .map(|c| &c["usage"])
            .expect("a usage chunk")
    }
}

async fn stream(token: &str, body: &Value) -> Streamed {
    let response = post(token, body).await;
    let status = response.status().as_u16();
    let header = |k: &str| {
        response
            .headers()
            .get(k)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let provider_header = header("x-edgechat-provider");
    let request_id = header("x-request-id").unwrap_or_default();
    let mut bytes = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        bytes.extend_from_slice(&piece.expect("the worker's stream is not cut"));
    }
    let text = String::from_utf8(bytes).unwrap();
    let mut chunks = Vec::new();
    let mut done = false;
    let mut answer = String::new();
    for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let data = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"));
        assert!(!done, "nothing may follow [DONE]");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        if chunk["edgechat"]["event"] == "restart" {
            answer.clear();
        }
        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
            answer.push_str(t);
        }
        chunks.push(chunk);
    }
    Streamed {
        status,
        provider_header,
        request_id,
        chunks,
        done,
        text: answer,
    }
}

/// The ledger entry of one request (written just after the response ends, so polled briefly).
async fn ledger(request_id: &str) -> Value {
    for _ in 0..50 {
        let usage: Value = client()
            .get(format!(
                "{}/v1/usage?request_id={request_id}",
                harness().url
            ))
            .bearer_auth(&harness().main_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(request) = usage["requests"].as_array().and_then(|r| r.first()) {
            return request.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("request {request_id} never reached the ledger");
}

fn attempt_outcomes(entry: &Value) -> Vec<(String, String)> {
    entry["attempts_detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap().to_string(),
                a["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn attempts_seen(tag: &str, provider: &str) -> usize {
    harness().upstream.requests(tag, provider).len()
}

/// Runs a paired scenario where `<name>-a` misbehaves before the first token and `<name>-b`
/// answers: checks the answer, the provider, the attempts on each side and the ledger.
async fn failover_case(name: &str, behavior: Behavior, expected_outcome: &str) {
    let h = harness();
    let tag = format!("fo-{name}");
    h.upstream.set(&tag, &format!("{name}-a"), behavior);
    let s = stream(&h.main_token, &ask(&format!("s-{name}"), &tag, true)).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.text, answer_for(&tag), "{name}");
    assert_eq!(
        s.provider_header.as_deref(),
        Some(format!("{name}-b").as_str())
    );
    assert!(s.done && s.finish_reason() == Some("stop"));
    assert_eq!(
        attempts_seen(&tag, &format!("{name}-a")),
        1,
        "{name}: one attempt on the failing provider"
    );
    assert_eq!(attempts_seen(&tag, &format!("{name}-b")), 1);
    let entry = ledger(&s.request_id).await;
    assert_eq!(entry["outcome"], "completed");
    assert_eq!(entry["provider"], format!("{name}-b"));
    assert_eq!(
        attempt_outcomes(&entry),
        pairs(&[
            (&format!("{name}-a"), expected_outcome),
            (&format!("{name}-b"), "ok")
        ])
    );
    assert_eq!(
        entry["attempts_detail"][0]["cost_usd"], 0.0,
        "a failed attempt is not billed"
    );
}

#[tokio::test]
async fn a_healthy_provider_streams_and_answers_with_usage_cost_and_ledger() {
    let h = harness();
    let tag = "healthy";
    let mut body = ask("s-ok", tag, true);
    body["stream_options"] = json!({"include_usage": true});
    let s = stream(&h.main_token, &body).await;
    assert_eq!((s.status, s.text.as_str()), (200, answer_for(tag).as_str()));
    assert_eq!(s.provider_header.as_deref(), Some("ok-a"));
    assert!(s
        .chunks
        .iter()
        .filter(|c| !c["choices"].as_array().unwrap().is_empty())
        .all(|c| c["provider"] == "ok-a"));
    assert!(s.done);
    assert_eq!(
        s.chunks.last().unwrap()["choices"],
        json!([]),
        "include_usage adds a final usage-only chunk"
    );
    let usage = s.usage();
    assert_eq!(usage["completion_tokens"], answer_chunks(tag).len());
    let prompt = usage["prompt_tokens"].as_f64().unwrap();
    let expected_cost = (prompt * 0.1 + answer_chunks(tag).len() as f64 * 0.2) / 1e6;
    assert!((usage["cost_usd"].as_f64().unwrap() - expected_cost).abs() < 1e-12);
    let entry = ledger(&s.request_id).await;
    assert_eq!(attempt_outcomes(&entry), pairs(&[("ok-a", "ok")]));
    assert!((entry["cost_usd"].as_f64().unwrap() - expected_cost).abs() < 1e-12);

    // Non-streaming: one chat.completion with the same answer.
    let tag = "healthy-json";
    let response = post(&h.main_token, &ask("s-ok:cheapest", tag, false)).await;
    assert_eq!(response.headers()["x-edgechat-provider"], "ok-a");
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], answer_for(tag));
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["provider"], "ok-a");
    assert!(body["usage"]["cost_usd"].as_f64().unwrap() > 0.0);
    // The upstream always streams for us, with usage.
    let sent = &h.upstream.requests(tag, "ok-a")[0];
    assert_eq!(
        (sent["stream"].clone(), sent["model"].clone()),
        (json!(true), json!("ok-a-model"))
    );
    // Pinning a provider.
    let tag = "healthy-pinned";
    let s = stream(&h.main_token, &ask("s-ok:ok-b", tag, true)).await;
    assert_eq!(
        (s.text.as_str(), s.provider_header.as_deref()),
        (answer_for(tag).as_str(), Some("ok-b"))
    );
    assert_eq!(attempts_seen(tag, "ok-a"), 0);
}

#[tokio::test]
async fn failover_before_the_first_token() {
    let body = json!({"error": {"message": "busy", "type": "server_error"}});
    failover_case(
        "r429ra",
        Behavior::Status {
            code: 429,
            body: body.clone(),
            retry_after: Some(30),
            times: None,
        },
        "http_429",
    )
    .await;
    failover_case(
        "r429",
        Behavior::Status {
            code: 429,
            body: body.clone(),
            retry_after: None,
            times: None,
        },
        "http_429",
    )
    .await;
    failover_case(
        "r503",
        Behavior::Status {
            code: 503,
            body,
            retry_after: None,
            times: None,
        },
        "http_503",
    )
    .await;
    failover_case(
        "reset",
        Behavior::ResetBeforeHeaders { times: None },
        "connect_error",
    )
    .await;
    failover_case(
        "noresp",
        Behavior::NoResponse { times: None },
        "ttft_timeout",
    )
    .await;
    failover_case(
        "slow",
        Behavior::SlowFirstToken {
            delay_ms: 8000,
            times: None,
        },
        "ttft_timeout",
    )
    .await;
}

#[tokio::test]
async fn a_lone_provider_is_retried_after_retry_after_and_after_a_500() {
    let h = harness();
    let tag = "solo429";
    let busy = json!({"error": {"message": "slow down"}});
    h.upstream.set(
        tag,
        "solo429",
        Behavior::Status {
            code: 429,
            body: busy,
            retry_after: Some(1),
            times: Some(1),
        },
    );
    let started = Instant::now();
    let s = stream(&h.main_token, &ask("s-solo429", tag, true)).await;
    assert_eq!(s.text, answer_for(tag));
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(attempts_seen(tag, "solo429"), 2);
    assert_eq!(
        attempt_outcomes(&ledger(&s.request_id).await),
        pairs(&[("solo429", "http_429"), ("solo429", "ok")])
    );

    let tag = "solo500";
    h.upstream.set(
        tag,
        "solo500",
        Behavior::Status {
            code: 500,
            body: json!({}),
            retry_after: None,
            times: Some(1),
        },
    );
    let s = stream(&h.main_token, &ask("s-solo500", tag, true)).await;
    assert_eq!(s.text, answer_for(tag));
    assert_eq!(attempts_seen(tag, "solo500"), 2);
    assert_eq!(
        attempt_outcomes(&ledger(&s.request_id).await),
        pairs(&[("solo500", "http_500"), ("solo500", "ok")])
    );
}

/// Mid-stream faults on `<name>-a` after 4 chunks; `<name>-b` continues the text already sent.
async fn rescue_case(name: &str, behavior: Behavior, expected_outcome: &str) {
    let h = harness();
    let tag = format!("rescue-{name}");
    h.upstream.set(&tag, &format!("{name}-a"), behavior);
    let s = stream(&h.main_token, &ask(&format!("s-{name}"), &tag, true)).await;
    assert_eq!(
        s.text,
        answer_for(&tag),
        "{name}: nothing lost, nothing repeated"
    );
    assert_eq!(s.rescue_events(), ["continue"], "{name}");
    assert!(s.done && s.finish_reason() == Some("stop"));
    let continuation = &h.upstream.requests(&tag, &format!("{name}-b"))[0];
    let sent: String = answer_chunks(&tag)[..4].concat();
    assert_eq!(
        continuation["messages"].as_array().unwrap().last().unwrap(),
        &json!({"role": "assistant", "content": sent})
    );
    let providers: Vec<&str> = s
        .chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(|_| c["provider"].as_str().unwrap())
        })
        .collect();
    assert!(
        providers[..4].iter().all(|p| *p == format!("{name}-a")),
        "each chunk names its provider: {providers:?}"
    );
    assert!(providers[4..].iter().all(|p| *p == format!("{name}-b")));
    let entry = ledger(&s.request_id).await;
    assert_eq!(
        attempt_outcomes(&entry),
        pairs(&[
            (&format!("{name}-a"), expected_outcome),
            (&format!("{name}-b"), "ok")
        ])
    );
    assert_eq!(
        entry["attempts_detail"][0]["completion_tokens"], 4,
        "the part the caller kept is billed"
    );
    assert_eq!(entry["completion_tokens"], answer_chunks(&tag).len());
}

#[tokio::test]
async fn cut_stalled_and_malformed_streams_continue_on_another_provider() {
    rescue_case(
        "cut",
        Behavior::CutAfter {
            after_chunks: 4,
            times: None,
        },
        "cut",
    )
    .await;
    rescue_case(
        "stall",
        Behavior::StallAfter {
            after_chunks: 4,
            times: None,
        },
        "stalled",
    )
    .await;
    rescue_case(
        "malformed",
        Behavior::MalformedAfter {
            after_chunks: 4,
            times: None,
        },
        "malformed",
    )
    .await;
}

#[tokio::test]
async fn the_answer_ends_at_done_while_the_provider_holds_its_connection_open() {
    let h = harness();
    let tag = "hold";
    h.upstream.set(tag, "hold", Behavior::HoldAfterDone);
    let started = Instant::now();
    let s = stream(&h.main_token, &ask("s-hold", tag, true)).await;
    let elapsed = started.elapsed();
    assert_eq!(s.status, 200);
    assert!(s.done, "the caller's stream ends with [DONE]");
    assert_eq!(s.text, answer_for(tag));
    // The router goes on reading the held body for up to drain_deadline_ms (20 s here), so the
    // connection could be reused; the caller's stream must not wait for that.
    assert!(
        elapsed < Duration::from_secs(10),
        "the caller waited {elapsed:?} for the provider's connection to close"
    );
}

#[tokio::test]
async fn a_rescue_without_prefill_restarts_visibly() {
    let h = harness();
    let tag = "restart";
    h.upstream.set(
        tag,
        "restart-a",
        Behavior::CutAfter {
            after_chunks: 3,
            times: None,
        },
    );
    let s = stream(&h.main_token, &ask("s-restart", tag, true)).await;
    assert_eq!(s.rescue_events(), ["restart"]);
    assert_eq!(
        s.text,
        answer_for(tag),
        "after the restart marker the whole answer comes again"
    );
    let restart = &h.upstream.requests(tag, "restart-b")[0];
    assert_eq!(
        restart["messages"].as_array().unwrap().len(),
        1,
        "the original messages, no prefill"
    );
    let entry = ledger(&s.request_id).await;
    assert_eq!(
        attempt_outcomes(&entry),
        pairs(&[("restart-a", "cut"), ("restart-b", "ok")])
    );
    assert_eq!(
        entry["attempts_detail"][0]["cost_usd"], 0.0,
        "discarded text is not billed"
    );
    // Non-streaming callers just get the whole answer.
    let tag = "restart-json";
    h.upstream.set(
        tag,
        "restart-a",
        Behavior::CutAfter {
            after_chunks: 3,
            times: None,
        },
    );
    let body: Value = post(&h.main_token, &ask("s-restart", tag, false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], answer_for(tag));
}

#[tokio::test]
async fn a_missing_done_after_the_finish_is_a_complete_answer() {
    let h = harness();
    let tag = "nodone";
    h.upstream.set(tag, "nodone-a", Behavior::NoDone);
    let s = stream(&h.main_token, &ask("s-nodone", tag, true)).await;
    assert_eq!(s.text, answer_for(tag));
    assert!(s.done, "the caller still gets [DONE]");
    assert_eq!(attempts_seen(tag, "nodone-b"), 0);
    assert_eq!(
        attempt_outcomes(&ledger(&s.request_id).await),
        pairs(&[("nodone-a", "ok")])
    );
}

#[tokio::test]
async fn context_length_moves_to_a_larger_context_and_content_policy_is_passed_on() {
    let h = harness();
    let tag = "ctx";
    let too_long = json!({"error": {"message": "This model's maximum context length is 64 tokens", "type": "invalid_request_error", "code": "context_length_exceeded"}});
    h.upstream.set(
        tag,
        "ctx-small",
        Behavior::Status {
            code: 400,
            body: too_long,
            retry_after: None,
            times: None,
        },
    );
    let s = stream(&h.main_token, &ask("s-ctx", tag, true)).await;
    assert_eq!(
        (s.text.as_str(), s.provider_header.as_deref()),
        (answer_for(tag).as_str(), Some("ctx-big"))
    );
    assert_eq!(
        attempts_seen(tag, "ctx-small2"),
        0,
        "never a context that is not larger"
    );
    assert_eq!(
        attempt_outcomes(&ledger(&s.request_id).await),
        pairs(&[("ctx-small", "context_length"), ("ctx-big", "ok")])
    );

    let tag = "policy";
    let refusal = json!({"error": {"message": "This request was flagged by the content policy.", "type": "invalid_request_error", "code": "content_policy_violation"}});
    h.upstream.set(
        tag,
        "policy-a",
        Behavior::Status {
            code: 400,
            body: refusal,
            retry_after: None,
            times: None,
        },
    );
    let response = post(&h.main_token, &ask("s-policy", tag, true)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "content_policy_violation");
    assert_eq!(
        body["error"]["message"],
        "This request was flagged by the content policy."
    );
    assert_eq!(
        attempts_seen(tag, "policy-b"),
        0,
        "a refusal is not retried elsewhere"
    );
}

#[tokio::test]
async fn when_every_provider_fails_mid_answer_the_stream_ends_with_an_error_not_a_finish() {
    let h = harness();
    let tag = "trunc";
    h.upstream.set(
        tag,
        "trunc-a",
        Behavior::CutAfter {
            after_chunks: 3,
            times: None,
        },
    );
    h.upstream
        .set(tag, "trunc-b", Behavior::ResetBeforeHeaders { times: None });
    let s = stream(&h.main_token, &ask("s-trunc", tag, true)).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.text, answer_chunks(tag)[..3].concat());
    assert!(!s.done, "no [DONE] after a truncated answer");
    assert_eq!(s.finish_reason(), Some("error"));
    assert_eq!(
        s.error().expect("an error event")["code"],
        "incomplete_answer"
    );
    let entry = ledger(&s.request_id).await;
    assert_eq!(entry["outcome"], "truncated");
    assert_eq!(entry["attempts"], 4, "bounded attempts");
    // Non-streaming: an error, not a partial completion.
    let tag = "trunc-json";
    h.upstream.set(
        tag,
        "trunc-a",
        Behavior::CutAfter {
            after_chunks: 3,
            times: None,
        },
    );
    h.upstream
        .set(tag, "trunc-b", Behavior::ResetBeforeHeaders { times: None });
    let response = post(&h.main_token, &ask("s-trunc", tag, false)).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "incomplete_answer");
}

#[tokio::test]
async fn hedging_races_a_slow_first_provider_and_does_not_bill_the_loser() {
    let h = harness();
    let tag = "hedge";
    h.upstream.set(
        tag,
        "hedge-a",
        Behavior::SlowFirstToken {
            delay_ms: 1200,
            times: None,
        },
    );
    let mut body = ask("s-hedge", tag, true);
    body["hedge_ms"] = json!(200);
    let started = Instant::now();
    let s = stream(&h.main_token, &body).await;
    assert_eq!(
        (s.text.as_str(), s.provider_header.as_deref()),
        (answer_for(tag).as_str(), Some("hedge-b"))
    );
    assert!(
        started.elapsed() < Duration::from_millis(1100),
        "did not wait for the slow provider"
    );
    assert_eq!(
        (attempts_seen(tag, "hedge-a"), attempts_seen(tag, "hedge-b")),
        (1, 1)
    );
    let entry = ledger(&s.request_id).await;
    assert_eq!(
        attempt_outcomes(&entry),
        pairs(&[("hedge-a", "hedge_lost"), ("hedge-b", "ok")])
    );
    assert_eq!(entry["attempts_detail"][0]["cost_usd"], 0.0);
}

async fn provider_status(model: &str, provider: &str) -> Value {
    let models: Value = client()
        .get(format!("{}/v1/models", harness().url))
        .bearer_auth(&harness().main_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let model = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == model)
        .unwrap()
        .clone();
    model["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == provider)
        .unwrap()
        .clone()
}

async fn wait_for_status(model: &str, provider: &str, status: &str) {
    for _ in 0..50 {
        if provider_status(model, provider).await["status"] == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{provider} never became {status}: {}",
        provider_status(model, provider).await
    );
}

#[tokio::test]
async fn the_breaker_opens_after_repeated_failures_serves_from_others_and_closes_on_recovery() {
    let h = harness();
    let tag = "breaker";
    h.upstream.set(
        tag,
        "breaker-a",
        Behavior::Status {
            code: 503,
            body: json!({}),
            retry_after: None,
            times: Some(3),
        },
    );
    for _ in 0..3 {
        let s = stream(&h.main_token, &ask("s-breaker", tag, true)).await;
        assert_eq!(
            (s.text.as_str(), s.provider_header.as_deref()),
            (answer_for(tag).as_str(), Some("breaker-b"))
        );
        ledger(&s.request_id).await; // reports land after the response
    }
    wait_for_status("s-breaker", "breaker-a", "open").await;
    let s = stream(&h.main_token, &ask("s-breaker", tag, true)).await;
    assert_eq!(s.provider_header.as_deref(), Some("breaker-b"));
    assert_eq!(
        attempts_seen(tag, "breaker-a"),
        3,
        "an open breaker keeps traffic away"
    );
    ledger(&s.request_id).await;
    // After open_ms (2 s) the provider is probed in its place; it has recovered, so it closes.
    wait_for_status("s-breaker", "breaker-a", "half_open").await;
    let s = stream(&h.main_token, &ask("s-breaker", tag, true)).await;
    assert_eq!(
        (s.text.as_str(), s.provider_header.as_deref()),
        (answer_for(tag).as_str(), Some("breaker-a"))
    );
    assert_eq!(attempts_seen(tag, "breaker-a"), 4);
    ledger(&s.request_id).await;
    wait_for_status("s-breaker", "breaker-a", "closed").await;
}

#[tokio::test]
async fn models_show_prices_and_live_statistics() {
    let h = harness();
    for i in 0..2 {
        let s = stream(&h.main_token, &ask("s-stats", &format!("stats-{i}"), true)).await;
        ledger(&s.request_id).await;
    }
    // Answers that finish together go to the board in one batch of reports: none is lost.
    let together = (2..8).map(|i| {
        let body = ask("s-stats", &format!("stats-{i}"), true);
        async move { stream(&h.main_token, &body).await }
    });
    for s in futures::future::join_all(together).await {
        ledger(&s.request_id).await;
    }
    let mut a = provider_status("s-stats", "stats-a").await;
    for _ in 0..30 {
        if a["successes"] == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        a = provider_status("s-stats", "stats-a").await;
    }
    assert_eq!(a["successes"], 8);
    // The batch's sender wrote them; the others did not wait on it, so no request had a promise
    // resolved from another's context (workerd warns, with a stack trace, each time).
    let log = h.log.lock().unwrap().clone();
    assert!(
        !log.contains("different request context"),
        "cross-request promise resolution in the worker log"
    );
    assert!(a["ttft_ms"].as_f64().unwrap() > 0.0, "{a}");
    assert!(a["tokens_per_second"].as_f64().unwrap() > 0.0, "{a}");
    assert_eq!(
        (
            a["input_usd_per_mtok"].clone(),
            a["output_usd_per_mtok"].clone(),
            a["context_length"].clone()
        ),
        (json!(0.1), json!(0.2), json!(4096))
    );
    assert_eq!(a["status"], "closed");
    let b = provider_status("s-stats", "stats-b").await;
    assert_eq!(
        (b["ttft_ms"].clone(), b["continuation"].clone()),
        (Value::Null, json!("trailing_assistant"))
    );
}

#[tokio::test]
async fn the_real_engine_answers_and_continues_a_cut_stream() {
    let h = harness();
    let body = json!({"model": "smollm2", "stream": true, "temperature": 0, "max_tokens": 24,
                      "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                   // Not "What is the capital of France?": its first answer
                                   // token is a near-tie on SmolLM2 that float rounding decides.
                                   {"role": "user", "content": "Name the capital of France."}]});
    let s = stream(&h.main_token, &body).await;
    assert_eq!(s.provider_header.as_deref(), Some("engine"));
    assert!(s.text.contains("Paris"), "{:?}", s.text);
    assert!(s.done);
    assert_eq!(
        attempt_outcomes(&ledger(&s.request_id).await),
        pairs(&[("engine", "ok")])
    );

    // A fault provider cuts after three chunks; the engine continues the text it was given.
    let tag = "engine-rescue";
    h.upstream.set(
        tag,
        "engine-cut",
        Behavior::CutAfter {
            after_chunks: 3,
            times: None,
        },
    );
    let mut body = ask("smollm2-rescue", tag, true);
    body["temperature"] = json!(0);
    body["max_tokens"] = json!(16);
    let s = stream(&h.main_token, &body).await;
    let sent = answer_chunks(tag)[..3].concat();
    assert!(
        s.text.starts_with(&sent) && s.text.len() > sent.len(),
        "{:?}",
        s.text
    );
    assert_eq!(s.rescue_events(), ["continue"]);
    assert!(
        s.done
            && s.finish_reason()
                .is_some_and(|r| r == "stop" || r == "length")
    );
    assert_eq!(
        attempt_outcomes(&ledger(&s.request_id).await),
        pairs(&[("engine-cut", "cut"), ("engine-rescue", "ok")])
    );
}

#[tokio::test]
async fn the_openai_node_client_streams_through_the_worker() {
    let h = harness();
    let tag = "openai-node";
    h.upstream.set(
        tag,
        "openai-a",
        Behavior::CutAfter {
            after_chunks: 5,
            times: None,
        },
    );
    let output = Command::new("node")
        .arg(repo_root().join("worker/tests/openai_client.mjs"))
        .current_dir(repo_root().join("worker"))
        .env("BASE_URL", format!("{}/v1", h.url))
        .env("TOKEN", &h.main_token)
        .env("MODEL", "s-openai")
        .env("PROMPT", format!("[t:{tag}] tell me"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["stream_text"], answer_for(tag));
    assert_eq!(result["finish_reason"], "stop");
    assert_eq!(result["providers"], json!(["openai-a", "openai-b"]));
    assert!(result["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(result["completion_text"], answer_for(&format!("{tag}-2")));
}

#[tokio::test]
async fn provider_keys_reach_only_their_provider() {
    let h = harness();
    let tag = "keys";
    let leak = json!({"error": {"message": format!("Incorrect API key provided: {FAULT_KEY}"), "code": "invalid_api_key"}});
    h.upstream.set(
        tag,
        "keyed",
        Behavior::Status {
            code: 401,
            body: leak,
            retry_after: None,
            times: None,
        },
    );
    h.upstream.set(
        tag,
        "keyed-b",
        Behavior::Status {
            code: 500,
            body: json!({"error": {"message": FAULT_KEY}}),
            retry_after: None,
            times: None,
        },
    );
    let response = post(&h.main_token, &ask("s-keyed", tag, true)).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 502, "{text}");
    assert!(
        !text.contains(FAULT_KEY) && !text.contains("SECRET"),
        "{text}"
    );
    assert_eq!(
        h.upstream.auth_headers(tag, "keyed")[0].as_deref(),
        Some(format!("Bearer {FAULT_KEY}").as_str())
    );
    let keyless = h.upstream.auth_headers(tag, "keyed-b");
    assert!(
        !keyless.is_empty() && keyless.iter().all(Option::is_none),
        "no key for a keyless provider: {keyless:?}"
    );
    // A provider that rejects the request and echoes its key: the caller gets the rejection
    // (no other provider took the request), without the key.
    let echo_tag = "keys-echo";
    let echo = json!({"error": {"message": format!("unsupported parameter (request sent with key {FAULT_KEY})")}});
    for (provider, code, body) in [("keyed", 400, echo), ("keyed-b", 500, json!({}))] {
        h.upstream.set(
            echo_tag,
            provider,
            Behavior::Status {
                code,
                body,
                retry_after: None,
                times: None,
            },
        );
    }
    let response = post(&h.main_token, &ask("s-keyed", echo_tag, true)).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("request sent with key [redacted]") && !text.contains(FAULT_KEY),
        "{text}"
    );
    let usage = client()
        .get(format!("{}/v1/usage", h.url))
        .bearer_auth(&h.main_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!usage.contains(FAULT_KEY));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = h.log.lock().unwrap().clone();
    assert!(
        !log.contains(FAULT_KEY),
        "the key appeared in the worker log"
    );
    assert!(
        !log.contains("mainsecret"),
        "a caller token appeared in the worker log"
    );
}

#[tokio::test]
async fn tokens_limits_and_budgets() {
    let h = harness();
    let unauthorized = [
        None,
        Some("Bearer nope"),
        Some("Bearer ec_main_wrongsecret"),
        Some("Bearer ec_ghost_mainsecret"),
    ];
    for auth in unauthorized {
        let mut request = client()
            .post(format!("{}/v1/chat/completions", h.url))
            .json(&ask("s-ok", "auth", true));
        if let Some(a) = auth {
            request = request.header("authorization", a);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    // Two requests per minute, then 429 with Retry-After.
    for i in 0..2 {
        let s = stream(&h.limited_token, &ask("s-ok", &format!("rpm-{i}"), true)).await;
        assert_eq!(s.status, 200);
    }
    let response = post(&h.limited_token, &ask("s-ok", "rpm-2", true)).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(attempts_seen("rpm-2", "ok-a"), 0);
    // A budget of $0.01: one $100k-per-Mtok answer spends it, the next request gets 402.
    let s = stream(&h.poor_token, &ask("s-pricey", "budget-0", true)).await;
    assert_eq!(s.status, 200);
    assert!(s.usage()["cost_usd"].as_f64().unwrap() > 0.01);
    let mut status = 0;
    for _ in 0..20 {
        status = post(&h.poor_token, &ask("s-pricey", "budget-1", true))
            .await
            .status()
            .as_u16();
        if status == 402 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // the charge lands after the response
    }
    assert_eq!(status, 402);
}

/// A busy token is admitted from leases (the gate grants a few requests at a time, here at most
/// 5, a 20th of 100 per minute): a burst past the limit still gets at most the limit's answers,
/// then 429s.
#[tokio::test]
async fn a_burst_of_requests_never_passes_more_than_the_per_minute_limit() {
    let h = harness();
    let (mut answered, mut limited) = (0, 0);
    for wave in 0..13 {
        let statuses = futures::future::join_all((0..10).map(|i| async move {
            let response = post(
                &h.burst_token,
                &ask("s-ok", &format!("burst-{wave}-{i}"), false),
            )
            .await;
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            status
        }))
        .await;
        for status in statuses {
            match status {
                200 => answered += 1,
                429 => limited += 1,
                other => panic!("status {other} in a burst"),
            }
        }
    }
    assert!(
        answered <= 100,
        "{answered} answers with a limit of 100 per minute"
    );
    // Leases unused when the 429s begin count as made: a few answers fewer, never more.
    assert!(answered >= 90, "only {answered} answers of 100 allowed");
    assert_eq!(answered + limited, 130);
}

#[tokio::test]
async fn bad_input_gets_openai_errors_and_never_a_500() {
    let h = harness();
    let url = format!("{}/v1/chat/completions", h.url);
    let send = |body: Vec<u8>| {
        client()
            .post(url.clone())
            .bearer_auth(&h.main_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "invalid_request"),
        (b"[]".to_vec(), 400, "invalid_request"),
        (
            json!({"model": "s-ok"}).to_string().into_bytes(),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "s-ok", "messages": [{"role": "user", "content": "x"}], "n": 3})
                .to_string()
                .into_bytes(),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]})
                .to_string()
                .into_bytes(),
            404,
            "model_not_found",
        ),
        (
            json!({"model": "s-ok:nobody", "messages": [{"role": "user", "content": "x"}]})
                .to_string()
                .into_bytes(),
            400,
            "invalid_request",
        ),
        (vec![b'x'; 70_000], 413, "request_too_large"),
        (vec![0xff, 0xfe, 0x00], 400, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let response = send(body).await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code);
        if code == "model_not_found" {
            assert!(
                error["error"]["message"].as_str().unwrap().contains("s-ok"),
                "{error}"
            );
        }
    }
    // Random bodies never produce a 5xx.
    let mut seed = 0x2545F4914F6CDD1Du64;
    for _ in 0..20 {
        let length = (seed % 300) as usize;
        let body: Vec<u8> = (0..length)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let alphabet = b"{}[]\":,0123456789abcmodelsgrtu \\\xff";
                alphabet[(seed % alphabet.len() as u64) as usize]
            })
            .collect();
        assert!(send(body).await.unwrap().status().as_u16() < 500);
    }
    let wrong_method = client()
        .get(url.clone())
        .bearer_auth(&h.main_token)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    let unknown = client()
        .get(format!("{}/v2/nothing", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn cors_allows_listed_origins_only() {
    let h = harness();
    let preflight = |origin: &'static str| {
        client()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/chat/completions", h.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, x-stainless-os",
            )
            .send()
    };
    let allowed = preflight("http://localhost:8000").await.unwrap();
    assert_eq!(allowed.status(), 204);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://localhost:8000"
    );
    assert!(allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("x-stainless-os"));
    let denied = preflight("https://evil.example").await.unwrap();
    assert_eq!(denied.status(), 403);
    assert!(denied
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let response = client()
        .get(format!("{}/v1/models", h.url))
        .bearer_auth(&h.main_token)
        .header("origin", "http://localhost:8000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://localhost:8000"
    );
    assert!(response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-edgechat-provider"));
}
