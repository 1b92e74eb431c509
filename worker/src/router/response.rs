//! The caller's response, built from the relay's [`Downstream`] events: OpenAI chunks over SSE
//! for streams, one `chat.completion` object otherwise. Every chunk names its provider; the
//! finishing chunk carries `usage` with `cost_usd`. Rescues show as a chunk with an `edgechat`
//! field (`continue` or `restart`: a restart voids the text sent so far). A failure after text
//! was sent ends with `finish_reason: "error"` and an `error` event, never with `[DONE]`.

use serde_json::{json, Value};

use super::api::ApiError;
use super::relay::{Downstream, Usage};

fn usage_json(usage: &Usage, cost_usd: f64) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cost_usd": cost_usd,
    })
}

/// Turns events into SSE text for a streaming caller.
pub struct SseWriter {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    role_sent: bool,
}

impl SseWriter {
    pub fn new(id: String, created: u64, model: String, include_usage: bool) -> Self {
        SseWriter {
            id,
            created,
            model,
            include_usage,
            role_sent: false,
        }
    }

    fn chunk(&self, provider: &str, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "provider": provider,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        })
    }

    pub fn write(&mut self, event: &Downstream) -> String {
        let data = |v: Value| format!("data: {v}\n\n");
        match event {
            Downstream::Delta { provider, text } => {
                let delta = if self.role_sent {
                    json!({"content": text})
                } else {
                    self.role_sent = true;
                    json!({"role": "assistant", "content": text})
                };
                data(self.chunk(provider, delta, None))
            }
            Downstream::Switch {
                from,
                to,
                reason,
                continued,
            } => {
                let mut chunk = self.chunk(to, json!({}), None);
                chunk["edgechat"] = json!({
                    "event": if *continued { "continue" } else { "restart" },
                    "from": from, "to": to, "reason": reason,
                });
                data(chunk)
            }
            Downstream::Done {
                provider,
                finish_reason,
                usage,
                cost_usd,
            } => {
                let delta = if self.role_sent {
                    json!({})
                } else {
                    json!({"role": "assistant", "content": ""})
                };
                let mut chunk = self.chunk(provider, delta, Some(finish_reason));
                chunk["usage"] = usage_json(usage, *cost_usd);
                let mut out = data(chunk);
                if self.include_usage {
                    out += &data(json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "provider": provider, "choices": [],
                        "usage": usage_json(usage, *cost_usd),
                    }));
                }
                out + "data: [DONE]\n\n"
            }
            Downstream::Failed { error } => {
                data(self.chunk("", json!({}), Some("error"))) + &data(error.body())
            }
        }
    }
}

/// Collects events into one `chat.completion` for a non-streaming caller.
#[derive(Default)]
pub struct Collector {
    text: String,
    providers: Vec<String>,
    end: Option<Result<(String, String, Usage, f64), ApiError>>,
}

impl Collector {
    pub fn push(&mut self, event: Downstream) {
        match event {
            Downstream::Delta { provider, text } => {
                if self.providers.last() != Some(&provider) {
                    self.providers.push(provider);
                }
                self.text.push_str(&text);
            }
            Downstream::Switch {
                continued: false, ..
            } => {
                self.text.clear();
                self.providers.clear();
            }
            Downstream::Switch { .. } => {}
            Downstream::Done {
                provider,
                finish_reason,
                usage,
                cost_usd,
            } => self.end = Some(Ok((provider, finish_reason, usage, cost_usd))),
            Downstream::Failed { error } => self.end = Some(Err(error)),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.end.is_some()
    }

    /// The completion, or the error (also for an answer that could not be finished).
    pub fn finish(self, id: &str, created: u64, model: &str) -> Result<(String, Value), ApiError> {
        let (provider, finish_reason, usage, cost_usd) = match self.end {
            Some(Ok(end)) => end,
            Some(Err(error)) => return Err(error),
            None => return Err(ApiError::internal("the relay ended without an answer")),
        };
        let mut providers = self.providers;
        if providers.is_empty() {
            providers.push(provider.clone());
        }
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "provider": provider,
            "providers": providers,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text}, "finish_reason": finish_reason}],
            "usage": usage_json(&usage, cost_usd),
        });
        Ok((provider, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::sse::SseParser;

    fn events() -> Vec<Downstream> {
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
        };
        vec![
            Downstream::Delta {
                provider: "a".into(),
                text: "Hel".into(),
            },
            Downstream::Switch {
                from: "a".into(),
                to: "b".into(),
                reason: "cut".into(),
                continued: true,
            },
            Downstream::Delta {
                provider: "b".into(),
                text: "lo".into(),
            },
            Downstream::Done {
                provider: "b".into(),
                finish_reason: "stop".into(),
                usage,
                cost_usd: 0.5,
            },
        ]
    }

    #[test]
    fn streams_openai_chunks_with_provider_rescue_marker_usage_and_done() {
        let mut writer = SseWriter::new("id1".into(), 7, "m:cheapest".into(), true);
        let text: String = events().iter().map(|e| writer.write(e)).collect();
        let parsed = SseParser::default().push(text.as_bytes()).unwrap();
        let data: Vec<&str> = parsed.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data.len(), 6);
        assert_eq!(data[5], "[DONE]");
        let chunks: Vec<Value> = data[..5]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": "Hel"})
        );
        assert_eq!(chunks[0]["provider"], "a");
        assert_eq!(chunks[1]["edgechat"]["event"], "continue");
        assert_eq!(chunks[2]["choices"][0]["delta"], json!({"content": "lo"}));
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[3]["usage"]["cost_usd"], 0.5);
        assert_eq!(chunks[4]["choices"], json!([]));
        assert!(chunks.iter().all(|c| c["id"] == "id1"
            && c["model"] == "m:cheapest"
            && c["object"] == "chat.completion.chunk"));
    }

    #[test]
    fn a_failure_after_text_ends_with_an_error_event_and_no_done() {
        let mut writer = SseWriter::new("id".into(), 0, "m".into(), false);
        writer.write(&Downstream::Delta {
            provider: "a".into(),
            text: "x".into(),
        });
        let out = writer.write(&Downstream::Failed {
            error: ApiError::upstream_failed("gone"),
        });
        assert!(out.contains("\"finish_reason\":\"error\""));
        assert!(out.contains("\"error\":{"));
        assert!(!out.contains("[DONE]"));
    }

    #[test]
    fn collects_a_completion_and_applies_restarts() {
        let mut c = Collector::default();
        c.push(Downstream::Delta {
            provider: "a".into(),
            text: "junk".into(),
        });
        c.push(Downstream::Switch {
            from: "a".into(),
            to: "b".into(),
            reason: "stalled".into(),
            continued: false,
        });
        for e in events() {
            c.push(e);
        }
        let (provider, body) = c.finish("id", 1, "m").unwrap();
        assert_eq!(provider, "b");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["providers"], json!(["a", "b"]));
        assert_eq!(body["usage"]["total_tokens"], 5);
        let mut c = Collector::default();
        c.push(Downstream::Delta {
            provider: "a".into(),
            text: "x".into(),
        });
        c.push(Downstream::Failed {
            error: ApiError::upstream_failed("incomplete"),
        });
        assert_eq!(c.finish("id", 1, "m").unwrap_err().status, 502);
    }
}
