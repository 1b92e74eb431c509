//! The routing core: plain Rust, no I/O, unit-tested natively. The workerd shell supplies the
//! transport, the clock and the storage.

pub mod api;
pub mod auth;
pub mod breaker;
pub mod config;
pub mod policy;
pub mod relay;
pub mod response;
pub mod sse;
pub mod stats;
