//! PostgreSQL store on Django's cache table: upserts, advisory-locked
//! read-modify-write, one round trip per batch, a pool that drops broken
//! connections.

mod connection;
mod error;
mod session;
mod store;

pub use connection::Options;
pub use error::{Error, Result};
pub use store::{MAX_KEY_CHARS, PgStore, Settings, expiry, moment, quote_table};
