//! One answer, local or hosted or both: the route is chosen per request ([`crate::hybrid`]); a
//! local answer that fails or falls below the speed threshold part-way goes on from the hosted
//! route as a continuation of the text already shown. Every chunk says which backend and provider
//! made it; usage and cost add up over both parts.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use super::{coded_error, engine_error, to_js};
use crate::hybrid::{self, Fallback, HostedEvent, Local, Mode, Route, SpeedWatch};
use crate::openai::{finish_reason_name, Answer, ChatRequest, PromptError, RequestError};
use crate::session::{CancelToken, Engine, FinishReason, Stats};

/// What an answer needs from its engine.
pub(super) struct Context {
    pub engine: Rc<RefCell<Option<Engine>>>,
    pub local: Rc<RefCell<Local>>,
    pub fallback: Option<Fallback>,
    /// `webgpu` or `wasm` (meaningless when there is no local model).
    pub backend: String,
    pub model_name: String,
    /// The caller's abort.
    pub cancel: CancelToken,
    /// Stops local generation (the caller's abort, or a hand-off).
    pub local_stop: CancelToken,
}

/// Sends chunks (streaming) or collects them (one `chat.completion`).
struct Output {
    answer: Answer,
    stream: bool,
    on_chunk: js_sys::Function,
    text: String,
    /// Route changes, for a non-streaming caller.
    events: Vec<Value>,
    role_sent: bool,
}

impl Output {
    fn emit(&self, chunk: Value) {
        let _ = self.on_chunk.call1(&JsValue::NULL, &to_js(&chunk));
    }

    fn text(&mut self, backend: &str, provider: &str, text: &str) {
        self.text.push_str(text);
        if self.stream {
            let delta = if self.role_sent {
                json!({ "content": text })
            } else {
                json!({ "role": "assistant", "content": text })
            };
            self.role_sent = true;
            let mut chunk = self.answer.chunk(delta, None);
            chunk["edgechat"] = json!({ "backend": backend, "provider": provider });
            self.emit(chunk);
        }
    }

    /// A chunk with no text that says the route changed.
    fn marker(&mut self, event: Value) {
        if self.stream {
            let mut chunk = self.answer.chunk(json!({}), None);
            chunk["edgechat"] = event;
            self.emit(chunk);
        } else {
            self.events.push(event);
        }
    }
}

/// What the local part produced before the answer went on elsewhere (or finished).
struct LocalPart {
    text: String,
    tokens: usize,
    stats: Option<Stats>,
}

fn request_error(e: RequestError) -> JsValue {
    coded_error(e.code.unwrap_or("invalid_request"), &e.message, e.param)
}

