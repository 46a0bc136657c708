//! The connection pool every store uses.
//!
//! Dials happen in the calling thread, so a refused connection fails at
//! once instead of waiting out a pool timeout. Open connections may be
//! capped, with a bounded wait for a free one, first come first served: a
//! connection coming back (or a slot freed) is handed to the caller that
//! has waited longest, never taken by one that arrived later, so no caller
//! waits for many others' turns. An idle connection too old
//! or no longer fit (see `Dial::is_reusable`) is closed on checkout, and
//! idle connections past `idle_timeout` are closed whenever one comes
//! back: the idle list is a stack, so without that, connections under the
//! top would never be looked at again while the top ones stay busy.
//!
//! Why not r2d2: its pools start background threads that park on
//! parking_lot locks, which can hang a forked child (see `crate::sync`).
//! This pool has no threads and uses `std` locks, and it serves one
//! process: stores keep theirs in a `crate::fork::PerProcess`, so a forked
//! child builds its own and never closes or uses its parent's sockets.

use std::collections::{HashMap, VecDeque};
use std::fmt::Display;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::health::Health;
use crate::sync::{locked, wait_until};

/// How a pool opens and vets its connections to one server.
pub(crate) trait Dial {
    type Conn;
    type Error: Display;

    /// Open a connection.
    fn dial(&self) -> Result<Self::Conn, Self::Error>;

    /// Whether an idle connection may serve another call (it may first
    /// take in what arrived while it was idle).
    fn is_reusable(&self, conn: &mut Self::Conn) -> bool;

    /// The error when all `cap` connections stayed in use for `waited`.
    fn all_busy(&self, cap: usize, waited: Duration) -> Self::Error;

    /// Whether a connection whose lease ends without `release` goes back
    /// to the pool (recording the call's outcome in `health`). By default
    /// it is closed: its exchange may not have finished.
    fn keeps_unreleased(&self, _conn: &Self::Conn, _health: &Health) -> bool {
        false
    }
}

pub(crate) struct Config {
    /// Idle connections kept; one coming back to a full pool is closed.
    pub(crate) max_idle: usize,
    /// Open connections at most (`None`: no cap).
    pub(crate) max_open: Option<usize>,
    /// Longest wait for a free connection at `max_open`.
    pub(crate) wait: Duration,
    /// Idle connections older than this are closed instead of reused.
    pub(crate) idle_timeout: Duration,
}

struct State<C> {
    idle: Vec<(C, Instant)>,
    /// Connections open now: idle, checked out, being dialed, or handed
    /// to a waiter.
    open: usize,
    /// Callers waiting at the cap, oldest first: their tickets and what
    /// wakes each.
    waiting: VecDeque<(u64, Arc<Condvar>)>,
    /// What was handed to a waiter, by ticket, until it wakes to take it.
    handed: HashMap<u64, Handed<C>>,
    next_ticket: u64,
}

impl<C> State<C> {
    /// Give `handed` to `waiter` (just taken off the line) and wake it.
    fn hand(&mut self, (ticket, wake): (u64, Arc<Condvar>), handed: Handed<C>) {
        self.handed.insert(ticket, handed);
        wake.notify_one();
    }
}

/// What a waiter at the cap is handed.
enum Handed<C> {
    /// A connection that came back fit for reuse.
    Conn(C),
    /// The slot of a connection that was closed: the waiter dials into it.
    Slot,
}

pub(crate) struct Pool<D: Dial> {
    pub(crate) dialer: D,
    config: Config,
    state: Mutex<State<D::Conn>>,
    /// Connections dialed so far (reconnects show here).
    connects: AtomicU64,
    /// Outages and recoveries, logged once each.
    pub(crate) health: Health,
}

/// A checked-out connection. When the lease ends, the connection goes
/// back to the pool if it was released (or the dialer keeps it), and is
/// closed otherwise.
pub(crate) struct Lease<'a, D: Dial> {
    pool: &'a Pool<D>,
    /// Taken only by `drop`.
    conn: Option<D::Conn>,
    released: bool,
}

impl<D: Dial> Pool<D> {
    /// A pool; `server` names the server in health events.
    pub(crate) fn new(dialer: D, config: Config, server: String) -> Pool<D> {
        Pool {
            dialer,
            config,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
                waiting: VecDeque::new(),
                handed: HashMap::new(),
                next_ticket: 0,
            }),
            connects: AtomicU64::new(0),
            health: Health::new(server),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<D::Conn>> {
        locked(&self.state)
    }

