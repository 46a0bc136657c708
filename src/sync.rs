//! Locks that survive `fork`.
//!
//! racefree uses `std`'s locks, not parking_lot's, wherever a forked child
//! may lock: parking_lot keeps one process-wide table of parked threads,
//! and a child forked while another thread of its parent was parking
//! inherits that table locked, so the child's first contended lock hangs
//! forever (seen here with r2d2's pool threads). `std`'s locks are a futex
//! each, and a forked child builds new pools instead of touching its
//! parent's.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Lock `mutex`, ignoring poisoning: every update racefree makes under its
/// locks is a single statement, so a panic cannot leave one half-done.
pub(crate) fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wait on `condvar` until notified or `deadline`, ignoring poisoning as
/// `locked` does.
pub(crate) fn wait_until<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>, deadline: Instant) -> MutexGuard<'a, T> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    condvar
        .wait_timeout(guard, timeout)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}