// The engine's borrow is its lock for the whole answer: a call that comes meanwhile gets a
// "busy" error from `try_borrow_mut` instead of waiting (there is one thread, never a panic).
#[allow(clippy::await_holding_refcell_ref)]
pub(super) async fn answer(
    context: Context,
    request_json: String,
    on_chunk: js_sys::Function,
) -> Result<JsValue, JsValue> {
    let raw: Value = serde_json::from_str(&request_json).map_err(|e| {
        request_error(RequestError::invalid(
            format!("the request is not JSON: {e}"),
            None,
        ))
    })?;
    let local_state = context.local.borrow().clone();
    let route = hybrid::route(context.fallback.as_ref(), &local_state)
        .map_err(|why| coded_error("no_route", &why, None))?;

    let mut slot = context
        .engine
        .try_borrow_mut()
        .map_err(|_| coded_error("busy", "the engine is answering another request", None))?;
    // Requests are checked against the local context; the hosted route checks its own.
    let context_length = match (&route, slot.as_ref()) {
        (Route::Local, Some(engine)) => engine.config().context_length,
        _ => u32::MAX as usize,
    };
    let request = ChatRequest::from_value(raw.clone(), context_length).map_err(request_error)?;
    let mut out = Output {
        answer: Answer {
            id: format!("chatcmpl-{:016x}", rand::random::<u64>()),
            created: (js_sys::Date::now() / 1000.0) as u64,
            model: context.model_name.clone(),
            include_usage: request.include_usage,
        },
        stream: request.stream,
        on_chunk,
        text: String::new(),
        events: Vec::new(),
        role_sent: false,
    };

    let mut local = LocalPart {
        text: String::new(),
        tokens: 0,
        stats: None,
    };
    // Why the hosted route answers (all of it, or the rest after a hand-off).
    let (reason, handed_off) = match route {
        Route::Hosted(reason) => (reason, false),
        Route::Local => {
            let engine = slot
                .as_mut()
                .ok_or_else(|| coded_error("not_loaded", "the model was unloaded", None))?;
            let prompt = request.prompt(engine).map_err(|e| match e {
                PromptError::Request(e) => request_error(e),
                PromptError::Engine(e) => engine_error(&e),
            })?;
            let may_hand_off = context
                .fallback
                .as_ref()
                .is_some_and(|f| f.mode == Mode::PreferLocal);
            let mut watch = context
                .fallback
                .as_ref()
                .filter(|_| may_hand_off)
                .map(SpeedWatch::new);
            let too_slow: RefCell<Option<String>> = RefCell::new(None);
            let (mut shown, mut pieces) = (String::new(), 0usize);
            let backend = context.backend.clone();
            let result = engine
                .generate_async(&prompt, &request.params, &context.local_stop, &mut |text| {
                    out.text(&backend, "local", text);
                    shown.push_str(text);
                    pieces += 1;
                    if let Some(reason) = watch
                        .as_mut()
                        .and_then(|w| w.token(web_time::Instant::now()))
                    {
                        *too_slow.borrow_mut() = Some(reason);
                        context.local_stop.cancel();
                    }
                })
                .await;
            if context.cancel.is_cancelled() {
                return Err(coded_error("aborted", "the request was aborted", None));
            }
            match result {
                Ok(completion) if completion.finish_reason != FinishReason::Cancelled => {
                    return finish(
                        out,
                        finish_reason_name(completion.finish_reason),
                        &context.backend,
                        Some(completion.stats),
                        None,
                    );
                }
                Ok(completion) => {
                    let reason = too_slow
                        .borrow_mut()
                        .take()
                        .unwrap_or_else(|| "local generation stopped".into());
                    local = LocalPart {
                        tokens: completion.tokens.len(),
                        text: completion.text,
                        stats: Some(completion.stats),
                    };
                    (reason, true)
                }
                Err(e) if may_hand_off => {
                    // The local engine cannot be trusted after a failure (a lost device): later
                    // requests go to the hosted route.
                    *context.local.borrow_mut() =
                        Local::Unavailable(format!("it failed during an answer: {e}"));
                    local = LocalPart {
                        text: shown,
                        tokens: pieces,
                        stats: None,
                    };
                    (format!("the local engine failed: {e}"), true)
                }
                Err(e) => return Err(engine_error(&e)),
            }
        }
    };
    drop(slot);
    let fallback = context
        .fallback
        .as_ref()
        .ok_or_else(|| coded_error("no_route", &reason, None))?;
    if handed_off {
        out.marker(json!({
            "event": "handoff", "from": context.backend, "to": "hosted", "reason": reason,
        }));
    }
    let body = hybrid::router_request(&raw, &fallback.router_model(), &local.text, local.tokens);
    let mut finish_reason = String::from("stop");
    let mut usage = (0u64, 0u64, 0f64);
    let mut providers: Vec<String> = Vec::new();
    let hosted_start = out.text.len();
    let result =
        hybrid::client::stream(fallback, &body, &context.cancel, &mut |event| match event {
            HostedEvent::Text { provider, text } => {
                if providers.last() != Some(&provider) {
                    providers.push(provider.clone());
                }
                out.text("hosted", &provider, &text);
            }
            HostedEvent::Switch(mut event) => {
                if event["event"] == "restart" {
                    // The router's text so far is void (its next provider starts over after the
                    // local part, which stands): the marker says what the answer is now.
                    out.text.truncate(hosted_start);
                    providers.clear();
                    event["text"] = json!(out.text);
                }
                out.marker(event)
            }
            HostedEvent::Finish { reason } => finish_reason = reason,
            HostedEvent::Usage {
                prompt_tokens,
                completion_tokens,
                cost_usd,
            } => usage = (prompt_tokens, completion_tokens, cost_usd),
            HostedEvent::Done => {}
        })
        .await;
    if let Err(e) = result {
        let message = if handed_off {
            format!(
                "{} (after the local engine handed off: {reason})",
                e.message
            )
        } else {
            format!(
                "{} (the request went to the hosted route: {reason})",
                e.message
            )
        };
        return Err(coded_error(e.code, &message, None));
    }
    let hosted = json!({
        "providers": providers,
        "prompt_tokens": usage.0,
        "completion_tokens": usage.1,
        "cost_usd": usage.2,
        "reason": reason,
    });
    finish(out, &finish_reason, "hosted", local.stats, Some(hosted))
}

/// The finishing chunk and usage (streaming) or the `chat.completion`, with usage and cost added
/// up over the local and hosted parts.
fn finish(
    mut out: Output,
    finish_reason: &str,
    backend: &str,
    local: Option<Stats>,
    hosted: Option<Value>,
) -> Result<JsValue, JsValue> {
    let count = |key: &str| hosted.as_ref().and_then(|h| h[key].as_u64()).unwrap_or(0) as usize;
    let (local_prompt, local_completion) = local
        .as_ref()
        .map_or((0, 0), |s| (s.prompt_tokens, s.completion_tokens));
    let prompt_tokens = local_prompt + count("prompt_tokens");
    let completion_tokens = local_completion + count("completion_tokens");
    let cost_usd = hosted
        .as_ref()
        .and_then(|h| h["cost_usd"].as_f64())
        .unwrap_or(0.0);
    let mut details = json!({ "backend": backend, "stats": local, "cost_usd": cost_usd });
    if let Some(hosted) = hosted {
        details["hosted"] = hosted;
    }
    if out.stream {
        if !out.role_sent {
            out.text(backend, "", "");
        }
        let mut last = out.answer.chunk(json!({}), Some(finish_reason));
        if out.answer.include_usage {
            out.emit(last);
            last = out.answer.usage_chunk(prompt_tokens, completion_tokens);
        }
        last["edgechat"] = details;
        out.emit(last);
        Ok(JsValue::NULL)
    } else {
        let mut done =
            out.answer
                .completion(&out.text, finish_reason, prompt_tokens, completion_tokens);
        if !out.events.is_empty() {
            details["events"] = Value::Array(std::mem::take(&mut out.events));
        }
        done["edgechat"] = details;
        Ok(to_js(&done))
    }
}
