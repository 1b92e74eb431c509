//! The OpenAI-shaped surface: request validation and error objects.

use serde_json::{json, Map, Value};

/// An OpenAI-style error response: status, `error.type`, `error.code`, message.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: Option<String>,
    pub message: String,
    pub param: Option<String>,
    /// Seconds, for 429 and 503.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            code: Some(code.into()),
            message: message.into(),
            param: None,
            retry_after_s: None,
        }
    }

    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> ApiError {
        let mut e = ApiError::new(400, "invalid_request_error", "invalid_request", message);
        e.param = param.map(String::from);
        e
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(401, "authentication_error", "invalid_api_key", message)
    }
    pub fn budget_exhausted(budget_usd: f64) -> ApiError {
        ApiError::new(
            402,
            "insufficient_quota",
            "budget_exhausted",
            format!("this token's budget of ${budget_usd:.4} is spent"),
        )
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, "invalid_request_error", "not_found", message)
    }
    pub fn model_not_found(model: &str, known: &[String]) -> ApiError {
        let mut e = ApiError::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!(
                "model {model:?} does not exist; known models: {}",
                known.join(", ")
            ),
        );
        e.param = Some("model".into());
        e
    }
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "invalid_request_error",
            "method_not_allowed",
            "method not allowed on this path",
        )
    }
    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }
    pub fn rate_limited(retry_after_s: u64, limit: u32) -> ApiError {
        let mut e = ApiError::new(
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            format!(
                "more than {limit} requests per minute for this token; retry in {retry_after_s} s"
            ),
        );
        e.retry_after_s = Some(retry_after_s);
        e
    }
    /// Every provider failed before the answer started.
    pub fn upstream_failed(message: impl Into<String>) -> ApiError {
        ApiError::new(502, "upstream_error", "all_providers_failed", message)
    }
    pub fn unavailable(message: impl Into<String>, retry_after_s: Option<u64>) -> ApiError {
        let mut e = ApiError::new(503, "upstream_error", "no_provider_available", message);
        e.retry_after_s = retry_after_s;
        e
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "server_error", "internal_error", message)
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// A validated chat request. Messages are forwarded as sent; the sampling fields a provider
/// understands are kept in `sampling` and forwarded, everything else is dropped.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Value>,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u32>,
    /// Opt-in hedging for this request (non-standard field; `extra_body` in the OpenAI SDKs).
    pub hedge_ms: Option<u64>,
    pub sampling: Map<String, Value>,
}

/// Fields forwarded to providers unchanged.
const FORWARDED: &[&str] = &[
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "user",
];
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];
/// Upper bound on `max_tokens`, far above any context length.
const MAX_TOKENS_LIMIT: u64 = 1 << 20;

