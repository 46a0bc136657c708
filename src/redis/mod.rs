//! The Redis (and Valkey) store: work in progress (issue 22). So far the
//! cluster's key → slot mapping.

pub mod slot;
