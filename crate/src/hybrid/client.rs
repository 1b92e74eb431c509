//! The router client in a browser: one streamed chat request with the caller's token (gloo-net's
//! fetch), its body read as it arrives and parsed as server-sent events.

use serde_json::Value;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::hosted::{error_answer, read_event, HostedError, HostedEvent};
use super::sse::SseParser;
use super::Fallback;
use crate::session::CancelToken;

/// Sends `body` to the router and hands each event to `on_event` until `[DONE]`. A cancelled
/// token aborts the request and gives the `aborted` error.
pub async fn stream(
    fallback: &Fallback,
    body: &Value,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(HostedEvent),
) -> Result<(), HostedError> {
    let controller = web_sys::AbortController::new()
        .map_err(|_| HostedError::new("hosted_unreachable", "no AbortController"))?;
    let signal = controller.signal();
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
    loop {
        if cancel.is_cancelled() {
            controller.abort();
            return Err(HostedError::new("aborted", "the request was aborted"));
        }
        let read = JsFuture::from(reader.read()).await.map_err(|e| {
            HostedError::new(
                "hosted_unreachable",
                format!(
                    "the hosted answer broke off: {}",
                    js_sys::Error::from(e).message()
                ),
            )
        })?;
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
