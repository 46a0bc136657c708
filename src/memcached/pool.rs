//! Per-server connection pool.
//!
//! Connections are checked out for exactly one exchange and come back only
//! if the exchange completed: a connection that timed out or failed
//! mid-reply still has someone else's reply in it, and reusing it is how
//! the seed bug happens (a `get` returning another request's value). Dials
//! happen in the calling thread, so a refused connection fails at once
//! instead of waiting out a pool timeout.

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::health::Health;
use crate::sync::locked;

use super::address::Address;
use super::combine::Combiner;
use super::connection::Connection;
use super::error::{Error, Result};
use super::spin::{InFlight, SpinWait};

/// Connection settings shared by every server of a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Limit on dialing a server, and on waiting for a free connection
    /// when `max_connections` is reached.
    pub connect_timeout: Duration,
    /// Limit on each read and write of an exchange.
    pub io_timeout: Duration,
    /// Idle connections kept per server.
    pub pool_size: usize,
    /// Hard cap on open connections per server (`None`: no cap).
    pub max_connections: Option<usize>,
    /// Idle connections older than this are closed instead of reused.
    pub idle_timeout: Duration,
    /// Longest busy-wait for a reply before sleeping (zero: never spin).
    /// Only servers whose replies usually come back within it are spun
    /// for; see `spin`.
    pub spin_wait: Duration,
    /// Combine concurrent gets to a server into shared round trips (see
    /// `combine`).
    pub combine_gets: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(1),
            pool_size: 32,
            max_connections: None,
            idle_timeout: Duration::from_secs(60),
            spin_wait: Duration::from_micros(50),
            combine_gets: true,
        }
    }
}

pub(crate) struct Pool {
    pub(crate) address: Address,
    pub(crate) name: String,
    config: Config,
    idle: Mutex<Vec<Connection>>,
    /// Open connections, counted against `max_connections`. A pool serves
    /// one fork generation (the client swaps in new pools in a child), so
    /// every count here is this process's.
    slots: Mutex<usize>,
    freed: Condvar,
    spin: Arc<SpinWait>,
    in_use: AtomicUsize,
    /// Connections dialed so far (reconnects show here).
    connects: AtomicU64,
    /// Outages and recoveries, logged once each.
    pub(crate) health: Health,
    /// Concurrent gets to this server, combined into shared round trips.
    pub(crate) combiner: Combiner,
}

/// A connection checked out of a pool. Dropped without `release`, the
/// connection is closed, never reused (and its slot given back).
pub(crate) struct Lease<'a> {
    conn: Connection,
    slot: Slot<'a>,
    _in_flight: InFlight,
    _in_use: InUse<'a>,
}

/// Counts a pool's checked-out connections while alive (for stats).
struct InUse<'a>(&'a AtomicUsize);

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pool slot a lease occupies; given back when dropped, unless
/// `release` already returned the connection to the idle list.
struct Slot<'a> {
    pool: &'a Pool,
    returned: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.returned {
            self.pool.give_back_slot(true);
        }
    }
}

impl<'a> Lease<'a> {
    fn new(pool: &'a Pool, conn: Connection) -> Self {
        Lease {
            conn,
            slot: Slot { pool, returned: false },
            _in_flight: InFlight::start(),
            _in_use: {
                pool.in_use.fetch_add(1, Ordering::Relaxed);
                InUse(&pool.in_use)
            },
        }
    }

    pub(crate) fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Return the connection to the pool: call only after a complete,
    /// in-step exchange.
    pub(crate) fn release(self) {
        let Lease { mut conn, mut slot, .. } = self;
        let pool = slot.pool;
        pool.health.succeeded();
        conn.idle_since = Instant::now();
        let mut idle = locked(&pool.idle);
        if idle.len() < pool.config.pool_size {
            idle.push(conn);
            drop(idle);
            slot.returned = true;
            pool.give_back_slot(false);
        }
        // Otherwise `conn` closes here and `slot` gives its slot back.
    }

