//! Awaitables for the async cache methods.
//!
//! An `a*` method checks and converts its arguments with the GIL, creates
//! an `asyncio.Future` on the running loop, and runs the store's blocking
//! call on the blocking pool of a tokio runtime owned by the extension. The
//! event loop thread never waits for I/O, and N awaits run in parallel up
//! to the store's pool size.
//!
//! The path of one call is kept short, since with many tasks on one loop
//! the loop's own work per call is what limits throughput:
//! - the call runs on a pool thread from start to end, with no tokio worker
//!   in between;
//! - its result is queued, and the event loop settles the future itself,
//!   from a reader on a wake-up socket: one wake-up serves every result
//!   that arrived meanwhile, a pool thread never waits for the GIL a busy
//!   loop holds, and a result costs the loop one `set_result`. (Settling
//!   through `call_soon_threadsafe`, as pyo3-async-runtimes does, costs a
//!   self-pipe write, a keyword dict and two more loop callbacks per
//!   result; figures in docs/benchmarks.md.) A loop without `add_reader`
//!   gets its results from a delivery thread instead, which takes the GIL
//!   once per batch and hands each to the loop with
//!   `call_soon_threadsafe`.
//!
//! Interpreter exit: a thread taking the GIL while the interpreter
//! finalizes crashes it, so the delivery thread and callbacks from pool
//! threads pass a gate: an `atexit` hook (registered at import, run before
//! finalization starts) closes the gate and waits for the threads already
//! past it. After that, results are dropped unseen; the store calls
//! themselves still finish, so no pooled connection is left checked out.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use std::sync::{Condvar, Mutex, PoisonError};

use super::errors::CacheTimeoutError;
use crate::fork::PerProcess;
use crate::sync::locked;
use pyo3::exceptions::PyRuntimeError;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyWeakrefReference;
use pyo3::{IntoPyObjectExt, intern};

/// Blocking pool threads: one per call in flight, up to this many.
const BLOCKING_THREADS: usize = 256;
/// How long the exit hook waits for results being delivered.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Steps that may take the GIL from a pool thread, now running.
static IN_PYTHON: AtomicUsize = AtomicUsize::new(0);
static EXITING: AtomicBool = AtomicBool::new(false);

/// The runtime of this process and its delivery thread: a forked child has
/// none of its parent's threads and builds its own. Built with the GIL
/// held, so once per process.
static ENGINE: PerProcess<&'static Engine> = PerProcess::new();

struct Engine {
    runtime: tokio::runtime::Runtime,
    deliveries: Deliveries,
}

type Step = Box<dyn FnOnce() + Send>;

/// Results waiting to be handed to their event loops: each is a short
/// step that needs the GIL (`Completion::complete`).
///
/// Results for a loop that has a reader on `wake` are drained by that loop
/// itself, on its own thread, so they never make a pool thread wait for
/// the GIL the busy loop holds. Others (a loop without `add_reader`) go to
/// a delivery thread, which takes the GIL once per batch.
struct Deliveries {
    on_loops: Mutex<Vec<Step>>,
    wake: (UnixStream, UnixStream),
    for_thread: Mutex<Vec<Step>>,
    arrived: Condvar,
}

/// Which way the results of the calls started on this thread go.
#[derive(Clone, Copy)]
enum Route {
    Loop,
    Thread,
}

fn engine() -> Result<&'static Engine, String> {
    ENGINE.get_or_try(build_engine).map(|engine| **engine)
}

fn build_engine() -> Result<&'static Engine, String> {
    let failed = |what: &str, e: std::io::Error| format!("racefree could not start its async {what}: {e}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("racefree-async")
        .build()
        .map_err(|e| failed("runtime", e))?;
    let wake = UnixStream::pair().map_err(|e| failed("wake-up socket", e))?;
    for end in [&wake.0, &wake.1] {
        end.set_nonblocking(true).map_err(|e| failed("wake-up socket", e))?;
    }
    let deliveries = Deliveries {
        on_loops: Mutex::new(Vec::new()),
        wake,
        for_thread: Mutex::new(Vec::new()),
        arrived: Condvar::new(),
    };
    // Leaked on purpose: dropping a runtime inherited through fork would
    // try to join threads that do not exist in this process.
    let engine: &'static Engine = Box::leak(Box::new(Engine { runtime, deliveries }));
    std::thread::Builder::new()
        .name("racefree-deliver".into())
        .spawn(move || engine.deliveries.run_thread())
        .map_err(|e| failed("delivery thread", e))?;
    Ok(engine)
}

impl Deliveries {
    fn push(&self, route: Route, step: Step) {
        match route {
            Route::Loop => {
                let mut waiting = locked(&self.on_loops);
                waiting.push(step);
                if waiting.len() == 1 {
                    // A full socket already holds a wake-up: nothing lost.
                    let _ = (&self.wake.0).write(&[1]);
                }
            }
            Route::Thread => {
                let mut waiting = locked(&self.for_thread);
                waiting.push(step);
                if waiting.len() == 1 {
                    self.arrived.notify_one();
                }
            }
        }
    }

