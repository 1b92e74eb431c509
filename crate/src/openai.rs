//! OpenAI's chat-completions shapes, shared by `edgechat serve` and the browser package: a request
//! checked and turned into what the [`Engine`] needs, the prompt it renders to, and the
//! `chat.completion` / `chat.completion.chunk` objects of the answer.
//!
//! Assistant prefill: when the LAST message has role `assistant`, no new answer starts. The
//! conversation before it is rendered with the generation prompt, the assistant text is appended
//! (tokenized as plain text) and the model continues it; the answer holds only the continuation.
//! The router worker and the hybrid hand-off use this to resume a partial answer.
//!
//! Sampling defaults follow OpenAI (temperature 1, top_p 1) plus llama.cpp's server filters
//! (top-k 40, min-p 0.05), which keep small models coherent at temperature 1.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::chat::Message;
use crate::sampling::SamplingParams;
use crate::session::{Engine, FinishReason};

/// At most this many stop sequences (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;

/// A request the caller must fix, in OpenAI's terms (`invalid_request_error`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub message: String,
    /// The request field at fault.
    pub param: Option<&'static str>,
    /// OpenAI's machine-readable code, e.g. `context_length_exceeded`.
    pub code: Option<&'static str>,
}

impl RequestError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            message: message.into(),
            param,
            code: None,
        }
    }

    /// OpenAI's wording. The prompt must leave room for at least one generated token.
    pub fn context_length_exceeded(prompt_tokens: usize, limit: usize) -> Self {
        Self {
            message: format!(
                "This model's maximum context length is {limit} tokens. However, your messages resulted in \
                 {prompt_tokens} tokens, which leaves no room for the completion."
            ),
            param: Some("messages"),
            code: Some("context_length_exceeded"),
        }
    }
}

/// The fields read from a request. Others are ignored, `model` included: there is one model.
/// Features the engine does not have (tools, structured output, log probabilities) are read to
/// be refused by name: ignored, they would give an answer that only looks like what was asked.
#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    messages: Option<Vec<RawMessage>>,
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
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u64>,
}

#[derive(Deserialize)]
struct RawMessage {
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
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// The last message is an assistant prefill to continue.
    pub continue_last: bool,
    pub params: SamplingParams,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk carries the usage.
    pub include_usage: bool,
}

