//! Adaptive spin-then-block waiting for replies.
//!
//! On a server on the same host a reply comes back in tens of
//! microseconds, and putting the thread to sleep and waking it again costs
//! about as much. So a thread first polls its socket without blocking for
//! a short while, then sleeps. It only spins when that pays and is cheap:
//!
//! * the server's replies usually arrive within the spin budget (an EWMA
//!   of observed reply times; a remote server is never spun for), and
//! * at most half the CPUs' worth of calls are in flight in this process,
//!   so spinning never takes the CPU the server or other requests need
//!   (with more busy threads than cores it costs throughput; with one
//!   thread it is most of the gain, see the README).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Calls of this process to its network stores now waiting for a reply:
/// holding a connection, or queued for a combined call (see
/// `net::combine`).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

fn spin_slots() -> usize {
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)))
}

/// Whether more calls are waiting for replies than spinning may take CPUs
/// from: then a spinning thread should sleep instead.
pub(crate) fn crowded() -> bool {
    IN_FLIGHT.load(Ordering::Relaxed) > spin_slots()
}

/// Per-server reply-time estimate and spin limit.
#[derive(Debug)]
pub(crate) struct SpinWait {
    limit_ns: u64,
    /// EWMA of send-to-first-byte times, in nanoseconds (0: no sample).
    reply_ns: AtomicU64,
}

impl SpinWait {
    pub(crate) fn new(limit: Duration) -> SpinWait {
        SpinWait {
            limit_ns: limit.as_nanos().min(u128::from(u64::MAX)) as u64,
            reply_ns: AtomicU64::new(0),
        }
    }

    /// How long to spin for the reply to a request sent now.
    pub(crate) fn budget(&self) -> Option<Duration> {
        self.budget_when(crowded())
    }

    /// The budget, given whether other calls are waiting too.
    fn budget_when(&self, crowded: bool) -> Option<Duration> {
        if self.limit_ns == 0 || crowded {
            return None;
        }
        let typical = self.reply_ns.load(Ordering::Relaxed);
        // No sample yet, or replies usually slower than the limit: sleep.
        if typical == 0 || typical > self.limit_ns {
            return None;
        }
        Some(Duration::from_nanos((typical * 2).min(self.limit_ns * 2)))
    }

    pub(crate) fn record(&self, reply: Duration) {
        let sample = reply.as_nanos().min(u128::from(u64::MAX / 2)) as u64;
        let old = self.reply_ns.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.reply_ns.store(new.max(1), Ordering::Relaxed);
    }
}

/// Counts a call as in flight while alive.
pub(crate) struct InFlight;

impl InFlight {
    pub(crate) fn start() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_only_for_fast_servers() {
        let spin = SpinWait::new(Duration::from_micros(100));
        assert_eq!(spin.budget_when(false), None, "no sample yet");
        for _ in 0..50 {
            spin.record(Duration::from_micros(30));
        }
        let budget = spin.budget_when(false).expect("fast server");
        assert!(budget >= Duration::from_micros(50) && budget <= Duration::from_micros(70));
        for _ in 0..50 {
            spin.record(Duration::from_micros(400));
        }
        assert_eq!(spin.budget_when(false), None, "slow server");
        for _ in 0..50 {
            spin.record(Duration::from_micros(30));
        }
        assert!(spin.budget_when(false).is_some());
        assert_eq!(spin.budget_when(true), None, "others are waiting");
        assert_eq!(SpinWait::new(Duration::ZERO).budget_when(false), None, "disabled");
    }
}
