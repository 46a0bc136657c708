//! The Redis (and Valkey) store: work in progress (issue 22). So far the
//! wire protocol (RESP2) and the cluster's key → slot mapping.

pub mod resp;
pub mod slot;
