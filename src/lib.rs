//! racefree: race-free cache stores for Django.
//!
//! Every store is plain Rust over bytes and is tested with `cargo test`;
//! the `python` feature adds the thin PyO3 layer that Django's backends
//! (in `python/racefree/backends/`) call.

pub mod codec;
pub mod config;
pub mod filestore;
pub mod fork;
pub mod forwarding;
pub mod health;
pub mod memcached;
mod net;
pub mod pgstore;
mod pool;
pub mod redis;
pub mod stats;
mod sync;
pub mod tls;

/// Django's MAX_ENTRIES and CULL_FREQUENCY, passed with every write so a
/// backend's settings may change at run time (Django's tests do).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: i64,
    /// Cull `count / cull_frequency` entries; 0 empties the cache.
    pub cull_frequency: i64,
}

impl Limits {
    pub fn new(max_entries: i64, cull_frequency: i64) -> Self {
        Limits {
            max_entries,
            cull_frequency,
        }
    }
}

#[cfg(feature = "python")]
mod python;
