//! The router client in a browser: one streamed chat request with the caller's token (gloo-net's
//! fetch), its body read as it arrives and parsed as server-sent events.

use serde_json::Value;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use super::hosted::{error_answer, read_event, HostedError, HostedEvent};
use super::sse::SseParser;
use super::Fallback;
use crate::session::CancelToken;

/// How often a read that waits for the router looks for an abort: a caller that stops the answer
/// is not kept waiting for the router's next bytes.
const CANCEL_POLL_MS: i32 = 100;

/// A promise that resolves to a string after `ms` (setTimeout; never, in a host without it).
fn tick(ms: i32) -> js_sys::Promise {
    js_sys::Promise::new(&mut |resolve, _reject| {
        let set_timeout = js_sys::Reflect::get(&js_sys::global(), &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        if let Some(set_timeout) = set_timeout {
            let _ = set_timeout.call3(&JsValue::NULL, &resolve, &ms.into(), &"tick".into());
        }
    })
}

/// Aborts the router request when the answer's reading ends, however it ends (an error, an abort;
/// after `[DONE]` there is nothing left to abort).
struct AbortOnDrop(web_sys::AbortController);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `body` to the router and hands each event to `on_event` until `[DONE]`. A cancelled
/// token aborts the request and gives the `aborted` error.
pub async fn stream(
    fallback: &Fallback,
    body: &Value,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(HostedEvent),
) -> Result<(), HostedError> {
    let controller = AbortOnDrop(
        web_sys::AbortController::new()
            .map_err(|_| HostedError::new("hosted_unreachable", "no AbortController"))?,
    );
    let signal = controller.0.signal();
    let unreachable = |e: gloo_net::Error| {
        HostedError::new(
            "hosted_unreachable",
            format!(
                "the hosted route at {} cannot be reached: {e}",
                fallback.url
            ),
        )
    };
    let response = gloo_net::http::Request::post(&fallback.endpoint())
        .header("Authorization", &format!("Bearer {}", fallback.token))
        .header("Content-Type", "application/json")
        .header("Accept", "text/event-stream")
        .abort_signal(Some(&signal))
        .body(body.to_string())
        .map_err(unreachable)?
        .send()
        .await
        .map_err(unreachable)?;
    if !response.ok() {
        let text = response.text().await.unwrap_or_default();
        return Err(error_answer(response.status(), &text));
    }
    let reader = response
        .body()
        .ok_or_else(|| HostedError::new("hosted_protocol", "the hosted answer has no body"))?
        .get_reader()
        .dyn_into::<web_sys::ReadableStreamDefaultReader>()
        .map_err(|_| HostedError::new("hosted_protocol", "the hosted answer cannot be read"))?;
    let mut parser = SseParser::default();
    let aborted = || HostedError::new("aborted", "the request was aborted");
    loop {
        if cancel.is_cancelled() {
            return Err(aborted());
        }
        // The read races a timer, so an abort is seen while the router is quiet.
        let pending_read = reader.read();
        let read = loop {
            let race =
                js_sys::Promise::race(&js_sys::Array::of2(&pending_read, &tick(CANCEL_POLL_MS)));
            let settled = JsFuture::from(race).await.map_err(|e| {
                HostedError::new(
                    "hosted_unreachable",
                    format!(
                        "the hosted answer broke off: {}",
                        js_sys::Error::from(e).message()
                    ),
                )
            })?;
            if !settled.is_string() {
                break settled; // the read's {done, value}
            }
            if cancel.is_cancelled() {
                return Err(aborted());
            }
        };
        let done = js_sys::Reflect::get(&read, &"done".into())
            .ok()
            .and_then(|d| d.as_bool())
            .unwrap_or(true);
        if done {
            return Err(HostedError::new(
                "hosted_error",
                "the hosted answer ended before it was complete",
            ));
        }
        let bytes = js_sys::Reflect::get(&read, &"value".into())
            .ok()
            .and_then(|v| v.dyn_into::<js_sys::Uint8Array>().ok())
            .map(|a| a.to_vec())
            .unwrap_or_default();
        let events = parser
            .push(&bytes)
            .map_err(|e| HostedError::new("hosted_protocol", e.to_string()))?;
        for event in events {
            for event in read_event(&event.data)? {
                if event == HostedEvent::Done {
                    let _ = reader.cancel();
                    return Ok(());
                }
                on_event(event);
            }
        }
    }
}
