//! Awaitables for the async cache methods.
//!
//! An `a*` method checks and converts its arguments with the GIL, then runs
//! the store's blocking call on the blocking pool of a tokio runtime owned
//! by the extension, and returns an `asyncio.Future` (through
//! pyo3-async-runtimes) that completes on the caller's event loop. The
//! event loop thread never waits for I/O, and N awaits run in parallel up
//! to the store's pool size.
//!
//! pyo3-async-runtimes hands each result to `Runtime::spawn_blocking`,
//! which takes the GIL to complete the asyncio future. Here that step runs
//! as a task on the runtime's own worker threads rather than on a second
//! blocking-pool thread: one thread wake-up fewer per call (measured: 20k
//! vs 14k empty calls/s with 200 tasks on one loop).
//!
//! Interpreter exit: a thread taking the GIL while the interpreter
//! finalizes crashes it, so every delivery passes a gate: an `atexit` hook
//! (registered at import, run before finalization starts) closes the gate
//! and waits for the deliveries already past it. After that, results are
//! dropped unseen; the store calls themselves still finish, so no pooled
//! connection is left checked out.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3_async_runtimes::{TaskLocals, generic};

/// Blocking pool threads: one per call in flight, up to this many.
const BLOCKING_THREADS: usize = 256;
/// How long the exit hook waits for results being delivered.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Steps that may take the GIL from a pool thread, now running.
static IN_PYTHON: AtomicUsize = AtomicUsize::new(0);
static EXITING: AtomicBool = AtomicBool::new(false);

/// The runtime of this process, with the fork generation it was built in:
/// a forked child has none of its parent's threads and builds its own.
static RUNTIME: Mutex<Option<(u64, &'static tokio::runtime::Runtime)>> = Mutex::new(None);

fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    let generation = crate::fork::generation();
    let mut current = RUNTIME.lock();
    if let Some((built_in, runtime)) = *current
        && built_in == generation
    {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("racefree-async")
        .build()
        .map_err(|e| format!("racefree could not start its async runtime: {e}"))?;
    // Leaked on purpose: dropping a runtime inherited through fork would
    // try to join threads that do not exist in this process.
    let runtime: &'static _ = Box::leak(Box::new(runtime));
    *current = Some((generation, runtime));
    Ok(runtime)
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

impl generic::Runtime for Racefree {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = tokio::task::JoinHandle<()>;

    // Both are called either by `spawn` below, inside `runtime.enter()`,
    // or from tasks running on the runtime: a runtime context is current.
    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        // pyo3-async-runtimes delivers results this way, with the GIL: a
        // short step, run as a task on a worker (see the module comment).
        let deliver = move || match InPython::enter() {
            Some(_passage) => f(),
            // Exiting: never touch Python. Forgetting `f` also leaves its
            // Python references alone (leaked, as the process is ending).
            None => std::mem::forget(f),
        };
        tokio::task::spawn(async move { deliver() })
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
    let runtime = runtime().map_err(PyRuntimeError::new_err)?;
    let locals = TaskLocals::with_running_loop(py)?;
    let _entered = runtime.enter();
    generic::future_into_py_with_locals::<Racefree, _, T>(py, locals, async move {
        match tokio::task::spawn_blocking(call).await {
            Ok(result) => result,
            Err(error) => Err(PyRuntimeError::new_err(format!(
                "racefree: a cache call failed: {error}"
            ))),
        }
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

/// A result that needs the GIL to become Python objects (or to raise an
/// exception carrying Python attributes).
pub(crate) trait Finish: Send + 'static {
    fn finish(self, py: Python<'_>) -> PyResult<Py<PyAny>>;
}

/// Converts a [`Finish`] when its future completes.
pub(crate) struct Finished<T>(pub T);

impl<'py, T: Finish> IntoPyObject<'py> for Finished<T> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        self.0.finish(py).map(|object| object.into_bound(py))
    }
}
