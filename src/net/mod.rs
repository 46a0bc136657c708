//! What the network stores (memcached, and Redis next) share below their
//! protocols: addresses, sockets with a deadline per exchange, TLS towards
//! one server, and spinning briefly for a reply before blocking.
//!
//! A store adds its own wire protocol, its LOCATION parsing and whatever
//! round trip confirms a new connection (see `Connection::open`).

mod address;
mod combine;
mod connection;
mod server;
pub(crate) mod spin;
mod tls;

pub use address::Address;
pub(crate) use combine::{RoundTrip, Unanswered, unrecorded};
pub(crate) use connection::{Confirm, Connection, OpenError, Opening, opening_failed};
pub use server::ServerPool;
pub(crate) use server::{Endpoint, Lease, Refusals, Refused, ServerError};
pub use tls::{Der, Secret, TlsOptions};
pub(crate) use tls::{TlsTarget, client_config, server_name};