    /// Check out a connection: a fit idle one, or a new dial. At
    /// `max_open`, wait (up to `wait`) in line for one to come back.
    pub(crate) fn lease(&self) -> Result<Lease<'_, D>, D::Error> {
        let cap = self.config.max_open.unwrap_or(usize::MAX);
        let mut state = self.state();
        // Callers already waiting go first: while any do, every
        // connection coming back is handed to them, so there is nothing
        // idle to take and no slot to dial into.
        while state.waiting.is_empty() {
            if let Some((mut conn, since)) = state.idle.pop() {
                drop(state);
                if since.elapsed() <= self.config.idle_timeout && self.dialer.is_reusable(&mut conn) {
                    return Ok(self.lend(conn));
                }
                self.close(conn);
                state = self.state();
                continue;
            }
            if state.open < cap {
                state.open += 1;
                drop(state);
                return self.dial();
            }
            break;
        }
        let deadline = Instant::now() + self.config.wait;
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let wake = Arc::new(Condvar::new());
        state.waiting.push_back((ticket, Arc::clone(&wake)));
        loop {
            state = wait_until(&wake, state, deadline);
            match state.handed.remove(&ticket) {
                Some(Handed::Conn(conn)) => return Ok(self.lend(conn)),
                Some(Handed::Slot) => {
                    drop(state);
                    return self.dial();
                }
                None if Instant::now() >= deadline => {
                    state.waiting.retain(|(waiter, _)| *waiter != ticket);
                    return Err(self.dialer.all_busy(cap, self.config.wait));
                }
                None => {} // woken early: keep waiting
            }
        }
    }

    /// Dial into the slot the caller took.
    fn dial(&self) -> Result<Lease<'_, D>, D::Error> {
        match self.dialer.dial() {
            Ok(conn) => {
                self.connects.fetch_add(1, Ordering::Relaxed);
                Ok(self.lend(conn))
            }
            Err(error) => {
                self.free_slot();
                self.health.failed(&error);
                Err(error)
            }
        }
    }

    fn lend(&self, conn: D::Conn) -> Lease<'_, D> {
        Lease {
            pool: self,
            conn: Some(conn),
            released: false,
        }
    }

    /// A lease ended: keep its connection idle if `keep` and there is
    /// room, else close it.
    fn check_in(&self, conn: D::Conn, keep: bool) {
        let mut stale = Vec::new();
        if keep {
            let mut state = self.state();
            // The oldest are at the bottom: stop at the first fresh one.
            let old = (state.idle.iter())
                .take_while(|(_, since)| since.elapsed() > self.config.idle_timeout)
                .count();
            stale.extend(state.idle.drain(..old).map(|(conn, _)| conn));
            let unkept = match state.waiting.pop_front() {
                Some(waiter) => {
                    state.hand(waiter, Handed::Conn(conn));
                    None
                }
                None if state.idle.len() < self.config.max_idle => {
                    state.idle.push((conn, Instant::now()));
                    None
                }
                None => Some(conn),
            };
            drop(state);
            unkept.into_iter().chain(stale).for_each(|conn| self.close(conn));
            return;
        }
        self.close(conn);
        stale.into_iter().for_each(|conn| self.close(conn));
    }

    /// Close a connection (outside the lock), then free its slot.
    fn close(&self, conn: D::Conn) {
        drop(conn);
        self.free_slot();
    }

    /// A connection's slot is free: the longest waiter's to dial into,
    /// else no longer counted.
    fn free_slot(&self) {
        let mut state = self.state();
        match state.waiting.pop_front() {
            Some(waiter) => state.hand(waiter, Handed::Slot),
            None => state.open -= 1,
        }
    }

    /// Close the idle connections; checked-out ones are kept.
    pub(crate) fn close_idle(&self) {
        let idle = std::mem::take(&mut self.state().idle);
        for (conn, _) in idle {
            self.close(conn);
        }
    }

    /// Idle connections now.
    pub(crate) fn idle(&self) -> usize {
        self.state().idle.len()
    }

    /// Connections open now (idle, in use or being dialed).
    pub(crate) fn open(&self) -> usize {
        self.state().open
    }

    /// Connections checked out (or being dialed) now.
    pub(crate) fn in_use(&self) -> usize {
        let state = self.state();
        state.open - state.idle.len()
    }

    /// Connections dialed so far.
    pub(crate) fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }
}

impl<D: Dial> Lease<'_, D> {
    /// Give the connection back for reuse: call only when it is fit for
    /// another call (for memcached, after a complete, in-step exchange).
    pub(crate) fn release(mut self) {
        self.released = true;
    }
}

impl<D: Dial> Deref for Lease<'_, D> {
    type Target = D::Conn;

    fn deref(&self) -> &D::Conn {
        self.conn.as_ref().unwrap_or_else(|| unreachable!("taken only by drop"))
    }
}

impl<D: Dial> DerefMut for Lease<'_, D> {
    fn deref_mut(&mut self) -> &mut D::Conn {
        self.conn.as_mut().unwrap_or_else(|| unreachable!("taken only by drop"))
    }
}

