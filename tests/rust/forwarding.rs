//! The forwarding core under real threads: leases, swaps, closes, builds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use racefree::forwarding::{Close, Forwarder};

/// A target that knows when it is closed and counts misuse.
#[derive(Default)]
struct Target {
    id: usize,
    closed: AtomicBool,
    closes: AtomicUsize,
    calls_after_close: AtomicUsize,
    calls: AtomicUsize,
}

impl Target {
    fn call(&self) {
        if self.closed.load(SeqCst) {
            self.calls_after_close.fetch_add(1, SeqCst);
        }
        self.calls.fetch_add(1, SeqCst);
    }
}

type Shared = Arc<Target>;

fn closing() -> Close<Shared> {
    Arc::new(|target: &Shared| {
        target.closes.fetch_add(1, SeqCst);
        target.closed.store(true, SeqCst);
    })
}

/// Builds targets with increasing ids and remembers every one.
#[derive(Default, Clone)]
struct Factory {
    built: Arc<std::sync::Mutex<Vec<Shared>>>,
    builds: Arc<AtomicUsize>,
}

impl Factory {
    fn build(&self) -> Result<Shared, String> {
        let id = self.builds.fetch_add(1, SeqCst);
        let target = Arc::new(Target {
            id,
            ..Target::default()
        });
        self.built.lock().unwrap().push(Arc::clone(&target));
        Ok(target)
    }

    fn slow_build(&self) -> Result<Shared, String> {
        thread::sleep(Duration::from_millis(50));
        self.build()
    }
}

#[test]
fn first_call_builds_once_and_later_calls_reuse_the_target() {
    let factory = Factory::default();
    let forwarder = Forwarder::new(closing());
    assert!(forwarder.try_lease().is_none());
    let (lease, failure) = forwarder.lease(|| factory.build()).unwrap();
    assert!(failure.is_none());
    assert_eq!(lease.target().id, 0);
    assert_eq!(lease.generation(), 1);
    drop(lease);
    let (again, _) = forwarder.lease(|| factory.build()).unwrap();
    assert_eq!(again.target().id, 0);
    assert_eq!(factory.builds.load(SeqCst), 1);
}

#[test]
fn a_call_in_flight_finishes_on_the_old_target_which_closes_after_it() {
    let factory = Factory::default();
    let forwarder = Forwarder::new(closing());
    let (old_call, _) = forwarder.lease(|| factory.build()).unwrap();
    assert!(forwarder.replace(1, || factory.build()).unwrap());
    let old = Arc::clone(old_call.target());
    assert_eq!(old.id, 0);
    assert!(!old.closed.load(SeqCst), "closed while a call was still on it");
    let (new_call, _) = forwarder.lease(|| factory.build()).unwrap();
    assert_eq!(new_call.target().id, 1);
    drop(old_call);
    assert_eq!(old.closes.load(SeqCst), 1);
    assert_eq!(new_call.target().closes.load(SeqCst), 0);
    assert_eq!(forwarder.snapshot().closes, 1);
    assert_eq!(forwarder.snapshot().retiring, 0);
}

#[test]
fn a_replaced_target_without_calls_closes_at_once() {
    let factory = Factory::default();
    let forwarder = Forwarder::new(closing());
    drop(forwarder.lease(|| factory.build()).unwrap());
    forwarder.replace(1, || factory.build()).unwrap();
    assert_eq!(factory.built.lock().unwrap()[0].closes.load(SeqCst), 1);
}

