//! Local first, the hosted router when local inference is unavailable or too slow — even in the
//! middle of an answer. The decision ([`policy`]) and the router's side of an answer ([`hosted`])
//! are plain Rust; [`client`] streams from the router in a browser (gloo-net).
//!
//! A hand-off sends the router the caller's own request with the text shown so far as an
//! assistant prefill, so the router's provider continues it: the caller's stream goes on with no
//! text repeated or lost, each chunk labelled with the backend and provider that made it.

#[cfg(target_arch = "wasm32")]
pub mod client;
pub mod hosted;
pub mod policy;
/// The router's own server-sent-events parser (one parser for both sides of the protocol).
#[path = "../../../worker/src/router/sse.rs"]
pub mod sse;

pub use hosted::{router_request, HostedError, HostedEvent};
pub use policy::{route, Fallback, Local, Mode, Route, SpeedWatch};