impl<D: Dial> Drop for Lease<'_, D> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let keep = self.released || self.pool.dialer.keeps_unreleased(&conn, &self.pool.health);
            self.pool.check_in(conn, keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Numbered connections: 0 is unfit for reuse, and dials from the
    /// fourth on are refused.
    struct Numbers(AtomicUsize);

    impl Dial for Numbers {
        type Conn = usize;
        type Error = String;

        fn dial(&self) -> Result<usize, String> {
            Some(self.0.fetch_add(1, Ordering::Relaxed))
                .filter(|&n| n < 3)
                .ok_or_else(|| "refused".into())
        }

        fn is_reusable(&self, conn: &mut usize) -> bool {
            *conn != 0
        }

        fn all_busy(&self, cap: usize, _waited: Duration) -> String {
            format!("all {cap} busy")
        }
    }

    fn pool(max_idle: usize, max_open: Option<usize>) -> Pool<Numbers> {
        pool_idling(max_idle, max_open, Duration::from_secs(60))
    }

    fn pool_idling(max_idle: usize, max_open: Option<usize>, idle_timeout: Duration) -> Pool<Numbers> {
        let wait = Duration::from_millis(50);
        let config = Config {
            max_idle,
            max_open,
            wait,
            idle_timeout,
        };
        Pool::new(Numbers(AtomicUsize::new(0)), config, "test server".into())
    }

    #[test]
    fn only_released_connections_come_back() {
        let pool = pool(1, None);
        pool.lease().expect("dialed").release();
        let first = pool.lease().expect("dialed");
        assert_eq!(*first, 1, "the unfit idle connection was closed");
        let second = pool.lease().expect("dialed");
        assert_eq!((pool.open(), pool.in_use()), (2, 2));
        first.release();
        second.release();
        assert_eq!((pool.open(), pool.idle()), (1, 1), "one kept idle, one closed");
        drop(pool.lease().expect("reused"));
        assert_eq!((pool.open(), pool.connects()), (0, 3), "dropped unreleased: closed");
        assert!(pool.lease().is_err());
        assert_eq!(pool.open(), 0, "a failed dial frees its slot");
    }

    /// Connections under the top of the idle stack are closed once idle
    /// too long, although checkouts only ever take the top one.
    #[test]
    fn idle_connections_below_the_top_are_closed_once_stale() {
        let pool = pool_idling(4, None, Duration::from_millis(30));
        let (first, second) = (pool.lease().expect("dialed"), pool.lease().expect("dialed"));
        let third = pool.lease().expect("dialed");
        first.release();
        second.release();
        third.release();
        assert_eq!((pool.open(), pool.idle()), (3, 3));
        for _ in 0..10 {
            pool.lease().expect("reused").release();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!((pool.open(), pool.idle(), pool.connects()), (1, 1, 3));
    }

    #[test]
    fn at_the_cap_callers_wait_for_a_free_connection() {
        let pool = pool(2, Some(1));
        let held = pool.lease().expect("dialed");
        assert_eq!(pool.lease().err().as_deref(), Some("all 1 busy"));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pool.lease().map(|conn| *conn));
            std::thread::sleep(Duration::from_millis(10));
            drop(held);
            assert_eq!(
                waiter.join().expect("no panic"),
                Ok(1),
                "the freed slot went to the waiter"
            );
        });
    }

    /// A connection coming back goes to the caller waiting longest, not to
    /// one arriving meanwhile; a closed one's slot too; a waiter that gave
    /// up leaves the line.
    #[test]
    fn waiters_are_served_first_come_first_served() {
        let config = Config {
            max_idle: 2,
            max_open: Some(1),
            wait: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        };
        let pool = &Pool::new(Numbers(AtomicUsize::new(0)), config, "test server".into());
        let held = pool.lease().expect("dialed");
        let waiting = |count| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while pool.state().waiting.len() != count {
                assert!(Instant::now() < deadline, "{count} waiters did not line up");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        std::thread::scope(|s| {
            let (got, gave) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
            let first = s.spawn(move || {
                let lease = pool.lease();
                let number = lease.as_ref().map(|conn| **conn).map_err(Clone::clone);
                got.0.send(number.clone()).expect("main listens");
                gave.1.recv().expect("main says when");
                number // the lease ends unreleased: its connection is closed
            });
            waiting(1);
            let second = s.spawn(|| pool.lease().map(|conn| *conn));
            waiting(2);
            held.release();
            // Handed to the first waiter at check-in: a caller arriving now
            // lines up behind the second instead of taking it.
            let lined_up = {
                let state = pool.state();
                (state.handed.len(), state.waiting.len())
            };
            assert_eq!(lined_up, (1, 1));
            let third = s.spawn(|| pool.lease().map(|conn| *conn));
            waiting(2);
            assert_eq!(got.1.recv().expect("first got one"), Ok(0));
            gave.0.send(()).expect("first waits for this");
            assert_eq!(first.join().expect("no panic"), Ok(0));
            // The first dropped its lease unreleased: the slot goes to the
            // second, which dials into it, then to the third.
            assert_eq!(second.join().expect("no panic"), Ok(1));
            assert_eq!(third.join().expect("no panic"), Ok(2));
        });
        assert_eq!((pool.open(), pool.idle()), (0, 0));
        let state = pool.state();
        assert!(state.waiting.is_empty() && state.handed.is_empty());
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_the_line() {
        let pool = pool(1, Some(1));
        let held = pool.lease().expect("dialed");
        assert_eq!(pool.lease().err().as_deref(), Some("all 1 busy"));
        assert!(pool.state().waiting.is_empty(), "the timed-out waiter left");
        held.release();
        assert_eq!(
            (pool.open(), pool.idle()),
            (1, 1),
            "kept idle, not handed to a gone waiter"
        );
    }
}