    /// Close the connection after `error` left it out of step; a failure
    /// of the server (not of the request) is recorded in its health.
    pub(crate) fn discard(self, error: &Error) {
        if error.is_server_failure() {
            self.slot.pool.health.failed(error);
        }
    }
}

impl Pool {
    pub(crate) fn new(address: Address, config: Config) -> Pool {
        let name = address.to_string();
        Pool {
            health: Health::new(format!("memcached server {name}")),
            combiner: Combiner::new(name.clone()),
            name,
            address,
            spin: Arc::new(SpinWait::new(config.spin_wait)),
            config,
            idle: Mutex::new(Vec::new()),
            slots: Mutex::new(0),
            freed: Condvar::new(),
            in_use: AtomicUsize::new(0),
            connects: AtomicU64::new(0),
        }
    }

    /// Check out a connection: a live idle one, or a new dial. At
    /// `max_connections`, wait (up to the connect timeout) for one to come
    /// back.
    pub(crate) fn lease(&self) -> Result<Lease<'_>> {
        let mut deadline = None;
        loop {
            if let Some(conn) = self.pop_live_idle() {
                return Ok(Lease::new(self, conn));
            }
            if self.try_take_slot() {
                return self.dial();
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.config.connect_timeout);
            let open = locked(&self.slots);
            // Re-check under the lock that `release` takes to notify, so a
            // connection returned in between is not missed.
            let cap = self.config.max_connections.unwrap_or(usize::MAX);
            if *open < cap || !locked(&self.idle).is_empty() {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    server: format!("{} (all {cap} connections busy)", self.name),
                });
            }
            drop(
                self.freed
                    .wait_timeout(open, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }

    fn dial(&self) -> Result<Lease<'_>> {
        let (connect, io) = (self.config.connect_timeout, self.config.io_timeout);
        match Connection::open(&self.address, connect, io, Arc::clone(&self.spin)) {
            Ok(conn) => {
                self.connects.fetch_add(1, Ordering::Relaxed);
                Ok(Lease::new(self, conn))
            }
            Err(source) => {
                self.give_back_slot(true);
                let error = Error::Connect {
                    server: self.name.clone(),
                    source,
                };
                self.health.failed(&error);
                Err(error)
            }
        }
    }

    /// Pop idle connections until one is fit for a new request.
    fn pop_live_idle(&self) -> Option<Connection> {
        loop {
            let conn = locked(&self.idle).pop()?;
            if conn.idle_since.elapsed() <= self.config.idle_timeout && conn.is_reusable() {
                return Some(conn);
            }
            // Stale, half-closed by a restarted server, or holding stray
            // bytes: close it and free its slot.
            self.give_back_slot(true);
        }
    }

    /// Count a new connection against `max_connections`; false at the cap.
    fn try_take_slot(&self) -> bool {
        let Some(cap) = self.config.max_connections else {
            return true;
        };
        let mut open = locked(&self.slots);
        if *open >= cap {
            return false;
        }
        *open += 1;
        true
    }

    /// Free the slot of a closed connection (`closed`), or just wake a
    /// waiter after a connection went back idle.
    fn give_back_slot(&self, closed: bool) {
        if self.config.max_connections.is_none() {
            return;
        }
        let mut open = locked(&self.slots);
        if closed {
            *open = open.saturating_sub(1);
        }
        self.freed.notify_one();
    }

    /// Close every idle connection (used by `close_all`).
    pub(crate) fn close_idle(&self) {
        let drained: Vec<Connection> = std::mem::take(&mut *locked(&self.idle));
        for _conn in drained {
            self.give_back_slot(true);
        }
    }

    /// Connections checked out now.
    pub(crate) fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// The connect and I/O timeouts.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Connections dialed so far.
    pub(crate) fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Idle connections now in the pool.
    pub(crate) fn idle_count(&self) -> usize {
        locked(&self.idle).len()
    }
}
