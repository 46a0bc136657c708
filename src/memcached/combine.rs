//! Concurrent single-key gets to one server, combined into one round trip.
//!
//! With many threads on few cores, a get's cost is mostly syscalls and
//! wake-ups on both ends (a send, a sleeping receive, the server's epoll
//! wake, read and write) rather than bytes. So gets that arrive while
//! another get to the same server is on the wire queue up, and the next
//! round trip carries all of them as one pipeline of opaque-tagged
//! requests: one send, one read and one server wake for the lot. Each
//! reply is matched to its request by its tag, exactly as in `get_many`.
//!
//! One caller at a time (per server and process) leads: it drains the
//! queue, runs the round trip and hands each queued caller its own result;
//! then, while callers queued meanwhile, it runs up to a few more round
//! trips for them (its thread would otherwise only wait for the GIL, and
//! waking another leader costs a context switch per trip), and passes the
//! lead to the first caller still queued. A lone caller leads at once and
//! pays two uncontended lock operations more than a plain exchange.
//!
//! A round trip that fails because the server failed also fails the
//! callers queued behind it, without sending, so no caller waits much
//! longer than one I/O timeout for a dead server.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::net::spin::InFlight;
use crate::sync::{locked, wait_until};

use super::error::{Error, Result};
use super::item::Item;

/// Most gets in one combined round trip (the rest wait for the next).
const MOST_PER_TRIP: usize = 64;

/// Most round trips one leader runs before passing the lead on.
const ROUNDS_PER_LEAD: usize = 4;

type Outcome = Result<Option<Item>>;

enum Turn {
    Queued,
    /// The caller that led before handed the lead to this one.
    Lead,
    /// The outcome, and whether the round trip already recorded its
    /// failure against this get (it records one per failed trip, as the
    /// trip's first key).
    Done(Outcome, bool),
}

/// A queued get.
struct Waiter {
    key: Vec<u8>,
    turn: Mutex<Turn>,
    changed: Condvar,
}

impl Waiter {
    fn finish(&self, turn: Turn) {
        *locked(&self.turn) = turn;
        self.changed.notify_one();
    }
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Arc<Waiter>>,
    leading: bool,
}

pub(crate) struct Combiner {
    /// The server's name, for errors.
    server: String,
    queue: Mutex<Queue>,
    /// Gets that rode in another caller's round trip (for stats).
    riders: AtomicU64,
}

/// What the leader runs: the keys of one round trip, first its own; one
/// outcome per key, in order.
pub(crate) trait RoundTrip {
    fn run(&self, keys: &[&[u8]]) -> Vec<Outcome>;
}

impl Combiner {
    pub(crate) fn new(server: String) -> Combiner {
        Combiner {
            server,
            queue: Mutex::default(),
            riders: AtomicU64::new(0),
        }
    }

    /// Get `key`, in a round trip of its own or combined with other
    /// callers'; true with it if the round trip already recorded this
    /// get's failure, if any, in the server's health (each failed trip
    /// records one, for its first key). `patience` bounds the wait for
    /// a leader's reply (a backstop only: every leader finishes within its
    /// I/O timeouts).
    pub(crate) fn get(&self, key: &[u8], patience: Duration, trip: &impl RoundTrip) -> (Outcome, bool) {
        let queued = {
            let mut queue = locked(&self.queue);
            if queue.leading {
                let waiter = Arc::new(Waiter {
                    key: key.to_vec(),
                    turn: Mutex::new(Turn::Queued),
                    changed: Condvar::new(),
                });
                queue.waiting.push_back(Arc::clone(&waiter));
                Some(waiter)
            } else {
                queue.leading = true;
                None
            }
        };
        match queued {
            None => (self.lead(key, trip), true),
            Some(waiter) => match self.wait(&waiter, patience) {
                Turn::Done(outcome, recorded) => (outcome, recorded),
                Turn::Lead => (self.lead(key, trip), true),
                // Out of patience: a timeout, like any reply that never came.
                Turn::Queued => (
                    Err(Error::Timeout {
                        server: self.server.clone(),
                    }),
                    false,
                ),
            },
        }
    }

    /// The error of a caller whose round trip ended without its reply.
    fn lost_reply(&self) -> Error {
        Error::protocol(
            &self.server,
            "the combined round trip ended without a reply for this get",
        )
    }

    /// Gets so far that rode in another caller's round trip.
    pub(crate) fn riders(&self) -> u64 {
        self.riders.load(Ordering::Relaxed)
    }

