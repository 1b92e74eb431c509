//! edgechat's hosted route: one OpenAI-compatible endpoint in front of many providers.
//!
//! [`router`] is the whole routing logic as plain Rust (no I/O): configuration, policies, cost,
//! circuit breakers, SSE parsing, tokens, and the relay that fails over and rescues streams over
//! an abstract transport. `shell` (wasm only) binds it to workerd: fetch, D1, Durable Objects.

pub mod router;

#[cfg(target_arch = "wasm32")]
mod shell;
