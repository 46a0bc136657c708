//! What a network store keeps per server: its pool and the combiner of
//! concurrent calls to it (`Endpoint`), a lease of one connection for one
//! exchange, and the server's last refusal of this client.
//!
//! A connection goes back to the pool only after a complete exchange: one
//! that timed out or failed mid-reply still has a reply in it that belongs
//! to nobody, and reading it in the next call is the seed bug (a `get`
//! returning another request's value).

use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::health::Health;
use crate::pool::{self, Dial, Pool};
use crate::sync::locked;

use super::combine::{Combiner, Unanswered};
use super::spin::InFlight;

/// How long a server's refusal of this client (its TLS or its login) is
/// remembered: calls meanwhile fail with it at once instead of each
/// dialing and being refused again.
const REFUSAL_MEMORY: Duration = Duration::from_secs(1);

/// A store's error, as the per-server bookkeeping sees it.
pub(crate) trait ServerError: Display + Sized {
    /// The server (or the path to it) failed, not the request.
    fn is_server_failure(&self) -> bool;
    /// The server refused this client as configured (TLS, login), which
    /// trying again at once will not change.
    fn is_refusal(&self) -> bool;
    /// A copy for another caller.
    fn duplicate(&self) -> Self;
    /// The whole reply was read (a refused command), so the connection is
    /// still in step and may serve another call.
    fn keeps_connection(&self) -> bool;
    /// The error for a failed read or write to `server` (a timeout is its
    /// own kind).
    fn from_io(server: &str, source: std::io::Error) -> Self;
}

/// A server's name, idle and in-use connections, connections dialed, and
/// calls that rode in another caller's round trip (`stats()`).
pub type ServerPool = (String, usize, usize, u64, u64);

/// One server of a network store: its pool, and the combiner through which
/// concurrent calls to it share round trips (requests `Q`, replies `R`).
pub(crate) struct Endpoint<D: Refused, Q, R> {
    pub(crate) pool: Pool<D>,
    pub(crate) combiner: Combiner<Q, R, D::Error>,
}

impl<D: Refused, Q, R> Endpoint<D, Q, R>
where
    D::Error: ServerError + Unanswered,
{
    /// `service` names the kind of server in the pool's log lines
    /// ("Redis").
    pub(crate) fn new(dialer: D, limits: pool::Config, service: &str) -> Self {
        let name = dialer.name().to_owned();
        Endpoint {
            pool: Pool::new(dialer, limits, format!("{service} server {name}")),
            combiner: Combiner::new(name),
        }
    }

    /// How errors name the server ("127.0.0.1:6379").
    pub(crate) fn name(&self) -> &str {
        self.pool.dialer.name()
    }

    /// Check out a connection: a live idle one, or a new dial. At the
    /// pool's cap, wait (up to the connect timeout) for one to come back.
    pub(crate) fn lease(&self) -> Result<Lease<'_, D>, D::Error> {
        Lease::new(&self.pool)
    }

    /// Turns an I/O error of an exchange with this server into its error.
    pub(crate) fn io_error(&self) -> impl Fn(std::io::Error) -> D::Error + '_ {
        move |source| D::Error::from_io(self.name(), source)
    }

    /// This server's line in its store's `stats()`.
    pub(crate) fn pool_stats(&self) -> ServerPool {
        let pool = &self.pool;
        (
            self.name().to_owned(),
            pool.idle(),
            pool.in_use(),
            pool.connects(),
            self.combiner.riders(),
        )
    }
}

/// A server's last refusal of this client, and when it came.
pub(crate) struct Refusals<E>(Mutex<Option<(Instant, E)>>);

impl<E: ServerError> Refusals<E> {
    pub(crate) fn new() -> Self {
        Refusals(Mutex::new(None))
    }

    fn remember(&self, refusal: &E) {
        *locked(&self.0) = Some((Instant::now(), refusal.duplicate()));
    }

    /// Run a dial, unless the server refused this client less than
    /// REFUSAL_MEMORY ago (then that refusal, at once); a refusal it gets
    /// is remembered.
    pub(crate) fn dial<C>(&self, dial: impl FnOnce() -> Result<C, E>) -> Result<C, E> {
        if let Some(refusal) = self.recent() {
            return Err(refusal);
        }
        let opened = dial();
        if let Err(error) = &opened
            && error.is_refusal()
        {
            self.remember(error);
        }
        opened
    }

    fn recent(&self) -> Option<E> {
        let refusal = locked(&self.0);
        let (at, error) = refusal.as_ref()?;
        (at.elapsed() < REFUSAL_MEMORY).then(|| error.duplicate())
    }
}

/// A dialer that remembers its server's refusals.
pub(crate) trait Refused: Dial {
    fn refusals(&self) -> &Refusals<Self::Error>;
    /// How errors name its server.
    fn name(&self) -> &str;
}

/// A connection checked out for one exchange. Dropped without `release`,
/// the connection is closed, never reused.
pub(crate) struct Lease<'a, D: Refused> {
    conn: pool::Lease<'a, D>,
    health: &'a Health,
    refusals: &'a Refusals<D::Error>,
    _in_flight: InFlight,
}

impl<'a, D: Refused> Lease<'a, D>
where
    D::Error: ServerError,
{
    /// Check out a connection of `pool`: a live idle one, or a new dial;
    /// at its cap, wait (up to its wait) for one to come back.
    pub(crate) fn new(pool: &'a Pool<D>) -> Result<Self, D::Error> {
        Ok(Lease {
            conn: pool.lease()?,
            health: &pool.health,
            refusals: pool.dialer.refusals(),
            _in_flight: InFlight::start(),
        })
    }

    pub(crate) fn conn(&mut self) -> &mut D::Conn {
        &mut self.conn
    }

    /// Run one exchange on the connection: it goes back to the pool only
    /// if the exchange left the stream in step.
    pub(crate) fn exchange<T>(mut self, run: impl FnOnce(&mut D::Conn) -> Result<T, D::Error>) -> Result<T, D::Error> {
        let result = run(self.conn());
        match &result {
            Ok(_) => self.release(),
            Err(error) if error.keeps_connection() => self.release(),
            Err(error) => self.discard(error),
        }
        result
    }

    /// Return the connection to the pool: call only after a complete,
    /// in-step exchange.
    pub(crate) fn release(self) {
        self.health.succeeded();
        self.conn.release();
    }

    /// Close the connection after `error` left it out of step; a failure
    /// of the server (not of the request) is recorded in its health, a
    /// refusal remembered (a server with a login refuses every request of
    /// a connection that has none).
    pub(crate) fn discard(self, error: &D::Error) {
        if error.is_server_failure() {
            self.health.failed(error);
        }
        if error.is_refusal() {
            self.refusals.remember(error);
        }
    }
}
