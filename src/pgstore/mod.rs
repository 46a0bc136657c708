//! PostgreSQL store on Django's cache table: upserts, advisory-locked
//! read-modify-write, one round trip per batch, a pool that drops broken
//! connections.

mod connection;
mod error;
mod session;
mod store;
mod tls;

pub use connection::{Options, connection_settings};
pub use error::{Error, Result};
pub use store::{MAX_KEY_CHARS, PgStore, Settings, expiry, moment, quote_table};
pub use tls::{SslMode, SslParams, Tls, split_dsn};
