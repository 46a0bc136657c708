//! Whether a server is answering, reported as log events on transitions.
//!
//! A pool marks its server failed when a dial fails or a connection breaks
//! mid-call, and answering again when a later call completes. Only the
//! transitions become events: an outage that fails 40,000 calls logs one
//! warning when it starts and one line when the server is back (with how
//! long it was gone and how many calls failed meanwhile), not 40,000.
//!
//! Events go to one process-wide sink, which the Python layer points at
//! the `racefree` logger; plain Rust users and `cargo test` have none, and
//! events are then dropped. A sink is called on the failing or recovering
//! caller's thread, never with a pool lock held. Events are queued in the
//! order of their transitions, and one thread at a time hands them to the
//! sink: two threads that saw an outage end and a new one begin cannot
//! log "answering again" after "not answering".

use std::collections::VecDeque;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, TryLockError};
use std::time::Instant;

use crate::sync::locked;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub level: Level,
    pub message: String,
}

type Sink = Box<dyn Fn(Event) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

/// Send every later event to `sink` (the first call wins).
pub fn set_sink(sink: impl Fn(Event) + Send + Sync + 'static) {
    let _ = SINK.set(Box::new(sink));
}

fn emit(event: Event) {
    if let Some(sink) = SINK.get() {
        sink(event);
    }
}

/// One server's state as its pool has seen it.
pub struct Health {
    /// How events name the server ("memcached server 127.0.0.1:11211").
    server: String,
    /// Read on every successful call, so that path is one relaxed load.
    down: AtomicBool,
    /// Calls failed since the outage began.
    failures: AtomicU64,
    /// When the outage began; its lock orders the transitions.
    since: Mutex<Option<Instant>>,
    /// Events of transitions made, in their order, not yet emitted.
    pending: Mutex<VecDeque<Event>>,
    /// Held by the one thread emitting `pending`.
    emitting: Mutex<()>,
}

impl Health {
    pub fn new(server: String) -> Health {
        Health {
            server,
            down: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            since: Mutex::new(None),
            pending: Mutex::new(VecDeque::new()),
            emitting: Mutex::new(()),
        }
    }

    /// A call on this server completed.
    pub fn succeeded(&self) {
        if self.down.load(Ordering::Relaxed) && self.recovery().is_some() {
            self.emit_pending();
        }
    }

    /// A call failed because the server could not be reached or the
    /// connection broke (its connection is being discarded).
    pub fn failed(&self, error: &dyn Display) {
        if self.failure(error).is_some() {
            self.emit_pending();
        }
    }

    /// Emit the queued events in order, unless another thread is doing so
    /// (it then emits this caller's too).
    fn emit_pending(&self) {
        loop {
            let turn = match self.emitting.try_lock() {
                Ok(turn) => turn,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            while let Some(event) = locked(&self.pending).pop_front() {
                emit(event);
            }
            drop(turn);
            // One queued after the last pop, while its thread found this
            // one emitting, is emitted by the next round.
            if locked(&self.pending).is_empty() {
                return;
            }
        }
    }

    /// Queue `event` (called with `since` locked, so in transition order).
    fn queued(&self, event: Event) -> Option<Event> {
        locked(&self.pending).push_back(event.clone());
        Some(event)
    }

    #[cfg(test)]
    fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    #[cold]
    fn recovery(&self) -> Option<Event> {
        let mut since = locked(&self.since);
        if !self.down.swap(false, Ordering::AcqRel) {
            return None; // another thread reported it
        }
        let failures = self.failures.swap(0, Ordering::AcqRel);
        let after = since.take().map_or(0.0, |at| at.elapsed().as_secs_f64());
        self.queued(Event {
            level: Level::Info,
            message: format!(
                "{} is answering again after {after:.3} s ({failures} failed call{} or dial{} meanwhile)",
                self.server,
                if failures == 1 { "" } else { "s" },
                if failures == 1 { "" } else { "s" }
            ),
        })
    }

    #[cold]
    fn failure(&self, error: &dyn Display) -> Option<Event> {
        let mut since = locked(&self.since);
        self.failures.fetch_add(1, Ordering::AcqRel);
        if self.down.swap(true, Ordering::AcqRel) {
            return None; // already reported
        }
        *since = Some(Instant::now());
        self.queued(Event {
            level: Level::Warning,
            message: format!(
                "{} is not answering ({error}); its broken connections are closed and redialed",
                self.server
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transitions_make_events() {
        let health = Health::new("test server".into());
        assert_eq!(health.recovery(), None, "nothing to recover from");
        let first = health.failure(&"refused").expect("the first failure is reported");
        assert_eq!(first.level, Level::Warning);
        assert!(
            first.message.starts_with("test server is not answering (refused);"),
            "{}",
            first.message
        );
        assert!(health.is_down());
        for _ in 0..4 {
            assert_eq!(health.failure(&"refused"), None);
        }
        let back = health.recovery().expect("the recovery is reported");
        assert_eq!(back.level, Level::Info);
        assert!(
            back.message.ends_with("(5 failed calls or dials meanwhile)"),
            "{}",
            back.message
        );
        assert!(!health.is_down());
        assert_eq!(health.recovery(), None);
        // A second outage is a new event, with its own count.
        assert!(health.failure(&"reset").is_some());
        let back = health.recovery().expect("reported");
        assert!(
            back.message.ends_with("(1 failed call or dial meanwhile)"),
            "{}",
            back.message
        );
    }

    #[test]
    fn racing_threads_report_each_transition_once() {
        let health = std::sync::Arc::new(Health::new("s".into()));
        let events = |f: fn(&Health) -> Option<Event>| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let health = std::sync::Arc::clone(&health);
                    std::thread::spawn(move || (0..1000).filter(|_| f(&health).is_some()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum::<usize>()
        };
        assert_eq!(events(|h| h.failure(&"down")), 1);
        assert_eq!(events(Health::recovery), 1);
    }
}