impl ChatRequest {
    pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid_request(format!("request body is not valid JSON: {e}"), None)
        })?;
        let Value::Object(mut object) = value else {
            return Err(ApiError::invalid_request(
                "request body must be a JSON object",
                None,
            ));
        };
        let model = match object.remove("model") {
            Some(Value::String(m)) if !m.is_empty() => m,
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "`model` must be a non-empty string",
                    Some("model"),
                ))
            }
            None => {
                return Err(ApiError::invalid_request(
                    "`model` is required",
                    Some("model"),
                ))
            }
        };
        let messages = match object.remove("messages") {
            Some(Value::Array(m)) if !m.is_empty() => m,
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "`messages` must be a non-empty array",
                    Some("messages"),
                ))
            }
            None => {
                return Err(ApiError::invalid_request(
                    "`messages` is required",
                    Some("messages"),
                ))
            }
        };
        for (i, message) in messages.iter().enumerate() {
            let role = message.get("role").and_then(Value::as_str);
            if !role.is_some_and(|r| ROLES.contains(&r)) {
                return Err(ApiError::invalid_request(
                    format!("messages[{i}].role must be one of {}", ROLES.join(", ")),
                    Some("messages"),
                ));
            }
            match message.get("content") {
                Some(Value::String(_)) | Some(Value::Array(_)) | Some(Value::Null) | None => {}
                Some(_) => {
                    return Err(ApiError::invalid_request(
                        format!("messages[{i}].content must be a string or an array of parts"),
                        Some("messages"),
                    ))
                }
            }
        }
        let stream = match object.remove("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "`stream` must be a boolean",
                    Some("stream"),
                ))
            }
        };
        let include_usage = match object.remove("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid_request(
                        "`stream_options.include_usage` must be a boolean",
                        Some("stream_options"),
                    ))
                }
            },
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "`stream_options` must be an object",
                    Some("stream_options"),
                ))
            }
        };
        let mut max_tokens = None;
        for field in ["max_tokens", "max_completion_tokens"] {
            match object.remove(field) {
                None | Some(Value::Null) => {}
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=MAX_TOKENS_LIMIT).contains(&n) => max_tokens = Some(n as u32),
                    _ => {
                        return Err(ApiError::invalid_request(
                            format!("`{field}` must be an integer from 1 to {MAX_TOKENS_LIMIT}"),
                            Some(field),
                        ))
                    }
                },
            }
        }
        match object.remove("n") {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64() == Some(1) => {}
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "only `n: 1` is supported",
                    Some("n"),
                ))
            }
        }
        let hedge_ms = match object.remove("hedge_ms") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(ms) if ms <= 600_000 => Some(ms),
                _ => {
                    return Err(ApiError::invalid_request(
                        "`hedge_ms` must be an integer number of milliseconds up to 600000",
                        Some("hedge_ms"),
                    ))
                }
            },
        };
        if let Some(t) = object.get("temperature") {
            if !t.is_null() && !t.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) {
                return Err(ApiError::invalid_request(
                    "`temperature` must be a number from 0 to 2",
                    Some("temperature"),
                ));
            }
        }
        let sampling = FORWARDED
            .iter()
            .filter_map(|k| object.remove(*k).map(|v| (k.to_string(), v)))
            .collect();
        Ok(ChatRequest {
            model,
            messages,
            stream,
            include_usage,
            max_tokens,
            hedge_ms,
            sampling,
        })
    }

    /// Characters of message text, for the prompt-size estimate.
    pub fn prompt_chars(&self) -> usize {
        self.messages
            .iter()
            .map(|m| message_text_len(m.get("content")))
            .sum()
    }
}

fn message_text_len(content: Option<&Value>) -> usize {
    match content {
        Some(Value::String(s)) => s.len(),
        Some(Value::Array(parts)) => parts.iter().map(|p| message_text_len(p.get("text"))).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse(v.to_string().as_bytes())
    }

    #[test]
    fn parses_a_streaming_request_and_keeps_sampling_fields() {
        let r = parse(json!({
            "model": "m:cheapest", "messages": [{"role": "user", "content": "hi"}], "stream": true,
            "stream_options": {"include_usage": true}, "max_tokens": 5, "temperature": 0.5, "seed": 3,
            "logprobs": true, "hedge_ms": 200
        }))
        .unwrap();
        assert_eq!(r.model, "m:cheapest");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.hedge_ms, Some(200));
        assert_eq!(
            r.sampling.keys().collect::<Vec<_>>(),
            ["seed", "temperature"]
        );
        assert_eq!(r.prompt_chars(), 2);
    }

    #[test]
    fn malformed_requests_are_400_with_the_param() {
        let cases = [
            (json!([1]), None),
            (
                json!({"messages": [{"role": "user", "content": "x"}]}),
                Some("model"),
            ),
            (json!({"model": "m"}), Some("messages")),
            (json!({"model": "m", "messages": []}), Some("messages")),
            (
                json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
                Some("messages"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 3}]}),
                Some("messages"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "stream": "yes"}),
                Some("stream"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": 0}),
                Some("max_tokens"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": -4}),
                Some("max_tokens"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "n": 2}),
                Some("n"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "temperature": 9}),
                Some("temperature"),
            ),
        ];
        for (body, param) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, param), "{body}");
        }
        let e = ChatRequest::parse(b"{not json").unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
    }
}
