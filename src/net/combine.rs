//! Concurrent calls to one server, combined into one round trip.
//!
//! With many threads on few cores, a small call's cost is mostly syscalls
//! and wake-ups on both ends (a send, a sleeping receive, the server's
//! epoll wake, read and write) rather than bytes. So calls that arrive
//! while another call to the same server is on the wire queue up, and the
//! next round trip carries all of them as one pipeline: one send, one read
//! and one server wake for the lot. The store's `RoundTrip` matches each
//! reply to its request (memcached by opaque tags, Redis by order).
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

use super::server::ServerError;
use super::spin::InFlight;
use crate::sync::{locked, wait_until};

/// Most calls in one combined round trip (the rest wait for the next).
const MOST_PER_TRIP: usize = 64;

/// Most round trips one leader runs before passing the lead on.
const ROUNDS_PER_LEAD: usize = 4;

/// The errors a combined call can end with that no server sent.
pub(crate) trait Unanswered {
    /// The round trip ended without a reply for this call.
    fn no_reply(server: &str) -> Self;
    /// No leader answered within the caller's patience.
    fn out_of_patience(server: &str) -> Self;
}

/// What the leader runs: the requests of one round trip, first its own,
/// sent, then one outcome per request read back, in order. The leader
/// sends the next trip's requests before it answers the callers of the
/// one just read, so that the server works on them meanwhile.
pub(crate) trait RoundTrip {
    type Request;
    type Reply;
    type Error;
    /// Requests on the wire, their replies not read yet (or what it takes
    /// to run the whole trip in `receive`).
    type Sent;
    fn send(&self, requests: &[&Self::Request]) -> Self::Sent;
    fn receive(&self, sent: Self::Sent) -> Vec<Result<Self::Reply, Self::Error>>;

    /// Send and receive, for a caller alone.
    fn run(&self, requests: &[&Self::Request]) -> Vec<Result<Self::Reply, Self::Error>> {
        self.receive(self.send(requests))
    }
}

enum Turn<R, E> {
    Queued,
    /// The caller that led before handed the lead to this one.
    Lead,
    /// The outcome, and whether the round trip already recorded its
    /// failure against this call (it records one per failed trip, as the
    /// trip's first request).
    Done(Result<R, E>, bool),
}

/// A queued call.
struct Waiter<Q, R, E> {
    request: Q,
    turn: Mutex<Turn<R, E>>,
    changed: Condvar,
}

impl<Q, R, E> Waiter<Q, R, E> {
    fn finish(&self, turn: Turn<R, E>) {
        *locked(&self.turn) = turn;
        self.changed.notify_one();
    }
}

struct Queue<Q, R, E> {
    waiting: VecDeque<Arc<Waiter<Q, R, E>>>,
    leading: bool,
}

/// Calls of one kind to one server: requests `Q`, replies `R`, errors `E`.
pub(crate) struct Combiner<Q, R, E> {
    /// The server's name, for errors.
    server: String,
    queue: Mutex<Queue<Q, R, E>>,
    /// Calls that rode in another caller's round trip (for stats).
    riders: AtomicU64,
}

