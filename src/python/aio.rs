//! Awaitables for the async cache methods.
//!
//! An `a*` method checks and converts its arguments with the GIL, then runs
//! the store's blocking call on the blocking pool of a tokio runtime owned
//! by the extension, and returns an `asyncio.Future` (through
//! pyo3-async-runtimes) that completes on the caller's event loop. The
//! event loop thread never waits for I/O, and N awaits run in parallel up
//! to the store's pool size.
//!
//! The path of one call is kept to two thread hand-overs (a worker task
//! per call and a GIL acquisition per result were measurably slower; see
//! the async benchmark in the docs):
//! - the call runs on a pool thread from start to end (`Racefree::spawn`),
//!   with no tokio worker in between;
//! - pyo3-async-runtimes completes each asyncio future with a short step
//!   that needs the GIL (`Racefree::spawn_blocking`). The step is queued,
//!   and the event loop runs it itself, from a reader on a wake-up socket:
//!   a pool thread never waits for the GIL a busy loop holds, and one
//!   wake-up serves every result that arrived meanwhile. A loop without
//!   `add_reader` gets its results from a delivery thread instead, which
//!   takes the GIL once per batch.
//!
//! Interpreter exit: a thread taking the GIL while the interpreter
//! finalizes crashes it, so the delivery thread and callbacks from pool
//! threads pass a gate: an `atexit` hook (registered at import, run before
//! finalization starts) closes the gate and waits for the threads already
//! past it. After that, results are dropped unseen; the store calls
//! themselves still finish, so no pooled connection is left checked out.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::task::Poll;
use std::time::{Duration, Instant};

use std::sync::{Condvar, Mutex, PoisonError};

use crate::fork::PerProcess;
use crate::sync::locked;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;
use pyo3_async_runtimes::{TaskLocals, generic};

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
/// step from pyo3-async-runtimes that needs the GIL.
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

/// The runtime as pyo3-async-runtimes sees it.
struct Racefree;

thread_local! {
    /// Set while a pool thread runs an awaited call's future.
    static RUNNING_CALL: Cell<bool> = const { Cell::new(false) };
    /// Where the result of that call goes, and the engine that takes it.
    static DELIVERY: Cell<Option<(Route, &'static Engine)>> = const { Cell::new(None) };
}

/// Marks this pool thread as running an awaited call, until dropped (a
/// panicking call included).
struct RunningCall;

impl RunningCall {
    fn enter() -> RunningCall {
        RUNNING_CALL.set(true);
        RunningCall
    }
}

impl Drop for RunningCall {
    fn drop(&mut self) {
        RUNNING_CALL.set(false);
    }
}

/// A panic inside an awaited call's future, as pyo3-async-runtimes reports
/// it to Python.
pub(crate) struct Panicked(Box<dyn Any + Send>);

impl generic::JoinError for Panicked {
    fn is_panic(&self) -> bool {
        true
    }

    fn into_panic(self) -> Box<dyn Any + Send> {
        self.0
    }
}

type Handle = Pin<Box<dyn Future<Output = Result<(), Panicked>> + Send>>;

/// Polls `fut`, turning a panic into an error.
fn catching_panics<F: Future<Output = ()> + Send>(fut: F) -> impl Future<Output = Result<(), Panicked>> + Send {
    let mut fut = Box::pin(fut);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(Panicked(panic))),
        }
    })
}

impl generic::Runtime for Racefree {
    type JoinError = Panicked;
    type JoinHandle = Handle;

    // pyo3-async-runtimes runs an awaited call as a future that spawns an
    // inner future (the call) and waits for it. The outer one runs to
    // completion on a thread of the blocking pool; the inner one runs
    // inline on that same thread when awaited. So one thread wake-up
    // starts a call, and no worker thread stands between the event loop
    // and the store.
    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if RUNNING_CALL.get() {
            return Box::pin(catching_panics(fut));
        }
        // Outside a pool thread only from `spawn` below, inside
        // `runtime.enter()`.
        let call = tokio::task::spawn_blocking(move || {
            let _running = RunningCall::enter();
            // Not tokio's block_on: the store's own clients (the postgres
            // crate) start their runtimes inside the call.
            pollster::block_on(fut);
        });
        Box::pin(async move {
            call.await.map_err(|error| match error.try_into_panic() {
                Ok(panic) => Panicked(panic),
                Err(error) => Panicked(Box::new(error.to_string())),
            })
        })
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        // pyo3-async-runtimes completes each asyncio future this way, with
        // the GIL, right after the call on the same pool thread: queued for
        // the caller's loop or the delivery thread (`Deliveries::push`).
        match DELIVERY.get() {
            Some((route, engine)) => engine.deliveries.push(route, Box::new(f)),
            // Not after one of our calls: nowhere to deliver (and never
            // Python to touch here).
            None => std::mem::forget(f),
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

impl generic::ContextExt for Racefree {
    fn scope<F, R>(_locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        // Store calls never call back into Python coroutines, so they need
        // no task-local event loop.
        Box::pin(fut)
    }

    fn get_task_locals() -> Option<TaskLocals> {
        None
    }
}

/// An `asyncio.Future` on the running loop for `call`, run on the blocking
/// pool. `call` must not touch Python (its result and error are converted
/// with the GIL when the future completes).
pub(crate) fn spawn<'py, T, F>(py: Python<'py>, call: F) -> PyResult<Bound<'py, PyAny>>
where
    F: FnOnce() -> PyResult<T> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let engine = engine().map_err(PyRuntimeError::new_err)?;
    let locals = TaskLocals::with_running_loop(py)?;
    let route = route_for(locals.event_loop(py).as_any(), engine);
    let _entered = engine.runtime.enter();
    generic::future_into_py_with_locals::<Racefree, _, T>(py, locals, async move {
        // pyo3-async-runtimes delivers the result from this thread next.
        DELIVERY.set(Some((route, engine)));
        call()
    })
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