impl ChatRequest {
    /// Checks a request body against a model with `context_length` tokens of context.
    pub fn parse(body: &[u8], context_length: usize) -> Result<Self, RequestError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            RequestError::invalid(format!("The request body is not valid JSON: {e}"), None)
        })?;
        Self::from_value(value, context_length)
    }

    /// [`parse`](Self::parse) for a request already parsed as JSON.
    pub fn from_value(value: Value, context_length: usize) -> Result<Self, RequestError> {
        if !value.is_object() {
            return Err(RequestError::invalid(
                "The request body must be a JSON object",
                None,
            ));
        }
        let request: RawRequest = serde_json::from_value(value)
            .map_err(|e| RequestError::invalid(format!("Invalid request: {e}"), None))?;
        refuse_what_the_engine_cannot_do(&request)?;

        let Some(raw_messages) = request.messages else {
            return Err(RequestError::invalid(
                "Missing required parameter: 'messages'.",
                Some("messages"),
            ));
        };
        if raw_messages.is_empty() {
            return Err(RequestError::invalid(
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
                    return Err(RequestError::invalid(
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
                return Err(RequestError::invalid(
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
            return Err(RequestError::invalid(
                "temperature must be between 0 and 2",
                Some("temperature"),
            ));
        }
        let top_p = request.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(RequestError::invalid(
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
                return Err(RequestError::invalid(
                    format!("{name} must be between -2 and 2"),
                    None,
                ));
            }
        }
        if request.n.is_some_and(|n| n != 1) {
            return Err(RequestError::invalid("Only n = 1 is supported", Some("n")));
        }
        let stop = match request.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(RequestError::invalid(
                format!("At most {MAX_STOP_SEQUENCES} stop sequences are allowed"),
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
        Ok(ChatRequest {
            messages,
            continue_last,
            params,
            stream,
            include_usage,
        })
    }

    /// The prompt tokens, checked against the context (which must leave room for at least one new
    /// token). With `continue_last`, the last (assistant) message is not rendered as a finished
    /// turn: the conversation before it gets the generation prompt and the assistant text follows
    /// as plain text, so the model continues it.
    pub fn prompt(&self, engine: &Engine) -> Result<Vec<u32>, PromptError> {
        let template = engine.template();
        let tokenizer = engine.tokenizer();
        let prompt = match self.messages.split_last() {
            Some((prefill, before)) if self.continue_last => {
                let mut prompt = template.render(tokenizer, before, true)?;
                prompt.extend(tokenizer.encode(&prefill.content)?);
                prompt
            }
            _ => template.render(tokenizer, &self.messages, true)?,
        };
        // The checks `generate` makes, answered in the API's terms (`check_prompt` fails with
        // ContextLength for a prompt that is too long, otherwise only for an empty one).
        match engine.check_prompt(&prompt) {
            Ok(()) => Ok(prompt),
            Err(crate::Error::ContextLength { limit, .. }) => Err(PromptError::Request(
                RequestError::context_length_exceeded(prompt.len(), limit),
            )),
            Err(_) => Err(PromptError::Request(RequestError::invalid(
                "The conversation renders to an empty prompt",
                Some("messages"),
            ))),
        }
    }
}

/// Why a request has no prompt: the caller's fault, or the engine's.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Engine(crate::Error),
}

impl From<crate::Error> for PromptError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Template(m) => PromptError::Request(RequestError::invalid(
                format!("chat template: {m}"),
                Some("messages"),
            )),
            other => PromptError::Engine(other),
        }
    }
}

/// The text of a message's `content`: a string, or the concatenated `text` of an array of
/// `{type: "text", text}` parts (other part types, such as images, are refused). Null is empty
/// (an assistant message that only called tools).
/// Refuses tools, structured output and log probabilities; their "off" values (no tools,
/// `tool_choice: "none"` or `"auto"`, `response_format: {"type": "text"}`, `logprobs: false`)
/// pass, since clients send them by default.
fn refuse_what_the_engine_cannot_do(request: &RawRequest) -> Result<(), RequestError> {
    let given = |v: &Option<Value>| {
        v.as_ref()
            .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
    };
    if given(&request.tools) || given(&request.functions) {
        return Err(RequestError::invalid(
            "tools (function calling) are not supported by this engine",
            Some("tools"),
        ));
    }
    if request
        .tool_choice
        .as_ref()
        .is_some_and(|c| !c.is_null() && *c != "none" && *c != "auto")
    {
        return Err(RequestError::invalid(
            "tool_choice is not supported by this engine (no tools)",
            Some("tool_choice"),
        ));
    }
    if let Some(format) = request.response_format.as_ref().filter(|f| !f.is_null()) {
        if format["type"] != "text" {
            return Err(RequestError::invalid(
                format!(
                    "response_format {} is not supported by this engine (only {{\"type\": \"text\"}})",
                    format["type"]
                ),
                Some("response_format"),
            ));
        }
    }
    if request.logprobs == Some(true) || request.top_logprobs.is_some_and(|n| n > 0) {
        return Err(RequestError::invalid(
            "logprobs are not supported by this engine",
            Some("logprobs"),
        ));
    }
    Ok(())
}

fn message_text(index: usize, content: Value) -> Result<String, RequestError> {
    let invalid = |why: &str| {
        RequestError::invalid(format!("messages[{index}].content {why}"), Some("messages"))
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

/// OpenAI's `finish_reason` for how generation ended. A cancelled answer is one the caller
/// stopped: what it received ends normally.
pub fn finish_reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Builds the objects of one answer: they share its id, creation time and model name.
#[derive(Debug, Clone)]
pub struct Answer {
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    /// Streamed chunks carry `"usage": null` until the last one carries the usage.
    pub include_usage: bool,
}

impl Answer {
    /// A `chat.completion.chunk` with one choice.
    pub fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
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
        chunk
    }

    /// The last chunk of a stream with `include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, prompt_tokens: usize, completion_tokens: usize) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(prompt_tokens, completion_tokens),
        })
    }

    /// A whole `chat.completion`.
    pub fn completion(
        &self,
        content: &str,
        finish_reason: &str,
        prompt_tokens: usize,
        completion_tokens: usize,
    ) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content },
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": usage(prompt_tokens, completion_tokens),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ChatRequest, RequestError> {
        ChatRequest::from_value(body, 2048)
    }

    #[test]
    fn a_request_becomes_messages_and_sampling() {
        let r = parse(json!({
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            ],
            "temperature": 0, "top_p": 0.5, "max_tokens": 9999, "stop": "\n", "seed": 7,
            "stream": true, "stream_options": {"include_usage": true},
        }))
        .unwrap();
        assert_eq!(r.messages[0].role, "system");
        assert_eq!(r.messages[1].content, "Hi there");
        assert!(!r.continue_last);
        assert_eq!(r.params.temperature, 0.0);
        assert_eq!(r.params.top_p, 0.5);
        assert_eq!(r.params.max_tokens, 2048, "clipped to the context");
        assert_eq!(r.params.stop, vec!["\n".to_string()]);
        assert_eq!(r.params.seed, Some(7));
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn bad_requests_say_which_field() {
        let cases = [
            (json!([]), None),
            (json!({}), Some("messages")),
            (json!({"messages": []}), Some("messages")),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                Some("messages"),
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                Some("messages"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
                Some("temperature"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "top_p": 0}),
                Some("top_p"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                Some("max_tokens"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
                Some("n"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}),
                Some("stop"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}]}),
                Some("tools"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}),
                Some("tool_choice"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}),
                Some("response_format"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true}),
                Some("logprobs"),
            ),
        ];
        for (body, param) in cases {
            let e = parse(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.param, param, "{body}: {}", e.message);
            assert!(!e.message.is_empty());
        }
        assert!(ChatRequest::parse(b"{not json", 10).is_err());
        // What clients send by default for those features is not a request for them.
        let defaults = json!({"messages": [{"role": "user", "content": "x"}], "tools": [],
            "tool_choice": "none", "response_format": {"type": "text"}, "logprobs": false, "top_logprobs": null});
        assert!(parse(defaults).is_ok());
    }

    #[test]
    fn a_trailing_assistant_message_is_continued() {
        let r = parse(json!({"messages": [
            {"role": "user", "content": "Count"}, {"role": "assistant", "content": "1, 2,"}
        ]}))
        .unwrap();
        assert!(r.continue_last);
        assert!(!r.include_usage, "include_usage needs stream");
    }

    #[test]
    fn chunks_and_completions_have_openai_shapes() {
        let answer = Answer {
            id: "chatcmpl-1".into(),
            created: 5,
            model: "m".into(),
            include_usage: true,
        };
        let chunk = answer.chunk(json!({"content": "Hi"}), None);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["choices"][0]["delta"]["content"], "Hi");
        assert!(chunk["usage"].is_null() && chunk.get("usage").is_some());
        let last = answer.usage_chunk(3, 4);
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 7);
        let done = answer.completion("Hi", "stop", 3, 1);
        assert_eq!(done["choices"][0]["message"]["content"], "Hi");
        assert_eq!(done["usage"]["completion_tokens"], 1);
        assert_eq!(finish_reason_name(FinishReason::Cancelled), "stop");
    }
}