impl<Q, R, E: ServerError + Unanswered> Combiner<Q, R, E> {
    pub(crate) fn new(server: String) -> Self {
        Combiner {
            server,
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                leading: false,
            }),
            riders: AtomicU64::new(0),
        }
    }

    /// Run `request`, in a round trip of its own or combined with other
    /// callers'; true with the outcome if the round trip already recorded
    /// this call's failure, if any, in the server's health (each failed
    /// trip records one, for its first request). `patience` bounds the
    /// wait for a leader's reply (a backstop only: every leader finishes
    /// within its I/O timeouts).
    pub(crate) fn call<T>(&self, request: Q, patience: Duration, trip: &T) -> (Result<R, E>, bool)
    where
        T: RoundTrip<Request = Q, Reply = R, Error = E>,
    {
        let mut queue = locked(&self.queue);
        if !queue.leading {
            queue.leading = true;
            drop(queue);
            return (self.lead(&request, trip), true);
        }
        let waiter = Arc::new(Waiter {
            request,
            turn: Mutex::new(Turn::Queued),
            changed: Condvar::new(),
        });
        queue.waiting.push_back(Arc::clone(&waiter));
        drop(queue);
        match self.wait(&waiter, patience) {
            Turn::Done(outcome, recorded) => (outcome, recorded),
            Turn::Lead => (self.lead(&waiter.request, trip), true),
            // Out of patience: a timeout, like any reply that never came.
            Turn::Queued => (Err(E::out_of_patience(&self.server)), false),
        }
    }

    /// Calls so far that rode in another caller's round trip.
    pub(crate) fn riders(&self) -> u64 {
        self.riders.load(Ordering::Relaxed)
    }

    /// Wait until a leader answers or hands over the lead; `Queued` if
    /// `patience` ran out while still queued (then no one will).
    fn wait(&self, waiter: &Arc<Waiter<Q, R, E>>, patience: Duration) -> Turn<R, E> {
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

    /// Run one round trip for `own` and whoever is queued, then a few more
    /// for callers queued meanwhile (this thread would only wait for the
    /// GIL otherwise, and another leader would first have to be woken),
    /// and pass the lead on. Each next trip is sent as soon as the one
    /// before is read, before that one's callers are answered.
    fn lead<T>(&self, own: &Q, trip: &T) -> Result<R, E>
    where
        T: RoundTrip<Request = Q, Reply = R, Error = E>,
    {
        let mut lead = Lead {
            combiner: self,
            riders: self.queued(),
            next: Vec::new(),
            handed_over: false,
        };
        let mut sent = trip.send(&requests(Some(own), &lead.riders));
        let mut mine = None;
        let mut rounds = 1;
        let failed = loop {
            let mut outcomes = trip.receive(sent).into_iter();
            let mut next = || outcomes.next().unwrap_or_else(|| Err(E::no_reply(&self.server)));
            if rounds == 1 {
                mine = Some(next());
            }
            let answers: Vec<Result<R, E>> = lead.riders.iter().map(|_| next()).collect();
            let failed = (mine.as_ref().filter(|_| rounds == 1))
                .and_then(server_failure)
                .or_else(|| answers.iter().find_map(server_failure))
                .map(E::duplicate);
            if failed.is_none() && rounds < ROUNDS_PER_LEAD {
                lead.next = self.queued();
            }
            let next_sent = (!lead.next.is_empty()).then(|| trip.send(&requests(None, &lead.next)));
            self.riders.fetch_add(lead.riders.len() as u64, Ordering::Relaxed);
            // Each failed trip records one failure in the server's health,
            // as its first request's: the leader's own in the first round.
            for (position, (rider, answer)) in lead.riders.drain(..).zip(answers).enumerate() {
                rider.finish(Turn::Done(answer, rounds > 1 && position == 0));
            }
            // (Nothing is sent after a server failure: `next` stayed empty.)
            match next_sent {
                Some(next_sent) => {
                    sent = next_sent;
                    lead.riders = std::mem::take(&mut lead.next);
                    rounds += 1;
                }
                _ => break failed,
            }
        };
        lead.hand_over(failed.as_ref());
        mine.unwrap_or_else(|| Err(E::no_reply(&self.server)))
    }

    /// Callers queued for the next round trip, taken off the queue.
    fn queued(&self) -> Vec<Arc<Waiter<Q, R, E>>> {
        let mut queue = locked(&self.queue);
        let n = queue.waiting.len().min(MOST_PER_TRIP - 1);
        queue.waiting.drain(..n).collect()
    }
}

/// A round trip's requests: the leader's own (if any), then its riders'.
fn requests<'w, Q, R, E>(own: Option<&'w Q>, riders: &'w [Arc<Waiter<Q, R, E>>]) -> Vec<&'w Q> {
    let mut requests = Vec::with_capacity(riders.len() + 1);
    requests.extend(own);
    requests.extend(riders.iter().map(|w| &w.request));
    requests
}

/// The error of `outcome` if the server (or the connection to it) failed:
/// not a refused request, whose reply was read whole.
fn server_failure<R, E: ServerError>(outcome: &Result<R, E>) -> Option<&E> {
    (outcome.as_ref().err()).filter(|error| error.is_server_failure() && !error.keeps_connection())
}

/// The failure of a combined call that its caller records in the server's
/// health (one per failed call, so that its log line counts the calls that
/// failed): a server failure the round trip did not record already.
pub(crate) fn unrecorded<R, E: ServerError>(outcome: &Result<R, E>, recorded: bool) -> Option<&E> {
    server_failure(outcome).filter(|_| !recorded)
}

/// The lead while a caller holds it. Dropped (also by unwinding), it
/// answers any rider still waiting and passes the lead on, so no caller
/// can be left queued behind a leader that is gone.
struct Lead<'a, Q, R, E: ServerError + Unanswered> {
    combiner: &'a Combiner<Q, R, E>,
    /// The callers of the trip being read.
    riders: Vec<Arc<Waiter<Q, R, E>>>,
    /// The callers of the trip sent next.
    next: Vec<Arc<Waiter<Q, R, E>>>,
    handed_over: bool,
}

impl<Q, R, E: ServerError + Unanswered> Lead<'_, Q, R, E> {
    /// Pass the lead to the first caller queued, or give it up. After a
    /// server failure, the queued callers fail with it instead.
    fn hand_over(&mut self, server_failed: Option<&E>) {
        self.handed_over = true;
        let mut queue = locked(&self.combiner.queue);
        if let Some(error) = server_failed {
            for waiter in queue.waiting.drain(..) {
                waiter.finish(Turn::Done(Err(error.duplicate()), false));
            }
        }
        match queue.waiting.pop_front() {
            Some(next) => next.finish(Turn::Lead),
            None => queue.leading = false,
        }
    }
}

