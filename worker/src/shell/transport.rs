//! The relay's I/O in workerd: `fetch` with an abort signal, timers, the clock.

use std::collections::HashMap;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use worker::{AbortController, Date, Delay};

use crate::router::config::Provider;
use crate::router::relay::{redact_secrets, Transport, UpstreamResponse};

pub struct WorkerTransport {
    /// Provider name → API key, read from the worker's secrets. Never logged or returned.
    pub keys: Rc<HashMap<String, String>>,
}

/// Aborts its upstream request when dropped: a lost hedge or a caller that left stops there.
struct AbortOnDrop(Option<AbortController>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(controller) = self.0.take() {
            controller.abort();
        }
    }
}

/// An upstream body that aborts its request when dropped.
pub struct UpstreamBody {
    stream: Pin<Box<dyn Stream<Item = worker::Result<Vec<u8>>>>>,
    abort: AbortOnDrop,
}

impl Stream for UpstreamBody {
    type Item = Result<Vec<u8>, String>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.stream.as_mut().poll_next(cx);
        if let Poll::Ready(None) = next {
            // Read to the end: nothing to abort, and the connection can be reused.
            self.abort.0 = None;
        }
        next.map(|item| item.map(|r| r.map_err(|e| e.to_string())))
    }
}

impl Transport for WorkerTransport {
    type Body = UpstreamBody;

    async fn post(
        &self,
        provider: &Provider,
        body: String,
    ) -> Result<UpstreamResponse<UpstreamBody>, String> {
        // One `fetch(url, init)`: a `Request` built first would be built again inside `fetch`
        // to take the abort signal.
        let js = |e: wasm_bindgen::JsValue| worker::Error::from(e).to_string();
        let headers = web_sys::Headers::new().map_err(js)?;
        headers
            .set("content-type", "application/json")
            .map_err(js)?;
        headers.set("accept", "text/event-stream").map_err(js)?;
        if let Some(key) = self.keys.get(&provider.name) {
            headers
                .set("authorization", &format!("Bearer {key}"))
                .map_err(js)?;
        }
        let abort = AbortOnDrop(Some(AbortController::default()));
        let signal = abort.0.as_ref().expect("set above").signal();
        let init = web_sys::RequestInit::new();
        init.set_method("POST");
        init.set_headers(&headers);
        init.set_body(&body.into());
        init.set_signal(Some(&signal));
        let url = format!(
            "{}/chat/completions",
            provider.base_url.trim_end_matches('/')
        );
        let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let response = JsFuture::from(global.fetch_with_str_and_init(&url, &init))
            .await
            .map_err(js)?;
        let mut response =
            worker::Response::from(response.dyn_into::<web_sys::Response>().map_err(js)?);
        let status = response.status_code();
        let retry_after = response.headers().get("retry-after").ok().flatten();
        let stream: Pin<Box<dyn Stream<Item = worker::Result<Vec<u8>>>>> = match response.stream() {
            Ok(s) => Box::pin(s),
            Err(_) => Box::pin(futures::stream::empty()),
        };
        Ok(UpstreamResponse {
            status,
            retry_after,
            body: UpstreamBody { stream, abort },
        })
    }

    async fn sleep(&self, ms: u64) {
        // setTimeout takes at most 2^31-1 ms.
        Delay::from(Duration::from_millis(ms.min(i32::MAX as u64))).await
    }

    fn now_ms(&self) -> u64 {
        Date::now().as_millis()
    }

    fn redact(&self, text: &str) -> String {
        redact_secrets(text, self.keys.values().map(String::as_str))
    }
}