    /// Wait until a leader answers or hands over the lead; `Queued` if
    /// `patience` ran out while still queued (then no one will).
    fn wait(&self, waiter: &Arc<Waiter>, patience: Duration) -> Turn {
        // Counted while waiting, so a spinning leader yields the CPU.
        let _waiting = InFlight::start();
        let deadline = Instant::now() + patience;
        let mut turn = locked(&waiter.turn);
        loop {
            if !matches!(*turn, Turn::Queued) {
                return std::mem::replace(&mut *turn, Turn::Queued);
            }
            if Instant::now() >= deadline {
                drop(turn);
                // Still in the queue: leave it, and no one will answer. Not
                // there: a leader took it and answers shortly.
                let mut queue = locked(&self.queue);
                if let Some(at) = queue.waiting.iter().position(|w| Arc::ptr_eq(w, waiter)) {
                    queue.waiting.remove(at);
                    return Turn::Queued;
                }
                drop(queue);
                turn = locked(&waiter.turn);
                while matches!(*turn, Turn::Queued) {
                    turn = waiter.changed.wait(turn).unwrap_or_else(PoisonError::into_inner);
                }
                continue;
            }
            turn = wait_until(&waiter.changed, turn, deadline);
        }
    }

    /// Run one round trip for `own` and whoever is queued, answer them,
    /// then a few more for callers queued meanwhile (this thread would only
    /// wait for the GIL otherwise, and another leader would first have to
    /// be woken), and pass the lead on.
    fn lead(&self, own: &[u8], trip: &impl RoundTrip) -> Outcome {
        let mut lead = Lead {
            combiner: self,
            riders: self.queued(),
            handed_over: false,
        };
        let (mine, mut failed) = self.round(&mut lead, Some(own), trip);
        for _ in 1..ROUNDS_PER_LEAD {
            if failed.is_some() {
                break;
            }
            lead.riders = self.queued();
            if lead.riders.is_empty() {
                break;
            }
            failed = self.round(&mut lead, None, trip).1;
        }
        lead.hand_over(failed.as_ref());
        mine.unwrap_or_else(|| Err(self.lost_reply()))
    }

    /// Callers queued for the next round trip, taken off the queue.
    fn queued(&self) -> Vec<Arc<Waiter>> {
        let mut queue = locked(&self.queue);
        let n = queue.waiting.len().min(MOST_PER_TRIP - 1);
        queue.waiting.drain(..n).collect()
    }

    /// One round trip for `own` (if any) and the lead's riders: answers
    /// the riders; returns the outcome for `own`, and the error to fail
    /// queued callers with if the server failed.
    fn round(
        &self,
        lead: &mut Lead<'_>,
        own: Option<&[u8]>,
        trip: &impl RoundTrip,
    ) -> (Option<Outcome>, Option<Error>) {
        let mut keys: Vec<&[u8]> = Vec::with_capacity(lead.riders.len() + 1);
        keys.extend(own);
        keys.extend(lead.riders.iter().map(|w| w.key.as_slice()));
        self.riders.fetch_add(lead.riders.len() as u64, Ordering::Relaxed);
        let mut outcomes = trip.run(&keys).into_iter();
        let mut next = || outcomes.next().unwrap_or_else(|| Err(self.lost_reply()));
        let mine = own.map(|_| next());
        let mut failed = mine.as_ref().and_then(server_failure);
        for (position, rider) in lead.riders.drain(..).enumerate() {
            let outcome = next();
            if failed.is_none() {
                failed = server_failure(&outcome);
            }
            rider.finish(Turn::Done(outcome, own.is_none() && position == 0));
        }
        (mine, failed)
    }
}

/// The error to fail queued callers with, if `outcome` is a server failure.
fn server_failure(outcome: &Outcome) -> Option<Error> {
    outcome.as_ref().err().filter(|e| e.is_server_failure()).map(duplicate)
}

/// The lead while a caller holds it. Dropped (also by unwinding), it
/// answers any rider still waiting and passes the lead on, so no caller
/// can be left queued behind a leader that is gone.
struct Lead<'a> {
    combiner: &'a Combiner,
    riders: Vec<Arc<Waiter>>,
    handed_over: bool,
}