    /// Run on an event loop's thread by its reader on the wake-up socket.
    fn drain_on_loop(&self) {
        let mut discard = [0u8; 256];
        while matches!((&self.wake.1).read(&mut discard), Ok(n) if n > 0) {}
        let batch = std::mem::take(&mut *locked(&self.on_loops));
        run_steps(batch);
    }

    /// The delivery thread: one GIL acquisition for every result that
    /// arrived while it waited for the GIL.
    fn run_thread(&self) {
        loop {
            {
                let mut waiting = locked(&self.for_thread);
                while waiting.is_empty() {
                    waiting = self.arrived.wait(waiting).unwrap_or_else(PoisonError::into_inner);
                }
            }
            let Some(_passage) = InPython::enter() else {
                // Exiting: never touch Python; the steps' Python references
                // are leaked, as the process is ending.
                std::mem::forget(std::mem::take(&mut *locked(&self.for_thread)));
                continue;
            };
            Python::attach(|_py| run_steps(std::mem::take(&mut *locked(&self.for_thread))));
        }
    }
}

fn run_steps(batch: Vec<Step>) {
    for step in batch {
        // A failing step must not stop the others' delivery.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(step));
    }
}

/// The reader an event loop runs when results wait for it.
#[pyclass(frozen, module = "racefree._core")]
pub(crate) struct LoopDrain {
    engine: &'static Engine,
}

#[pymethods]
impl LoopDrain {
    fn __call__(&self) {
        self.engine.deliveries.drain_on_loop();
    }
}

thread_local! {
    /// The loop of this thread that has a reader on the wake-up socket (a
    /// weak reference), and the engine that socket belongs to.
    static DRAINED_LOOP: RefCell<Option<(Py<PyAny>, usize)>> = const { RefCell::new(None) };
}

/// Where results for `event_loop` go; gives the loop its reader first.
fn route_for(event_loop: &Bound<'_, PyAny>, engine: &'static Engine) -> Route {
    let engine_id = engine as *const Engine as usize;
    DRAINED_LOOP.with_borrow_mut(|drained| {
        if let Some((weak, id)) = drained
            && *id == engine_id
            && weak.bind(event_loop.py()).call0().is_ok_and(|l| l.is(event_loop))
        {
            return Route::Loop;
        }
        let registered = (|| -> PyResult<Py<PyAny>> {
            let weak = PyWeakrefReference::new(event_loop)?.into_any().unbind();
            let drain = LoopDrain { engine };
            event_loop.call_method1("add_reader", (engine.deliveries.wake.1.as_raw_fd(), drain))?;
            Ok(weak)
        })();
        match registered {
            Ok(weak) => {
                *drained = Some((weak, engine_id));
                Route::Loop
            }
            // No weak references or no add_reader (e.g. a proactor loop).
            Err(_) => Route::Thread,
        }
    })
}

/// Passage through the exit gate; None once the interpreter is exiting.
struct InPython;

impl InPython {
    fn enter() -> Option<InPython> {
        IN_PYTHON.fetch_add(1, SeqCst);
        if EXITING.load(SeqCst) {
            IN_PYTHON.fetch_sub(1, SeqCst);
            return None;
        }
        Some(InPython)
    }
}

impl Drop for InPython {
    fn drop(&mut self) {
        IN_PYTHON.fetch_sub(1, SeqCst);
    }
}

