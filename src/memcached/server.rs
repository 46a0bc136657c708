//! One memcached server as a client sees it: its connection pool and its
//! get combiner.
//!
//! Connections are checked out for exactly one exchange and come back only
//! if the exchange completed: a connection that timed out or failed
//! mid-reply still has someone else's reply in it, and reusing it is how
//! the seed bug happens (a `get` returning another request's value).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::seconds;
use crate::net::spin::SpinWait;
use crate::net::{Endpoint, Refusals, Refused, Secret, TlsOptions};
use crate::pool::{self, Dial};

use super::address::Address;
use super::connection::Connection;
use super::error::{Error, Result};
use super::handshake::Handshake;
use super::item::Item;

/// Connection settings shared by every server of a client: the backend's
/// OPTIONS of the same names (defaults and checks are Python's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Limit on dialing a server, and on waiting for a free connection
    /// when `max_connections` is reached.
    #[serde(deserialize_with = "seconds")]
    pub connect_timeout: Duration,
    /// Limit on each read and write of an exchange.
    #[serde(deserialize_with = "seconds")]
    pub io_timeout: Duration,
    /// Idle connections kept per server.
    pub pool_size: usize,
    /// Hard cap on open connections per server (`None`: no cap; given,
    /// not left out: serde would read a missing `Option` as `None`).
    #[serde(deserialize_with = "Option::deserialize")]
    pub max_connections: Option<usize>,
    /// Idle connections older than this are closed instead of reused.
    #[serde(deserialize_with = "seconds")]
    pub idle_timeout: Duration,
    /// Longest busy-wait for a reply before sleeping (zero: never spin).
    /// Only servers whose replies usually come back within it are spun
    /// for; see `net::spin`.
    #[serde(deserialize_with = "seconds")]
    pub spin_wait: Duration,
    /// Combine concurrent gets to a server into shared round trips (see
    /// `net::combine`).
    pub combine_gets: bool,
    /// TLS to every server (`None`: plain text).
    #[serde(deserialize_with = "Option::deserialize")]
    pub tls: Option<TlsOptions>,
    /// Login for a server started with `-Y` (with `password`).
    #[serde(deserialize_with = "Option::deserialize")]
    pub username: Option<String>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub password: Option<Secret>,
}

/// A memcached server: its pool, and the combiner of concurrent gets to it.
pub(crate) type Server = Endpoint<Dialer, Vec<u8>, Option<Item>>;

/// A new server's pool and combiner.
pub(crate) fn new(address: Address, handshake: Handshake, config: &Config) -> Server {
    let dialer = Dialer {
        name: address.to_string(),
        address,
        handshake,
        config: config.clone(),
        spin: Arc::new(SpinWait::new(config.spin_wait)),
        refusals: Refusals::new(),
    };
    let limits = pool::Config {
        max_idle: config.pool_size,
        max_open: config.max_connections,
        wait: config.connect_timeout,
        idle_timeout: config.idle_timeout,
    };
    Endpoint::new(dialer, limits, "memcached")
}

impl Server {
    pub(crate) fn config(&self) -> &Config {
        &self.pool.dialer.config
    }
}

/// A connection checked out for one exchange (see `net::Lease`).
pub(crate) type Lease<'a> = crate::net::Lease<'a, Dialer>;

/// How connections to one server are opened.
pub(crate) struct Dialer {
    address: Address,
    /// How errors name the server ("127.0.0.1:11211").
    name: String,
    handshake: Handshake,
    config: Config,
    spin: Arc<SpinWait>,
    refusals: Refusals<Error>,
}

impl Refused for Dialer {
    fn refusals(&self) -> &Refusals<Error> {
        &self.refusals
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Dial for Dialer {
    type Conn = Connection;
    type Error = Error;

    fn dial(&self) -> Result<Connection> {
        let (connect, io) = (self.config.connect_timeout, self.config.io_timeout);
        (self.refusals).dial(|| Connection::open(&self.address, &self.name, &self.handshake, connect, io, &self.spin))
    }

    /// Not stale-closed by a restarted server, and holding no stray bytes.
    fn is_reusable(&self, conn: &mut Connection) -> bool {
        conn.is_reusable()
    }

    fn all_busy(&self, cap: usize, _waited: Duration) -> Error {
        Error::Timeout {
            server: format!("{} (all {cap} connections busy)", self.name),
        }
    }
}
