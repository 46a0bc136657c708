//! racefree: race-free cache stores for Django.
//!
//! Every store is plain Rust over bytes and is tested with `cargo test`;
//! the `python` feature adds the thin PyO3 layer that Django's backends
//! (in `python/racefree/backends/`) call.

pub mod filestore;
pub mod fork;
pub mod memcached;

#[cfg(feature = "python")]
mod python;