impl Lead<'_> {
    /// Pass the lead to the first caller queued, or give it up. After a
    /// server failure, the queued callers fail with it instead.
    fn hand_over(&mut self, server_failed: Option<&Error>) {
        self.handed_over = true;
        let mut queue = locked(&self.combiner.queue);
        if let Some(error) = server_failed {
            for waiter in queue.waiting.drain(..) {
                waiter.finish(Turn::Done(Err(duplicate(error)), false));
            }
        }
        match queue.waiting.pop_front() {
            Some(next) => next.finish(Turn::Lead),
            None => queue.leading = false,
        }
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        for rider in self.riders.drain(..) {
            rider.finish(Turn::Done(Err(self.combiner.lost_reply()), false));
        }
        if !self.handed_over {
            self.hand_over(None);
        }
    }
}

/// An equal error for another caller (`io::Error` is not `Clone`).
pub(crate) fn duplicate(error: &Error) -> Error {
    match error {
        Error::InvalidKey(problem) => Error::InvalidKey(*problem),
        Error::Connect { server, source } => Error::Connect {
            server: server.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Timeout { server } => Error::Timeout { server: server.clone() },
        Error::Io { server, source } => Error::Io {
            server: server.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Protocol { server, detail } => Error::protocol(server, detail.clone()),
        Error::Server { server, message } => Error::Server {
            server: server.clone(),
            message: message.clone(),
        },
        Error::ValueTooLarge { server, size } => Error::ValueTooLarge {
            server: server.clone(),
            size: *size,
        },
        Error::NotANumber { server } => Error::NotANumber { server: server.clone() },
        Error::Tls { server, detail } => Error::Tls {
            server: server.clone(),
            detail: detail.clone(),
        },
        Error::Auth { server, problem } => Error::Auth {
            server: server.clone(),
            problem: problem.clone(),
        },
        Error::Config(message) => Error::Config(message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    /// Answers each key with itself as the value, after `delay`, and counts
    /// round trips; keys starting with "fail" fail the whole trip as a dead
    /// server would, "panic" panics.
    struct Echo {
        delay: Duration,
        trips: AtomicUsize,
        keys_sent: AtomicUsize,
        /// Trips from this one on fail whole, as a server killed then would.
        fail_from: usize,
    }

    impl RoundTrip for Echo {
        fn run(&self, keys: &[&[u8]]) -> Vec<Outcome> {
            let number = self.trips.fetch_add(1, Ordering::Relaxed);
            self.keys_sent.fetch_add(keys.len(), Ordering::Relaxed);
            thread::sleep(self.delay);
            if keys.iter().any(|k| k.starts_with(b"panic")) {
                panic!("round trip panicked");
            }
            keys.iter()
                .map(|key| {
                    if key.starts_with(b"fail") || number >= self.fail_from {
                        Err(Error::Timeout { server: "s".into() })
                    } else {
                        Ok(Some(Item {
                            value: key.to_vec(),
                            flags: 0,
                        }))
                    }
                })
                .collect()
        }
    }

    fn echo(delay_ms: u64) -> Echo {
        Echo {
            delay: Duration::from_millis(delay_ms),
            trips: AtomicUsize::new(0),
            keys_sent: AtomicUsize::new(0),
            fail_from: usize::MAX,
        }
    }

    const PATIENCE: Duration = Duration::from_secs(5);

    #[test]
    fn every_caller_gets_its_own_reply_and_trips_are_shared() {
        let combiner = Combiner::new("test".into());
        let trip = echo(1);
        let calls = 16 * 50;
        thread::scope(|s| {
            for t in 0..16 {
                let (combiner, trip) = (&combiner, &trip);
                s.spawn(move || {
                    for n in 0..50 {
                        let key = format!("k{t}-{n}");
                        let (outcome, _led) = combiner.get(key.as_bytes(), PATIENCE, trip);
                        let item = outcome.expect("answered").expect("a value");
                        assert_eq!(item.value, key.as_bytes(), "another caller's reply");
                    }
                });
            }
        });
        let trips = trip.trips.load(Ordering::Relaxed);
        assert!(trips < calls, "{trips} round trips for {calls} gets: none shared");
        assert_eq!(
            trip.keys_sent.load(Ordering::Relaxed),
            calls,
            "each get sent exactly once"
        );
        assert!(combiner.riders() > 0);
        assert!(!locked(&combiner.queue).leading, "the lead was given up");
    }

    #[test]
    fn each_failed_get_is_recorded_exactly_once() {
        // The server dies after some trips. Each failed trip records one
        // failure itself (for its first key, which in a leader's later
        // rounds is a rider's), and every other failed get must be told to
        // record its own: together, exactly one per failed get. Several
        // dying points, so that some fall on a leader's later round.
        for fail_from in 20..32 {
            let combiner = Combiner::new("test".into());
            let trip = Echo { fail_from, ..echo(1) };
            let (unrecorded, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
            thread::scope(|s| {
                for t in 0..8 {
                    let (combiner, trip, unrecorded, failed) = (&combiner, &trip, &unrecorded, &failed);
                    s.spawn(move || {
                        for n in 0..40 {
                            let key = format!("k{t}-{n}");
                            let (outcome, recorded) = combiner.get(key.as_bytes(), PATIENCE, trip);
                            if outcome.is_err() {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if !recorded {
                                    unrecorded.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    });
                }
            });
            let failed_trips = trip.trips.load(Ordering::Relaxed) - fail_from;
            let failed = failed.load(Ordering::Relaxed);
            assert!(failed > 0 && combiner.riders() > 0);
            assert_eq!(
                failed_trips + unrecorded.load(Ordering::Relaxed),
                failed,
                "dying at trip {fail_from}"
            );
        }
    }

    #[test]
    fn a_lone_caller_leads_its_own_trip() {
        let combiner = Combiner::new("test".into());
        let trip = echo(0);
        for _ in 0..3 {
            let (outcome, recorded) = combiner.get(b"k", PATIENCE, &trip);
            assert!(recorded, "a lone caller's trip records its own failure");
            assert_eq!(outcome.expect("ok").expect("value").value, b"k");
        }
        assert_eq!(combiner.riders(), 0);
        assert_eq!(trip.trips.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_server_failure_fails_the_queued_callers_without_another_trip() {
        let combiner = Combiner::new("test".into());
        let trip = echo(50);
        let started = Instant::now();
        let outcomes: Vec<Outcome> = thread::scope(|s| {
            let first = s.spawn(|| combiner.get(b"fail-leader", PATIENCE, &trip).0);
            thread::sleep(Duration::from_millis(10)); // queue behind its trip
            let rest: Vec<_> = (0..6)
                .map(|n| {
                    let (combiner, trip) = (&combiner, &trip);
                    s.spawn(move || combiner.get(format!("k{n}").as_bytes(), PATIENCE, trip).0)
                })
                .collect();
            std::iter::once(first)
                .chain(rest)
                .map(|h| h.join().expect("no panic"))
                .collect()
        });
        assert!(
            outcomes.iter().all(|o| matches!(o, Err(Error::Timeout { .. }))),
            "{outcomes:?}"
        );
        assert_eq!(trip.trips.load(Ordering::Relaxed), 1, "queued callers were not sent");
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_leader_that_panics_answers_its_riders_and_passes_the_lead_on() {
        let combiner = Combiner::new("test".into());
        let trip = echo(30);
        thread::scope(|s| {
            let leader = s.spawn(|| combiner.get(b"panic", PATIENCE, &trip));
            thread::sleep(Duration::from_millis(10));
            let riders: Vec<_> = (0..4)
                .map(|n| {
                    let (combiner, trip) = (&combiner, &trip);
                    s.spawn(move || combiner.get(format!("r{n}").as_bytes(), PATIENCE, trip).0)
                })
                .collect();
            assert!(leader.join().is_err(), "the leader's panic stays its own");
            for rider in riders {
                // Either answered "no reply" by the dropped lead, or led a
                // trip of its own afterwards; never left waiting.
                match rider.join().expect("rider did not panic") {
                    Ok(Some(item)) => assert!(item.value.starts_with(b"r")),
                    Err(Error::Protocol { .. }) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        let (outcome, recorded) = combiner.get(b"after", PATIENCE, &trip);
        assert!(recorded && outcome.is_ok(), "the lead is free again");
    }

    #[test]
    fn a_caller_out_of_patience_leaves_the_queue() {
        let combiner = Combiner::new("test".into());
        let trip = echo(300);
        thread::scope(|s| {
            s.spawn(|| combiner.get(b"slow", PATIENCE, &trip));
            thread::sleep(Duration::from_millis(20));
            let started = Instant::now();
            let (outcome, recorded) = combiner.get(b"impatient", Duration::from_millis(50), &trip);
            assert!(
                !recorded && matches!(outcome, Err(Error::Timeout { .. })),
                "{outcome:?}"
            );
            assert!(started.elapsed() < Duration::from_millis(250));
        });
        assert!(locked(&combiner.queue).waiting.is_empty());
        assert_eq!(
            trip.trips.load(Ordering::Relaxed),
            1,
            "the impatient caller was never sent"
        );
    }
}
