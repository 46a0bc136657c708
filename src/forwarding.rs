//! Generation-safe forwarding: the current target of a forwarding cache.
//!
//! A `Forwarder<T>` holds the target every call is forwarded to behind an
//! atomic pointer swap, with a generation number. Calls take a `Lease` on
//! the current target and finish on it even if a reset swaps in a new one
//! meanwhile; a replaced target is closed once, by whoever ends its last
//! lease. Building a new target happens once per generation however many
//! threads ask at once, and a failed build leaves the old target in place.
//!
//! Generic over the target so it is tested as plain Rust; the Python layer
//! uses it with Python backend objects.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use arc_swap::ArcSwapOption;

use crate::sync::locked;

/// Called once with each replaced target, after its last call returned.
pub type Close<T> = Arc<dyn Fn(&T) + Send + Sync>;

/// Counters, all cheap atomics.
#[derive(Debug, Default)]
pub struct Stats {
    pub builds: AtomicU64,
    pub build_failures: AtomicU64,
    pub closes: AtomicU64,
}

/// A snapshot of [`Stats`] plus the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub generation: u64,
    pub builds: u64,
    pub build_failures: u64,
    pub closes: u64,
    /// Calls in flight on the current target.
    pub in_flight: usize,
    /// Replaced targets still waiting for their last call to return.
    pub retiring: usize,
}

struct Slot<T> {
    target: T,
    generation: u64,
    in_flight: AtomicUsize,
    retired: AtomicBool,
    closed: AtomicBool,
    close: Close<T>,
    stats: Arc<Stats>,
    retiring: Arc<AtomicUsize>,
}

impl<T> Slot<T> {
    /// Close the target if it is replaced and no call is left on it. Both
    /// the last lease and the retirement call this; the `closed` swap makes
    /// exactly one of them close.
    fn close_if_done(&self) {
        if self.retired.load(SeqCst) && self.in_flight.load(SeqCst) == 0 && !self.closed.swap(true, SeqCst) {
            self.stats.closes.fetch_add(1, SeqCst);
            self.retiring.fetch_sub(1, SeqCst);
            (self.close)(&self.target);
        }
    }

    fn retire(&self) {
        self.retiring.fetch_add(1, SeqCst);
        self.retired.store(true, SeqCst);
        self.close_if_done();
    }
}

/// A call in progress on one target; ending it (drop) may close a
/// replaced target.
pub struct Lease<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Lease<T> {
    pub fn target(&self) -> &T {
        &self.slot.target
    }

    pub fn generation(&self) -> u64 {
        self.slot.generation
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        drop(InFlight(&self.slot));
    }
}

/// When a rebuild is still wanted once this thread gets to build.
#[derive(Clone, Copy)]
enum Want {
    /// No target yet, or the current one was invalidated.
    Fresh,
    /// The current generation is still this one.
    Replace(u64),
}

pub struct Forwarder<T> {
    current: ArcSwapOption<Slot<T>>,
    /// Set by `invalidate`: the next call builds a new target first.
    stale: AtomicBool,
    generation: AtomicU64,
    /// True while one thread builds; the others wait on `built`. A flag,
    /// not a held lock, so no lock is held while the build runs.
    building: Mutex<bool>,
    built: Condvar,
    close: Close<T>,
    stats: Arc<Stats>,
    retiring: Arc<AtomicUsize>,
}

