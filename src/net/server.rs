//! What a network store keeps per server beside its pool: a lease of one
//! connection for one exchange, and the server's last refusal of this
//! client.
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