impl<Q, R, E: ServerError + Unanswered> Drop for Lead<'_, Q, R, E> {
    fn drop(&mut self) {
        for rider in self.riders.drain(..).chain(self.next.drain(..)) {
            rider.finish(Turn::Done(Err(E::no_reply(&self.combiner.server)), false));
        }
        if !self.handed_over {
            self.hand_over(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    #[derive(Debug, PartialEq)]
    enum TestError {
        Timeout,
        NoReply,
    }

    impl fmt::Display for TestError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl ServerError for TestError {
        fn is_server_failure(&self) -> bool {
            *self == TestError::Timeout
        }
        fn is_refusal(&self) -> bool {
            false
        }
        fn duplicate(&self) -> Self {
            match self {
                TestError::Timeout => TestError::Timeout,
                TestError::NoReply => TestError::NoReply,
            }
        }
        fn keeps_connection(&self) -> bool {
            false
        }
        fn from_io(_: &str, _: std::io::Error) -> Self {
            TestError::Timeout
        }
    }

    impl Unanswered for TestError {
        fn no_reply(_: &str) -> Self {
            TestError::NoReply
        }
        fn out_of_patience(_: &str) -> Self {
            TestError::Timeout
        }
    }

    type Outcome = Result<String, TestError>;
    type TestCombiner = Combiner<String, String, TestError>;

    /// Answers each request with itself, after `delay`, and counts round
    /// trips; requests starting with "fail" fail the whole trip as a dead
    /// server would, "panic" panics.
    struct Echo {
        delay: Duration,
        /// How long sending takes (a trip counts once sent).
        send_delay: Duration,
        trips: AtomicUsize,
        sent: AtomicUsize,
        /// Trips from this one on fail whole, as a server killed then would.
        fail_from: usize,
    }

    impl RoundTrip for Echo {
        type Request = String;
        type Reply = String;
        type Error = TestError;
        /// The trip's number and requests.
        type Sent = (usize, Vec<String>);

        fn send(&self, requests: &[&String]) -> (usize, Vec<String>) {
            thread::sleep(self.send_delay);
            self.sent.fetch_add(requests.len(), Ordering::Relaxed);
            let number = self.trips.fetch_add(1, Ordering::Relaxed);
            (number, requests.iter().map(|request| (*request).clone()).collect())
        }

        fn receive(&self, (number, requests): (usize, Vec<String>)) -> Vec<Outcome> {
            thread::sleep(self.delay);
            if requests.iter().any(|r| r.starts_with("panic")) {
                panic!("round trip panicked");
            }
            requests
                .into_iter()
                .map(
                    |request| match request.starts_with("fail") || number >= self.fail_from {
                        true => Err(TestError::Timeout),
                        false => Ok(request),
                    },
                )
                .collect()
        }
    }

    fn echo(delay_ms: u64) -> Echo {
        Echo {
            delay: Duration::from_millis(delay_ms),
            send_delay: Duration::ZERO,
            trips: AtomicUsize::new(0),
            sent: AtomicUsize::new(0),
            fail_from: usize::MAX,
        }
    }

    const PATIENCE: Duration = Duration::from_secs(5);

    fn combiner() -> TestCombiner {
        Combiner::new("test".into())
    }

    #[test]
    fn every_caller_gets_its_own_reply_and_trips_are_shared() {
        let combiner = combiner();
        let trip = echo(1);
        let calls = 16 * 50;
        thread::scope(|s| {
            for t in 0..16 {
                let (combiner, trip) = (&combiner, &trip);
                s.spawn(move || {
                    for n in 0..50 {
                        let request = format!("k{t}-{n}");
                        let (outcome, _led) = combiner.call(request.clone(), PATIENCE, trip);
                        assert_eq!(outcome.expect("answered"), request, "another caller's reply");
                    }
                });
            }
        });
        let trips = trip.trips.load(Ordering::Relaxed);
        assert!(trips < calls, "{trips} round trips for {calls} calls: none shared");
        assert_eq!(trip.sent.load(Ordering::Relaxed), calls, "each call sent exactly once");
        assert!(combiner.riders() > 0);
        assert!(!locked(&combiner.queue).leading, "the lead was given up");
    }

    #[test]
    fn the_next_trip_is_sent_before_the_callers_of_the_last_are_answered() {
        // Trips of 50 ms sending, then 200 ms for the replies: A leads trip
        // 0 alone (0-250 ms); B queues during it and rides trip 1
        // (250-500 ms); D queues during that (at 375 ms, 125 ms from either
        // end) and rides trip 2. Trip 2 must be sent by the time B is
        // answered, so that the server works on it while the leader
        // answers B.
        let combiner = combiner();
        let trip = Echo {
            send_delay: Duration::from_millis(50),
            ..echo(200)
        };
        thread::scope(|s| {
            let (combiner, trip) = (&combiner, &trip);
            let call = move |name: &'static str, after_ms: u64| {
                s.spawn(move || {
                    thread::sleep(Duration::from_millis(after_ms));
                    let (outcome, _) = combiner.call(name.into(), PATIENCE, trip);
                    assert_eq!(outcome.expect("answered"), name);
                    trip.trips.load(Ordering::Relaxed)
                })
            };
            let a = call("a", 0);
            let b = call("b", 20);
            let d = call("d", 375);
            assert_eq!(b.join().expect("b"), 3, "trips sent when B was answered");
            for caller in [a, d] {
                assert_eq!(caller.join().expect("caller"), 3, "one trip each");
            }
        });
        assert_eq!(combiner.riders(), 2, "B and D rode A's lead");
    }

    #[test]
    fn each_failed_call_is_recorded_exactly_once() {
        // The server dies after some trips. Each failed trip records one
        // failure itself (for its first request, which in a leader's later
        // rounds is a rider's), and every other failed call must be told to
        // record its own: together, exactly one per failed call. Several
        // dying points, so that some fall on a leader's later round.
        for fail_from in 20..32 {
            let combiner = combiner();
            let trip = Echo { fail_from, ..echo(1) };
            let (unrecorded, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
            thread::scope(|s| {
                for t in 0..8 {
                    let (combiner, trip, unrecorded, failed) = (&combiner, &trip, &unrecorded, &failed);
                    s.spawn(move || {
                        for n in 0..40 {
                            let (outcome, recorded) = combiner.call(format!("k{t}-{n}"), PATIENCE, trip);
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
        let combiner = combiner();
        let trip = echo(0);
        for _ in 0..3 {
            let (outcome, recorded) = combiner.call("k".into(), PATIENCE, &trip);
            assert!(recorded, "a lone caller's trip records its own failure");
            assert_eq!(outcome.expect("ok"), "k");
        }
        assert_eq!(combiner.riders(), 0);
        assert_eq!(trip.trips.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_server_failure_fails_the_queued_callers_without_another_trip() {
        let combiner = combiner();
        let trip = echo(50);
        let started = Instant::now();
        let outcomes: Vec<Outcome> = thread::scope(|s| {
            let first = s.spawn(|| combiner.call("fail-leader".into(), PATIENCE, &trip).0);
            thread::sleep(Duration::from_millis(10)); // queue behind its trip
            let rest: Vec<_> = (0..6)
                .map(|n| {
                    let (combiner, trip) = (&combiner, &trip);
                    s.spawn(move || combiner.call(format!("k{n}"), PATIENCE, trip).0)
                })
                .collect();
            std::iter::once(first)
                .chain(rest)
                .map(|h| h.join().expect("no panic"))
                .collect()
        });
        assert!(outcomes.iter().all(|o| *o == Err(TestError::Timeout)), "{outcomes:?}");
        assert_eq!(trip.trips.load(Ordering::Relaxed), 1, "queued callers were not sent");
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_leader_that_panics_answers_its_riders_and_passes_the_lead_on() {
        let combiner = combiner();
        let trip = echo(30);
        thread::scope(|s| {
            let leader = s.spawn(|| combiner.call("panic".into(), PATIENCE, &trip));
            thread::sleep(Duration::from_millis(10));
            let riders: Vec<_> = (0..4)
                .map(|n| {
                    let (combiner, trip) = (&combiner, &trip);
                    s.spawn(move || combiner.call(format!("r{n}"), PATIENCE, trip).0)
                })
                .collect();
            assert!(leader.join().is_err(), "the leader's panic stays its own");
            for rider in riders {
                // Either answered "no reply" by the dropped lead, or led a
                // trip of its own afterwards; never left waiting.
                match rider.join().expect("rider did not panic") {
                    Ok(reply) => assert!(reply.starts_with('r')),
                    Err(TestError::NoReply) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        let (outcome, recorded) = combiner.call("after".into(), PATIENCE, &trip);
        assert!(recorded && outcome.is_ok(), "the lead is free again");
    }

    #[test]
    fn a_caller_out_of_patience_leaves_the_queue() {
        let combiner = combiner();
        let trip = echo(300);
        thread::scope(|s| {
            s.spawn(|| combiner.call("slow".into(), PATIENCE, &trip));
            thread::sleep(Duration::from_millis(20));
            let started = Instant::now();
            let (outcome, recorded) = combiner.call("impatient".into(), Duration::from_millis(50), &trip);
            assert!(!recorded && outcome == Err(TestError::Timeout), "{outcome:?}");
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
