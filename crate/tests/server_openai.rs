//! `edgechat serve` end to end, on SmolLM2-135M-Instruct (Q4_1): the official OpenAI Node client
//! (crate/tests/openai_client, `npm install`ed on first use) streams and requests a completion,
//! and raw HTTP requests check the error shapes, the event-stream format, the assistant prefill
//! and that a client that disconnects cancels its generation.
//!
//! Needs `node` and `npm` on PATH (the npm registry is reached once, for `openai`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SMOLLM2: &str = "smollm2-135m-instruct-q4_1.gguf";
const MODEL_NAME: &str = "smollm2-test";

fn model_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join(SMOLLM2);
    assert!(
        path.exists(),
        "test model {} is missing: run scripts/models",
        path.display()
    );
    path
}

/// A running `edgechat serve`, killed when dropped (also when a test fails).
struct Server {
    child: Child,
    port: u16,
    /// The server's stderr, line by line (request logs).
    stderr_lines: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts a server on a free port (`--port 0`) and waits for its `listening on` line.
    fn start() -> Server {
        let model = model_path();
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgechat"))
            .args([
                "serve",
                "--model",
                model.to_str().unwrap(),
                "--port",
                "0",
                "--model-name",
                MODEL_NAME,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("edgechat serve starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                if err_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            port: 0,
            stderr_lines,
        };
        let line = line_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the server printed `listening on ...` within 120 s");
        let address = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        server.port = address
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .expect("a port number");
        server
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the server");
        stream
            .set_read_timeout(Some(Duration::from_secs(180)))
            .unwrap();
        stream
    }

    /// One request on a fresh connection (`Connection: close`); returns status, headers, body.
    fn request(&self, method: &str, path: &str, extra_headers: &str, body: &[u8]) -> HttpResponse {
        let mut stream = self.connect();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n{extra_headers}\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        HttpResponse::parse(&raw)
    }

    fn post_json(&self, path: &str, body: &Value) -> HttpResponse {
        self.request(
            "POST",
            path,
            "Content-Type: application/json\r\n",
            body.to_string().as_bytes(),
        )
    }

    /// Waits up to `timeout` for a server log line containing `needle`.
    fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

struct HttpResponse {
    status: u16,
    headers: String,
    body: String,
}

impl HttpResponse {
    fn parse(raw: &[u8]) -> HttpResponse {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {text:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status code");
        let headers = head.to_ascii_lowercase();
        let body = if headers.contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// Asserts an OpenAI error object with this status.
    fn assert_error(&self, status: u16, code: Option<&str>) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert!(
            self.headers.contains("content-type: application/json"),
            "{}",
            self.headers
        );
        let body = self.json();
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(error["type"].is_string(), "{body}");
        assert!(
            error.get("param").is_some() && error.get("code").is_some(),
            "{body}"
        );
        if let Some(code) = code {
            assert_eq!(error["code"], code, "{body}");
        }
        body
    }
}

/// Decodes an HTTP/1.1 chunked body (sizes in hex, each chunk followed by CRLF).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// The `data:` payloads of a server-sent event stream.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}

fn france_messages() -> Value {
    json!([
        { "role": "system", "content": "You are a helpful assistant." },
        // Not "What is the capital of France?", whose first token is a near-tie on SmolLM2.
        { "role": "user", "content": "Name the capital of France." },
    ])
}

fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn openai_node_client_streams_and_completes() {
    assert!(
        node_available(),
        "this test needs `node` (and `npm`) on PATH"
    );
    let client_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("openai_client");
    if !client_dir.join("node_modules").join("openai").exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&client_dir)
            .status()
            .expect("npm runs");
        assert!(
            status.success(),
            "npm install in {} failed",
            client_dir.display()
        );
    }

    let server = Server::start();
    let out = Command::new("node")
        .arg("stream.mjs")
        .arg(server.base_url())
        .current_dir(&client_dir)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node stream.mjs failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    let streamed = result["stream_text"].as_str().unwrap();
    assert!(!streamed.is_empty(), "{result}");
    assert!(streamed.contains("Paris"), "streamed answer: {streamed:?}");
    assert_eq!(result["stream_first_role"], "assistant");
    assert!(
        ["stop", "length"].contains(&result["stream_finish_reason"].as_str().unwrap_or("")),
        "{result}"
    );
    // include_usage: the last chunk carries the token counts.
    let usage = &result["stream_usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{result}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // Temperature 0 is greedy: the plain call gives the same text.
    assert_eq!(result["text"].as_str().unwrap(), streamed, "{result}");
    assert!(
        result["id"].as_str().unwrap().starts_with("chatcmpl-"),
        "{result}"
    );
    assert_eq!(result["usage"], result["stream_usage"]);
    assert_eq!(result["models"], json!([MODEL_NAME]));
}

#[test]
fn raw_http_endpoints_and_errors() {
    let server = Server::start();

    let health = server.request("GET", "/health", "", b"");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");

    let models = server.request("GET", "/v1/models", "", b"");
    assert_eq!(models.status, 200);
    let models = models.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL_NAME);
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(
        server
            .request("GET", &format!("/v1/models/{MODEL_NAME}"), "", b"")
            .status,
        200
    );
    server
        .request("GET", "/v1/models/other", "", b"")
        .assert_error(404, Some("model_not_found"));

    server
        .request("GET", "/v1/no/such/path", "", b"")
        .assert_error(404, None);
    server
        .request("POST", "/v1/completions", "", b"{}")
        .assert_error(404, None);
    server
        .request("GET", "/v1/chat/completions", "", b"")
        .assert_error(405, None);

    let post = |body: &[u8]| {
        server.request(
            "POST",
            "/v1/chat/completions",
            "Content-Type: application/json\r\n",
            body,
        )
    };
    post(b"{\"messages\": [").assert_error(400, None);
    post(b"").assert_error(400, None);
    post(b"[1, 2]").assert_error(400, None);
    post(&[0xff, 0xfe, 0x00]).assert_error(400, None);
    let missing = post(br#"{"model": "x"}"#).assert_error(400, None);
    assert_eq!(missing["error"]["param"], "messages");
    post(br#"{"messages": []}"#).assert_error(400, None);
    post(br#"{"messages": [{"role": "user", "content": 5}]}"#).assert_error(400, None);
    post(br#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#)
        .assert_error(400, None);
    post(br#"{"messages": [{"role": "wizard", "content": "hi"}]}"#).assert_error(400, None);
    post(br#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#)
        .assert_error(400, None);
    post(br#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 7}"#)
        .assert_error(400, None);
    post(br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}"#)
        .assert_error(400, None);

    // SmolLM2's context is 8192 tokens; "hello " 9000 times is about 9000.
    let long = json!({ "messages": [{ "role": "user", "content": "hello ".repeat(9000) }] });
    let error = server
        .post_json("/v1/chat/completions", &long)
        .assert_error(400, Some("context_length_exceeded"));
    assert!(
        error["error"]["message"].as_str().unwrap().contains("8192"),
        "{error}"
    );

    // A declared body over the 4 MiB limit is refused before it is sent.
    let mut stream = server.connect();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
                Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    HttpResponse::parse(&raw).assert_error(413, Some("request_too_large"));

    // The server still answers after all that.
    let ok = server.post_json(
        "/v1/chat/completions",
        &json!({ "messages": france_messages(), "temperature": 0, "max_completion_tokens": 32, "stop": ["."] }),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let ok = ok.json();
    assert_eq!(ok["object"], "chat.completion");
    assert_eq!(ok["model"], MODEL_NAME);
    assert_eq!(ok["choices"][0]["message"]["role"], "assistant");
    // Greedy says "The capital of France is Paris."; the stop string cuts the period.
    assert_eq!(
        ok["choices"][0]["message"]["content"],
        "The capital of France is Paris"
    );
    assert_eq!(ok["choices"][0]["finish_reason"], "stop");
}

#[test]
fn raw_stream_prefill_and_disconnect() {
    let server = Server::start();

    // Event-stream format: role first, content deltas, a finish chunk, the usage chunk, [DONE].
    let request = json!({
        "messages": [
            { "role": "system", "content": "You are a helpful assistant." },
            // Content as an array of text parts.
            { "role": "user", "content": [{ "type": "text", "text": "Name the capital " }, { "type": "text", "text": "of France." }] },
        ],
        "temperature": 0,
        "max_tokens": 3,
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    let response = server.post_json("/v1/chat/completions", &request);
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.headers.contains("content-type: text/event-stream"),
        "{}",
        response.headers
    );
    let data = sse_data(&response.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.len() >= 4, "{data:?}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    assert!(
        chunks
            .iter()
            .all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"),
        "{data:?}"
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 3);
    let finish_chunk = &chunks[chunks.len() - 2];
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], "length");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "The capital of");

    // Assistant prefill: the last message is continued, and only the continuation comes back.
    let mut messages = france_messages();
    messages
        .as_array_mut()
        .unwrap()
        .push(json!({ "role": "assistant", "content": "The capital of France is" }));
    let response = server.post_json(
        "/v1/chat/completions",
        &json!({ "messages": messages, "temperature": 0, "max_tokens": 4 }),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    let content = response.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(content.starts_with(" Paris"), "continuation: {content:?}");

    // A client that leaves mid-stream cancels its generation: read the first content delta of a
    // long story, hang up, and the server logs the cancellation long before 2000 tokens.
    let mut stream = server.connect();
    let body = json!({
        "messages": [{ "role": "user", "content": "Write a very long story about a dragon." }],
        "temperature": 0,
        "max_tokens": 2000,
        "stream": true,
    })
    .to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while count_content_deltas(&received) < 1 {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    let log = server.wait_for_log("cancelled (client gone)", Duration::from_secs(120));
    let log = log.expect("the server logged the cancelled generation within 120 s");
    // "... N generated ..." — far fewer than the 2000 asked for.
    let generated: usize = log
        .split(", ")
        .find_map(|part| part.strip_suffix(" generated"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no token count in {log:?}"));
    assert!(generated < 2000, "{log}");

    // And the engine is free for the next requests, which queue and are answered in turn.
    let answers: Vec<_> = (0..3)
        .map(|_| {
            let body = json!({ "messages": france_messages(), "temperature": 0, "max_tokens": 6 })
                .to_string();
            let mut stream = server.connect();
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            std::thread::spawn(move || {
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(body.as_bytes()).unwrap();
                let mut raw = Vec::new();
                stream.read_to_end(&mut raw).unwrap();
                HttpResponse::parse(&raw)
            })
        })
        .collect();
    for answer in answers {
        let answer = answer.join().unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(
            answer.json()["choices"][0]["message"]["content"],
            "The capital of France is Paris"
        );
    }
}

/// Content deltas seen so far in a raw event stream (the first chunk, with the role, not counted).
fn count_content_deltas(raw: &[u8]) -> usize {
    String::from_utf8_lossy(raw)
        .matches("\"content\":\"")
        .count()
        .saturating_sub(1)
}
