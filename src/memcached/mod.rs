//! Pooled memcached store over the meta protocol.
//!
//! Keys are routed with pymemcache's rendezvous hashing and values carry
//! pymemcache's client flags (set by the Python layer), so entries are
//! shared with Django's `PyMemcacheCache` on the same servers.

mod address;
mod client;
mod connection;
mod error;
mod handshake;
mod item;
pub mod protocol;
mod routing;
mod server;

pub use address::Address;
pub use client::{BatchFailure, Claim, Client, Entry, StoreOutcome, Turn};
pub use error::{AuthProblem, Error, KeyProblem, Result};
// The TLS options are the network stores' shared ones (Python hands them
// over by these names).
pub use crate::net::{Der, Secret, TlsOptions};
pub use item::Item;
pub use protocol::{Marks, StoreMode};
pub use routing::Rendezvous;
pub use server::Config;