/// Registered with `atexit`: close the gate, then wait (without the GIL)
/// for pool threads already in Python to leave it.
#[pyfunction]
pub(crate) fn _close_async_gate(py: Python<'_>) {
    EXITING.store(true, SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + EXIT_WAIT;
        while IN_PYTHON.load(SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// The async calls of one store. At most `limit` of them occupy the
/// blocking pool at a time; the rest wait here, in order, and a pool thread
/// that finishes one takes the next itself (no hand-off through the pool).
/// So a stalled store (a frozen server holding each call until its
/// timeouts) ties up at most `limit` threads, never the whole pool the
/// other stores' calls need. A call that waited longer than `max_wait`
/// fails with a timeout instead of running late, and one that finds
/// `MOST_WAITING` calls already waiting fails at once.
pub(crate) struct Lane {
    limit: usize,
    max_wait: Duration,
    /// Per process: a forked child has none of the parent's running calls.
    state: PerProcess<Mutex<LaneState>>,
}

#[derive(Default)]
struct LaneState {
    running: usize,
    waiting: VecDeque<(Instant, Job)>,
}

/// A call waiting in its lane; `true`: it waited too long, fail it.
type Job = Box<dyn FnOnce(bool) + Send>;

/// Calls that may wait in one lane: far more than a healthy store ever
/// queues, few enough that a stalled one cannot pile up work without end.
const MOST_WAITING: usize = 10_000;

impl Lane {
    pub(crate) fn new(limit: usize, max_wait: Duration) -> Lane {
        Lane {
            limit: limit.max(1),
            max_wait,
            state: PerProcess::new(),
        }
    }

    fn submit(&self, engine: &'static Engine, job: Job) {
        let state = self.state.get(Mutex::default);
        {
            let mut lane = locked(&state);
            if lane.running >= self.limit {
                if lane.waiting.len() >= MOST_WAITING {
                    drop(lane);
                    // Failed as a call that waited too long, at once.
                    job(true);
                } else {
                    lane.waiting.push_back((Instant::now(), job));
                }
                return;
            }
            lane.running += 1;
        }
        let max_wait = self.max_wait;
        engine.runtime.spawn_blocking(move || {
            let mut job = job;
            let mut late = false;
            loop {
                job(late);
                let mut lane = locked(&state);
                match lane.waiting.pop_front() {
                    Some((queued, next)) => {
                        late = queued.elapsed() > max_wait;
                        job = next;
                    }
                    None => {
                        lane.running -= 1;
                        return;
                    }
                }
            }
        });
    }
}

/// An `asyncio.Future` on the running loop for `call`, run on the blocking
/// pool in the store's `lane`. `call` must not touch Python (its result and
/// error are converted with the GIL when the future completes).
pub(crate) fn spawn<'py, T, F>(py: Python<'py>, lane: &Lane, call: F) -> PyResult<Bound<'py, PyAny>>
where
    F: FnOnce() -> PyResult<T> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let engine = engine().map_err(PyRuntimeError::new_err)?;
    let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
    let route = route_for(&event_loop, engine);
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    let completion = Completion {
        future: future.clone().unbind(),
        event_loop: event_loop.unbind(),
        loop_thread: std::thread::current().id(),
    };
    let max_wait = lane.max_wait;
    let job: Job = Box::new(move |late| {
        let outcome = if late {
            Ok(Err(CacheTimeoutError::new_err(format!(
                "racefree: the store's async calls stayed busy: this one waited more than {:.1} s for a \
                 slot, or found {MOST_WAITING} calls waiting already",
                max_wait.as_secs_f64()
            ))))
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
        };
        engine
            .deliveries
            .push(route, Box::new(move || completion.complete(outcome)));
    });
    lane.submit(engine, job);
    Ok(future)
}

/// Where a call's result goes: the asyncio future its caller awaits.
struct Completion {
    future: Py<PyAny>,
    event_loop: Py<PyAny>,
    /// The thread that runs the future's loop.
    loop_thread: std::thread::ThreadId,
}

impl Completion {
    /// Runs with the GIL. On the future's own loop's thread (its reader
    /// drained the queue) the future is settled at once: no cross-thread
    /// wake-up per result. Anywhere else (the delivery thread, or another
    /// loop's reader: loops in several threads share the queue) the
    /// settling is handed to the future's loop, as futures are not
    /// thread-safe.
    fn complete<T>(self, outcome: std::thread::Result<PyResult<T>>)
    where
        T: for<'a> IntoPyObject<'a>,
    {
        Python::attach(|py| {
            let result = match outcome {
                Ok(result) => result.and_then(|value| value.into_py_any(py)),
                Err(panic) => Err(PanicException::new_err(panic_message(&panic))),
            };
            let settled = if std::thread::current().id() == self.loop_thread {
                settle(self.future.bind(py), result)
            } else {
                let settle = Settle {
                    future: self.future,
                    result: Mutex::new(Some(result)),
                };
                self.event_loop
                    .call_method1(py, intern!(py, "call_soon_threadsafe"), (settle,))
                    .map(drop)
            };
            // Only a closed loop refuses: nobody is waiting for the result.
            drop(settled);
        });
    }
}

/// Give `future` its result, unless it was cancelled meanwhile.
fn settle(future: &Bound<'_, PyAny>, result: PyResult<Py<PyAny>>) -> PyResult<()> {
    let py = future.py();
    if future.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    match result {
        Ok(value) => future.call_method1(intern!(py, "set_result"), (value,))?,
        Err(error) => future.call_method1(intern!(py, "set_exception"), (error.into_value(py),))?,
    };
    Ok(())
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    format!("racefree: an async cache call panicked: {text}")
}

/// A result delivered on another thread than its future's loop (the
/// delivery thread, or another loop's reader): run by the future's loop
/// through `call_soon_threadsafe`.
#[pyclass(frozen, module = "racefree._core")]
pub(crate) struct Settle {
    future: Py<PyAny>,
    result: Mutex<Option<PyResult<Py<PyAny>>>>,
}

#[pymethods]
impl Settle {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        match locked(&self.result).take() {
            Some(result) => settle(self.future.bind(py), result),
            None => Ok(()),
        }
    }
}

/// Run Python from a pool thread (e.g. a callback inside a transaction),
/// unless the interpreter is exiting.
pub(crate) fn with_python<R>(f: impl FnOnce(Python<'_>) -> PyResult<R>) -> PyResult<R> {
    match InPython::enter() {
        Some(_passage) => Python::attach(f),
        None => Err(PyRuntimeError::new_err("racefree: the interpreter is exiting")),
    }
}

/// Bytes returned to Python as `bytes`.
pub(crate) struct Bytes(pub Vec<u8>);

impl<'py> IntoPyObject<'py> for Bytes {
    type Target = pyo3::types::PyBytes;
    type Output = Bound<'py, pyo3::types::PyBytes>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(pyo3::types::PyBytes::new(py, &self.0))
    }
}
