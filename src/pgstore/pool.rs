//! A pool of PostgreSQL connections, per fork generation.
//!
//! A connection whose state is in doubt (a failed call inside a
//! transaction, a lost connection) is poisoned and discarded when it comes
//! back instead of handed to the next caller. Dials happen in the calling
//! thread, so a refused connection fails at once.
//!
//! Why not r2d2: its pools start background threads that park on
//! parking_lot locks, which can hang a forked child (see `crate::sync`;
//! seen here in 2 of 9 runs of
//! `test_a_forked_child_does_not_reuse_the_parents_connections`). This pool
//! has no threads and uses `std` locks, and a forked child builds a new
//! pool instead of touching the inherited one.

use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::health::Health;
use crate::sync::locked;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use super::error::{Error, Result};

pub(crate) struct PgConnection {
    pub(crate) client: Client,
    poisoned: bool,
    /// Why the connection broke, if it did.
    lost: Option<String>,
}

impl PgConnection {
    pub(crate) fn poison(&mut self) {
        self.poisoned = true;
    }

    /// The connection broke with `error`: discard it, and count the
    /// failure against the server's health.
    pub(crate) fn lost(&mut self, error: &Error) {
        self.poisoned = true;
        self.lost = Some(error.to_string());
    }

    fn is_broken(&self) -> bool {
        self.poisoned || self.client.is_closed()
    }
}

/// Idle connections older than this are closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

struct State {
    idle: Vec<(PgConnection, Instant)>,
    /// Connections open now: idle, checked out, or being dialed.
    open: usize,
}

pub(crate) struct Pool {
    config: postgres::Config,
    size: usize,
    /// Longest wait for a free connection when all `size` are in use.
    wait_timeout: Duration,
    /// The fork generation this pool's connections belong to.
    pub(crate) generation: u64,
    state: Mutex<State>,
    freed: Condvar,
    /// Connections dialed so far (reconnects show here).
    connects: AtomicU64,
    /// Outages and recoveries, logged once each.
    health: Health,
}

/// A checked-out connection; back to the pool when dropped (closed
/// instead if it is broken or poisoned).
pub(crate) struct Pooled {
    pool: Arc<Pool>,
    conn: ManuallyDrop<PgConnection>,
}

impl Pool {
    pub(crate) fn new(config: postgres::Config, size: usize, wait_timeout: Duration) -> Pool {
        Pool {
            size: size.max(1),
            wait_timeout,
            generation: crate::fork::generation(),
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            connects: AtomicU64::new(0),
            health: Health::new(server_name(&config)),
            config,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.state().open
    }

    /// Idle connections now in the pool.
    pub(crate) fn idle(&self) -> usize {
        self.state().idle.len()
    }

    /// Connections dialed by this pool so far.
    pub(crate) fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    pub(crate) fn get(self: &Arc<Self>) -> Result<Pooled> {
        let deadline = Instant::now() + self.wait_timeout;
        let mut stale = Vec::new();
        let mut state = self.state();
        loop {
            while let Some((conn, since)) = state.idle.pop() {
                if since.elapsed() > IDLE_TIMEOUT || conn.is_broken() {
                    state.open -= 1;
                    stale.push(conn);
                    continue;
                }
                drop(state);
                drop(stale); // closed outside the lock
                return Ok(Pooled {
                    pool: Arc::clone(self),
                    conn: ManuallyDrop::new(conn),
                });
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                drop(stale);
                let dialed = self.config.connect(NoTls);
                if dialed.is_ok() {
                    self.connects.fetch_add(1, Ordering::Relaxed);
                }
                return match dialed {
                    Ok(client) => Ok(Pooled {
                        pool: Arc::clone(self),
                        conn: ManuallyDrop::new(PgConnection {
                            client,
                            poisoned: false,
                            lost: None,
                        }),
                    }),
                    Err(error) => {
                        self.give_back_slot();
                        let error = Error::Connect(error.to_string());
                        self.health.failed(&error);
                        Err(error)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Connect(format!(
                    "all {} pooled connections stayed in use for {:.1} s (POOL_SIZE)",
                    self.size,
                    self.wait_timeout.as_secs_f64()
                )));
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn give_back_slot(&self) {
        self.state().open -= 1;
        self.freed.notify_one();
    }

    /// Close the idle connections; checked-out ones are kept.
    pub(crate) fn close_idle(&self) {
        let idle = {
            let mut state = self.state();
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        drop(idle);
        self.freed.notify_all();
    }
}

/// How log lines name the server: "PostgreSQL server host:port/database".
fn server_name(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(name)) => name.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("PostgreSQL server {host}:{port}/{database}")
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.generation != crate::fork::generation() {
            // Inherited through fork: the sockets are the parent's, and
            // closing them here would end the parent's sessions.
            let idle = std::mem::take(&mut self.state.get_mut().unwrap_or_else(PoisonError::into_inner).idle);
            std::mem::forget(idle);
        }
    }
}

impl Deref for Pooled {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // SAFETY: `conn` is taken once, here, and never used again.
        let conn = unsafe { ManuallyDrop::take(&mut self.conn) };
        if let Some(why) = &conn.lost {
            self.pool.health.failed(why);
        } else if conn.client.is_closed() {
            self.pool.health.failed(&"PostgreSQL connection closed");
        } else {
            self.pool.health.succeeded();
        }
        if conn.is_broken() {
            drop(conn);
            self.pool.give_back_slot();
            return;
        }
        self.pool.state().idle.push((conn, Instant::now()));
        self.pool.freed.notify_one();
    }
}
