//! JavaScript bindings of the engine for the browser (wasm-bindgen), packaged by
//! `scripts/build-wasm` for `--target web`:
//! - [`WasmEngine`]: what the npm package drives (load from a byte source, OpenAI-shaped chat);
//! - [`WasmModel`]: a bare model for tests and benchmarks (greedy steps, timing);
//! - [`Sha256`]: the integrity check of a downloaded model.
//!
//! Everything that waits for the GPU is async here (a browser never blocks): methods return
//! promises. One call at a time per engine; a second concurrent call is an error, not a queue.

mod answer;
mod engine;
mod gpu;
mod hash;
mod model;
mod source;

pub use engine::WasmEngine;
pub use hash::Sha256;
pub use model::WasmModel;
pub use source::JsSource;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

/// The message channel `yield_now` posts through, kept for the life of the module: a channel that
/// nothing references may be garbage-collected with its message undelivered, and the engine would
/// then wait forever.
struct Yielder {
    sender: web_sys::MessagePort,
    _receiver: web_sys::MessagePort,
    _on_message: Closure<dyn FnMut()>,
    /// Resolvers of the yields in flight, in posting order.
    waiting: std::rc::Rc<std::cell::RefCell<std::collections::VecDeque<js_sys::Function>>>,
}

thread_local! {
    static YIELDER: Option<Yielder> = Yielder::new();
}

impl Yielder {
    fn new() -> Option<Self> {
        let channel = web_sys::MessageChannel::new().ok()?;
        let waiting: std::rc::Rc<std::cell::RefCell<std::collections::VecDeque<js_sys::Function>>> =
            Default::default();
        let queue = waiting.clone();
        let on_message = Closure::<dyn FnMut()>::new(move || {
            if let Some(resolve) = queue.borrow_mut().pop_front() {
                let _ = resolve.call0(&JsValue::NULL);
            }
        });
        let receiver = channel.port1();
        receiver.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        Some(Self {
            sender: channel.port2(),
            _receiver: receiver,
            _on_message: on_message,
            waiting,
        })
    }
}

/// Lets the event loop run (a message from the page, such as an abort) and resumes as soon as it
/// has: a message-channel round trip, which unlike `setTimeout(0)` is never clamped to 4 ms.
pub async fn yield_now() {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        YIELDER.with(|yielder| match yielder {
            Some(y) => {
                y.waiting.borrow_mut().push_back(resolve);
                if y.sender.post_message(&JsValue::NULL).is_err() {
                    if let Some(resolve) = y.waiting.borrow_mut().pop_back() {
                        let _ = resolve.call0(&JsValue::NULL);
                    }
                }
            }
            // No MessageChannel (an unusual host): resolve at once; the microtask still yields.
            None => {
                let _ = resolve.call0(&JsValue::NULL);
            }
        });
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

pub(crate) fn to_js(value: &serde_json::Value) -> JsValue {
    js_sys::JSON::parse(&value.to_string()).unwrap_or(JsValue::NULL)
}

/// An `Error` for JavaScript with a machine-readable `code` (and `param` for a request field),
/// named `EdgechatError`.
pub(crate) fn coded_error(code: &str, message: &str, param: Option<&str>) -> JsValue {
    let error = js_sys::Error::new(message);
    error.set_name("EdgechatError");
    let _ = js_sys::Reflect::set(&error, &"code".into(), &code.into());
    if let Some(param) = param {
        let _ = js_sys::Reflect::set(&error, &"param".into(), &param.into());
    }
    error.into()
}

/// The code a caller can act on for each engine error.
pub(crate) fn engine_error(e: &crate::Error) -> JsValue {
    use crate::Error;
    let code = match e {
        Error::Gguf(crate::gguf::GgufError::Io(_)) | Error::Io(_) => "read_error",
        Error::Gguf(_) => "bad_model_file",
        Error::Model(_) | Error::TensorShape { .. } | Error::Tokenizer(_) | Error::Template(_) => {
            "unsupported_model"
        }
        Error::TokenOutOfRange { .. } => "invalid_request",
        Error::ContextLength { .. } => "context_length_exceeded",
        Error::Cancelled => "aborted",
        Error::Backend(_) => "backend_error",
        Error::GpuLimit { .. } => "gpu_limit",
        Error::DeviceLost(_) => "device_lost",
    };
    coded_error(code, &e.to_string(), None)
}
