//! Locking file store: any number of threads and processes on one host,
//! no torn reads, no lost updates, no resurrected stale values.

mod count;
pub mod entry;
mod error;
mod lock;
mod store;

pub use crate::Limits;
pub use error::{Error, Result};
pub use store::{FileStore, INTEGER_FLAG, Options, SHARDS, Value};
