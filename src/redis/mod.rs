//! The Redis (and Valkey) store: a primary and optional read replicas, or
//! a Redis Cluster, over pooled connections, in RESP2, with every
//! read-then-write done by one command or one server-side script.
//!
//! Keys are Django's and values the bytes the Python layer makes in
//! Django's `RedisCache` encoding (integers as digits, the rest pickled),
//! so entries are shared with Django's backend on the same server.

mod client;
mod cluster;
mod error;
pub mod resp;
mod scripts;
mod sentinel;
mod server;
pub mod slot;

pub use crate::net::ServerPool;
pub use crate::net::{Secret, TlsOptions};
pub use client::{BatchFailure, Client, Expiry, Ttl, Values};
pub use error::{Error, Result};
pub use server::{Config, SentinelConfig};

/// Replies are read from a store connection, within its exchange's
/// deadline.
impl resp::Frames for crate::net::Connection {
    fn read_line(&mut self) -> std::io::Result<&[u8]> {
        crate::net::Connection::read_line(self)
    }

    fn read_value(&mut self, size: usize) -> std::io::Result<Vec<u8>> {
        crate::net::Connection::read_value(self, size)
    }
}
