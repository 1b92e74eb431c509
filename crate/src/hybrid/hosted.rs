//! The hosted route's side of an answer: the request the router gets (the caller's own request,
//! so messages and sampling are the same; for a hand-off, the text already shown as an assistant
//! prefill to continue), and what each event of the router's stream means.

use serde_json::{json, Value};

/// The router request for `request` (the caller's OpenAI request as JSON). With `shown` text from
/// the local engine, the router continues that text: it goes in as the assistant's prefill (added
/// to one the caller already gave) and `max_tokens` shrinks by the tokens already produced.
pub fn router_request(
    request: &Value,
    router_model: &str,
    shown: &str,
    tokens_shown: usize,
) -> Value {
    let mut body = request.clone();
    body["model"] = json!(router_model);
    body["stream"] = json!(true);
    body["stream_options"] = json!({ "include_usage": true });
    if !shown.is_empty() {
        if let Some(messages) = body["messages"].as_array_mut() {
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    let before = last["content"].as_str().unwrap_or_default().to_string();
                    last["content"] = json!(before + shown);
                }
                _ => messages.push(json!({ "role": "assistant", "content": shown })),
            }
        }
        for key in ["max_tokens", "max_completion_tokens"] {
            if let Some(max) = body[key].as_u64() {
                body[key] = json!(max.saturating_sub(tokens_shown as u64).max(1));
            }
        }
    }
    body
}

/// One thing the router's stream said.
#[derive(Debug, Clone, PartialEq)]
pub enum HostedEvent {
    /// Answer text from a provider.
    Text {
        provider: String,
        text: String,
    },
    /// The router moved the answer to another provider (`edgechat.event`: `continue` keeps the
    /// text, `restart` starts it over); passed on to the caller as is.
    Switch(Value),
    Finish {
        reason: String,
    },
    Usage {
        prompt_tokens: u64,
        completion_tokens: u64,
        cost_usd: f64,
    },
    /// `[DONE]`.
    Done,
}

/// Why the hosted route failed, in terms a caller can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct HostedError {
    /// `hosted_unreachable`, `hosted_error` (the router answered with an error), or
    /// `hosted_protocol` (it sent something that is not OpenAI's stream).
    pub code: &'static str,
    pub message: String,
}

impl HostedError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// An HTTP error answer from the router (`{"error": {"message", …}}`), as an error.
pub fn error_answer(status: u16, body: &str) -> HostedError {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect());
    HostedError::new(
        "hosted_error",
        format!("the hosted route answered HTTP {status}: {message}"),
    )
}

/// Reads one `data:` payload of the router's stream.
pub fn read_event(data: &str) -> Result<Vec<HostedEvent>, HostedError> {
    if data.trim() == "[DONE]" {
        return Ok(vec![HostedEvent::Done]);
    }
    let chunk: Value = serde_json::from_str(data).map_err(|e| {
        HostedError::new(
            "hosted_protocol",
            format!("the hosted route sent an event that is not JSON: {e}"),
        )
    })?;
    if let Some(error) = chunk.get("error") {
        let message = error["message"].as_str().unwrap_or("unknown error");
        return Err(HostedError::new(
            "hosted_error",
            format!("the hosted route failed mid-answer: {message}"),
        ));
    }
    let mut events = Vec::new();
    if chunk
        .get("edgechat")
        .is_some_and(|e| e.get("event").is_some())
    {
        events.push(HostedEvent::Switch(chunk["edgechat"].clone()));
    }
    let provider = chunk["provider"].as_str().unwrap_or("hosted").to_string();
    if let Some(choice) = chunk["choices"].as_array().and_then(|c| c.first()) {
        if let Some(text) = choice["delta"]["content"].as_str() {
            if !text.is_empty() {
                events.push(HostedEvent::Text {
                    provider,
                    text: text.to_string(),
                });
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            // The router's `error` event follows, with what went wrong; a stream that ends
            // without it is an incomplete answer all the same.
            if reason == "error" {
                return Ok(events);
            }
            events.push(HostedEvent::Finish {
                reason: reason.to_string(),
            });
        }
    }
    if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
        events.push(HostedEvent::Usage {
            prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
            cost_usd: usage["cost_usd"].as_f64().unwrap_or(0.0),
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_off_continues_the_shown_text_with_the_same_sampling() {
        let request = json!({
            "messages": [{"role": "user", "content": "Count"}],
            "temperature": 0.3, "top_p": 0.9, "seed": 4, "stop": ["\n\n"], "max_tokens": 20,
        });
        let fresh = router_request(&request, "m:fastest", "", 0);
        assert_eq!(fresh["model"], "m:fastest");
        assert_eq!(fresh["messages"].as_array().unwrap().len(), 1);
        assert_eq!(fresh["stream_options"]["include_usage"], true);
        assert_eq!(fresh["max_tokens"], 20);

        let handoff = router_request(&request, "m", "1, 2,", 6);
        assert_eq!(
            handoff["messages"][1],
            json!({"role": "assistant", "content": "1, 2,"})
        );
        assert_eq!(handoff["max_tokens"], 14);
        for key in ["temperature", "top_p", "seed", "stop"] {
            assert_eq!(handoff[key], request[key], "{key}");
        }
        // A caller's own prefill grows by the shown text.
        let prefilled = json!({"messages": [
            {"role": "user", "content": "Count"}, {"role": "assistant", "content": "1,"}
        ]});
        let handoff = router_request(&prefilled, "m", " 2,", 2);
        assert_eq!(handoff["messages"][1]["content"], "1, 2,");
        assert_eq!(handoff["messages"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn router_events_become_text_switches_usage_and_errors() {
        let text = r#"{"provider":"local","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
        assert_eq!(
            read_event(text).unwrap(),
            vec![HostedEvent::Text {
                provider: "local".into(),
                text: "Hi".into()
            }]
        );
        let last = r#"{"provider":"p","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,"cost_usd":0.5}}"#;
        assert_eq!(
            read_event(last).unwrap(),
            vec![
                HostedEvent::Finish {
                    reason: "stop".into()
                },
                HostedEvent::Usage {
                    prompt_tokens: 5,
                    completion_tokens: 2,
                    cost_usd: 0.5
                }
            ]
        );
        let switch = r#"{"provider":"b","choices":[{"index":0,"delta":{},"finish_reason":null}],"edgechat":{"event":"continue","from":"a","to":"b"}}"#;
        assert!(
            matches!(&read_event(switch).unwrap()[0], HostedEvent::Switch(v) if v["to"] == "b")
        );
        assert_eq!(read_event("[DONE]").unwrap(), vec![HostedEvent::Done]);
        // A failed answer: the finish reason `error` is no finish; the error event after it says why.
        let failing =
            r#"{"provider":"p","choices":[{"index":0,"delta":{},"finish_reason":"error"}]}"#;
        assert_eq!(read_event(failing).unwrap(), vec![]);
        let error = read_event(r#"{"error":{"message":"all providers failed"}}"#).unwrap_err();
        assert_eq!(error.code, "hosted_error");
        assert_eq!(
            error.message,
            "the hosted route failed mid-answer: all providers failed"
        );
        assert_eq!(read_event("{nope").unwrap_err().code, "hosted_protocol");
        let refused = error_answer(401, r#"{"error":{"message":"invalid token"}}"#);
        assert_eq!(
            refused.message,
            "the hosted route answered HTTP 401: invalid token"
        );
    }
}