#[test]
fn threads_calling_while_another_resets_a_thousand_times() {
    let factory = Factory::default();
    let forwarder = Arc::new(Forwarder::new(closing()));
    drop(forwarder.lease(|| factory.build()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let (forwarder, factory, stop) = (Arc::clone(&forwarder), factory.clone(), Arc::clone(&stop));
            thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(SeqCst) {
                    let (lease, failure) = forwarder.lease(|| factory.build()).unwrap();
                    assert!(failure.is_none());
                    lease.target().call();
                    thread::yield_now();
                    lease.target().call();
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for _ in 0..1000 {
        let generation = forwarder.generation();
        forwarder.replace(generation, || factory.build()).unwrap();
        thread::sleep(Duration::from_micros(100));
    }
    stop.store(true, SeqCst);
    let calls: u64 = callers.into_iter().map(|caller| caller.join().unwrap()).sum();
    assert!(calls > 0);
    let built = factory.built.lock().unwrap();
    assert_eq!(built.len(), 1001, "the first target and one per reset");
    let (retired, current) = built.split_at(built.len() - 1);
    for target in retired {
        assert_eq!(
            target.closes.load(SeqCst),
            1,
            "target {} closed {} times",
            target.id,
            target.closes.load(SeqCst)
        );
        assert_eq!(
            target.calls_after_close.load(SeqCst),
            0,
            "target {} used after close",
            target.id
        );
    }
    assert_eq!(current[0].closes.load(SeqCst), 0);
    assert_eq!(forwarder.snapshot().retiring, 0);
    assert_eq!(forwarder.snapshot().closes as usize, retired.len());
}

#[test]
fn sixteen_resets_of_the_same_generation_build_once() {
    let factory = Factory::default();
    let forwarder = Arc::new(Forwarder::new(closing()));
    drop(forwarder.lease(|| factory.build()).unwrap());
    let generation = forwarder.generation();
    let barrier = Arc::new(Barrier::new(16));
    let resets: Vec<_> = (0..16)
        .map(|_| {
            let (forwarder, factory, barrier) = (Arc::clone(&forwarder), factory.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                forwarder.replace(generation, || factory.slow_build()).unwrap()
            })
        })
        .collect();
    let built: usize = resets.into_iter().map(|reset| usize::from(reset.join().unwrap())).sum();
    assert_eq!(built, 1);
    assert_eq!(factory.builds.load(SeqCst), 2, "the first target and one replacement");
    assert_eq!(forwarder.generation(), generation + 1);
}

#[test]
fn an_invalidated_target_is_rebuilt_once_however_many_threads_call() {
    let factory = Factory::default();
    let forwarder = Arc::new(Forwarder::new(closing()));
    drop(forwarder.lease(|| factory.build()).unwrap());
    forwarder.invalidate();
    let barrier = Arc::new(Barrier::new(16));
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let (forwarder, factory, barrier) = (Arc::clone(&forwarder), factory.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                let (lease, _) = forwarder.lease(|| factory.slow_build()).unwrap();
                lease.target().id
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(
            caller.join().unwrap(),
            1,
            "every caller waits for and uses the new target"
        );
    }
    assert_eq!(factory.builds.load(SeqCst), 2);
}

#[test]
fn a_failed_reset_keeps_the_old_target_serving() {
    let factory = Factory::default();
    let forwarder = Forwarder::new(closing());
    drop(forwarder.lease(|| factory.build()).unwrap());
    let error = forwarder
        .replace(1, || Err::<Shared, _>("unreachable".to_string()))
        .unwrap_err();
    assert_eq!(error, "unreachable");
    let (lease, _) = forwarder.lease(|| factory.build()).unwrap();
    assert_eq!(lease.target().id, 0);
    assert_eq!(lease.target().closes.load(SeqCst), 0);
    assert_eq!(forwarder.generation(), 1);
    assert_eq!(forwarder.snapshot().build_failures, 1);
}

#[test]
fn a_failed_rebuild_after_invalidate_keeps_the_old_target_and_is_tried_once() {
    let factory = Factory::default();
    let forwarder = Arc::new(Forwarder::new(closing()));
    drop(forwarder.lease(|| factory.build()).unwrap());
    forwarder.invalidate();
    let attempts = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (forwarder, attempts, barrier) = (Arc::clone(&forwarder), Arc::clone(&attempts), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                let (lease, failure) = forwarder
                    .lease(|| {
                        attempts.fetch_add(1, SeqCst);
                        thread::sleep(Duration::from_millis(50));
                        Err::<Shared, _>("bad settings".to_string())
                    })
                    .unwrap();
                (lease.target().id, failure.is_some())
            })
        })
        .collect();
    let results: Vec<_> = callers.into_iter().map(|caller| caller.join().unwrap()).collect();
    assert!(results.iter().all(|(id, _)| *id == 0), "the old target keeps serving");
    assert_eq!(
        results.iter().filter(|(_, failed)| *failed).count(),
        1,
        "one caller saw the failure"
    );
    assert_eq!(attempts.load(SeqCst), 1);
}

#[test]
fn the_first_build_failing_is_an_error_and_the_next_call_tries_again() {
    let factory = Factory::default();
    let forwarder = Forwarder::new(closing());
    assert!(
        forwarder
            .lease(|| Err::<Shared, _>("no such alias".to_string()))
            .is_err()
    );
    let (lease, failure) = forwarder.lease(|| factory.build()).unwrap();
    assert!(failure.is_none());
    assert_eq!(lease.target().id, 0);
}

#[test]
fn dropping_the_forwarder_closes_its_target_after_the_last_call() {
    let factory = Factory::default();
    let forwarder = Forwarder::new(closing());
    let (lease, _) = forwarder.lease(|| factory.build()).unwrap();
    drop(forwarder);
    let target = Arc::clone(lease.target());
    assert_eq!(target.closes.load(SeqCst), 0);
    drop(lease);
    assert_eq!(target.closes.load(SeqCst), 1);
}