impl<T> Forwarder<T> {
    pub fn new(close: Close<T>) -> Self {
        Forwarder {
            current: ArcSwapOption::empty(),
            stale: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            building: Mutex::new(false),
            built: Condvar::new(),
            close,
            stats: Arc::new(Stats::default()),
            retiring: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The generation of the current target; 0 before the first build.
    pub fn generation(&self) -> u64 {
        self.generation.load(SeqCst)
    }

    /// A lease on the current target, or None when there is none yet or it
    /// was invalidated. Never blocks.
    pub fn try_lease(&self) -> Option<Lease<T>> {
        self.with_slot(|slot| {
            // Counted while the call below still holds its own count, so
            // the slot cannot close in between.
            slot.in_flight.fetch_add(1, SeqCst);
            Lease { slot: Arc::clone(slot) }
        })
    }

    /// Run `f` on the current target, holding it open meanwhile, without
    /// taking an owned lease (cheaper: no reference count traffic). None
    /// when `try_lease` would return None.
    pub fn with_current<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.with_slot(|slot| f(&slot.target))
    }

    /// Run `f` on the current slot with a call counted in its `in_flight`.
    fn with_slot<R>(&self, f: impl FnOnce(&Arc<Slot<T>>) -> R) -> Option<R> {
        loop {
            if self.stale.load(SeqCst) {
                return None;
            }
            let guard = self.current.load();
            let slot = guard.as_ref()?;
            slot.in_flight.fetch_add(1, SeqCst);
            let _call = InFlight(slot);
            if !slot.retired.load(SeqCst) {
                return Some(f(slot));
            }
            // Replaced between the load and the count: its retirement may
            // not have seen this call, so use the new target instead.
        }
    }

    /// A lease on the current target, building one first if there is none
    /// or it was invalidated. When a rebuild after `invalidate` fails and an
    /// old target exists, the old one keeps serving and the error is
    /// returned in the second field for the caller to log.
    pub fn lease<E>(&self, mut build: impl FnMut() -> Result<T, E>) -> Result<(Lease<T>, Option<E>), E> {
        let mut failure = None;
        loop {
            if let Some(lease) = self.try_lease() {
                return Ok((lease, failure));
            }
            match self.rebuild(Want::Fresh, &mut build) {
                Ok(_) => {}
                // `rebuild` kept the old target serving.
                Err(error) if self.current.load().is_some() => failure = Some(error),
                Err(error) => return Err(error),
            }
        }
    }

    /// Build a new target and swap it in, unless the generation has already
    /// moved past `from_generation` (another thread's reset of the same
    /// generation did it). Returns whether this call built. On error the
    /// old target stays current.
    pub fn replace<E>(&self, from_generation: u64, mut build: impl FnMut() -> Result<T, E>) -> Result<bool, E> {
        self.rebuild(Want::Replace(from_generation), &mut build)
    }

    /// Make the next call build a new target (lazily, once).
    pub fn invalidate(&self) {
        self.stale.store(true, SeqCst);
    }

    pub fn snapshot(&self) -> Snapshot {
        let current = self.current.load();
        Snapshot {
            generation: self.generation(),
            builds: self.stats.builds.load(SeqCst),
            build_failures: self.stats.build_failures.load(SeqCst),
            closes: self.stats.closes.load(SeqCst),
            in_flight: current.as_ref().map_or(0, |slot| slot.in_flight.load(SeqCst)),
            retiring: self.retiring.load(SeqCst),
        }
    }

    fn wanted(&self, want: Want) -> bool {
        match want {
            Want::Fresh => self.stale.load(SeqCst) || self.current.load().is_none(),
            Want::Replace(generation) => self.generation() == generation,
        }
    }

    fn rebuild<E>(&self, want: Want, build: &mut impl FnMut() -> Result<T, E>) -> Result<bool, E> {
        {
            let mut building = locked(&self.building);
            loop {
                if !self.wanted(want) {
                    return Ok(false);
                }
                if !*building {
                    *building = true;
                    break;
                }
                building = self.built.wait(building).unwrap_or_else(PoisonError::into_inner);
            }
        }
        // Clears the flag and wakes the waiters however the build ends,
        // including by a panic in `build`.
        let _done = BuildDone(self);
        match build() {
            Ok(target) => {
                let generation = self.generation.load(SeqCst) + 1;
                let slot = Arc::new(Slot {
                    target,
                    generation,
                    in_flight: AtomicUsize::new(0),
                    retired: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                    close: Arc::clone(&self.close),
                    stats: Arc::clone(&self.stats),
                    retiring: Arc::clone(&self.retiring),
                });
                let old = self.current.swap(Some(slot));
                self.generation.store(generation, SeqCst);
                self.stale.store(false, SeqCst);
                self.stats.builds.fetch_add(1, SeqCst);
                if let Some(old) = old {
                    old.retire();
                }
                Ok(true)
            }
            Err(error) => {
                self.stats.build_failures.fetch_add(1, SeqCst);
                if matches!(want, Want::Fresh) && self.current.load().is_some() {
                    // Keep serving the old target rather than failing every
                    // call, or having each waiting thread retry a slow build.
                    self.stale.store(false, SeqCst);
                }
                Err(error)
            }
        }
    }
}

impl<T> Drop for Forwarder<T> {
    fn drop(&mut self) {
        // The forwarder going away retires its target like a reset would.
        if let Some(slot) = self.current.swap(None) {
            slot.retire();
        }
    }
}

/// A call counted in `in_flight` for as long as it lives.
struct InFlight<'a, T>(&'a Slot<T>);

impl<T> Drop for InFlight<'_, T> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
        self.0.close_if_done();
    }
}

struct BuildDone<'a, T>(&'a Forwarder<T>);

impl<T> Drop for BuildDone<'_, T> {
    fn drop(&mut self) {
        *locked(&self.0.building) = false;
        self.0.built.notify_all();
    }
}
