//! Operation counters every store keeps for `cache.stats()`: one relaxed
//! atomic add per call, cheap enough to leave on.

use std::sync::atomic::{AtomicU64, Ordering};

/// Errors that mean the store could not serve the call (a server or disk
/// failure), as opposed to input refused before anything was tried.
pub trait Failure {
    fn is_failure(&self) -> bool;
}

/// Every counter, by name.
pub type Snapshot = [(&'static str, u64); 5];

#[derive(Debug, Default)]
pub struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    sets: AtomicU64,
    deletes: AtomicU64,
    errors: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    /// Count `hits` found and `misses` missing keys of a read.
    pub fn looked_up(&self, hits: u64, misses: u64) {
        bump(&self.hits, hits);
        bump(&self.misses, misses);
    }

    /// Count a single-key read by its outcome.
    pub fn read<T, E: Failure>(&self, result: Result<Option<T>, E>) -> Result<Option<T>, E> {
        match &result {
            Ok(Some(_)) => bump(&self.hits, 1),
            Ok(None) => bump(&self.misses, 1),
            Err(error) => self.failed(error),
        }
        result
    }

    /// Count `n` values stored.
    pub fn stored(&self, n: u64) {
        bump(&self.sets, n);
    }

    /// Count a write: stored if it succeeded.
    pub fn write<T, E: Failure>(&self, result: Result<T, E>) -> Result<T, E> {
        match &result {
            Ok(_) => bump(&self.sets, 1),
            Err(error) => self.failed(error),
        }
        result
    }

    /// Count a write that reports whether it stored (an `add` may not).
    pub fn stored_if<E: Failure>(&self, result: Result<bool, E>) -> Result<bool, E> {
        self.count_if_true(&self.sets, result)
    }

    /// Count a delete of one key: deleted if it was there.
    pub fn delete<E: Failure>(&self, result: Result<bool, E>) -> Result<bool, E> {
        self.count_if_true(&self.deletes, result)
    }

    fn count_if_true<E: Failure>(&self, counter: &AtomicU64, result: Result<bool, E>) -> Result<bool, E> {
        match &result {
            Ok(true) => bump(counter, 1),
            Ok(false) => {}
            Err(error) => self.failed(error),
        }
        result
    }

    /// Count `n` keys deleted by a batch.
    pub fn deleted(&self, n: u64) {
        bump(&self.deletes, n);
    }

    /// Count only a failure (for calls that are neither reads nor writes).
    pub fn other<T, E: Failure>(&self, result: Result<T, E>) -> Result<T, E> {
        if let Err(error) = &result {
            self.failed(error);
        }
        result
    }

    pub fn failed<E: Failure>(&self, error: &E) {
        if error.is_failure() {
            bump(&self.errors, 1);
        }
    }

    /// Every counter, by name.
    pub fn snapshot(&self) -> Snapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("hits", read(&self.hits)),
            ("misses", read(&self.misses)),
            ("sets", read(&self.sets)),
            ("deletes", read(&self.deletes)),
            ("errors", read(&self.errors)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Refused(bool);

    impl Failure for Refused {
        fn is_failure(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn outcomes_are_counted_by_kind() {
        let counters = Counters::default();
        let _ = counters.read::<u8, Refused>(Ok(Some(1)));
        let _ = counters.read::<u8, Refused>(Ok(None));
        let _ = counters.read::<u8, Refused>(Err(Refused(true)));
        let _ = counters.write::<(), Refused>(Err(Refused(false)));
        let _ = counters.write::<(), Refused>(Ok(()));
        let _ = counters.delete::<Refused>(Ok(true));
        let _ = counters.delete::<Refused>(Ok(false));
        counters.looked_up(3, 4);
        assert_eq!(
            counters.snapshot(),
            [("hits", 4), ("misses", 5), ("sets", 1), ("deletes", 1), ("errors", 1)]
        );
    }
}
