//! The PyO3 layer: converts between Python objects and the stores' bytes,
//! releases the GIL around every I/O call, and maps store errors to the
//! exceptions in `racefree.exceptions`. Serialization stays in Python.

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::health::{Event, Level};
use pyo3::types::{PyDict, PyModule};

/// A store class's methods, with each store call written once and
/// generated twice: `name` runs its body with the GIL released and returns
/// the result; `aname` runs the same body on the blocking pool and returns
/// an `asyncio.Future` of it (see `aio`). Bodies see the store as `$store`
/// and the caller's clock as `$now` (read by `$clock` with the GIL, before
/// either), return a `PyResult` of a value Python can take (converted with
/// the GIL, and free to raise then), and must not touch Python themselves.
/// Arguments are `PyBacked*` or plain values, so neither form copies them.
/// `plain` holds the class's other methods, as written.
macro_rules! store_methods {
    (
        $class:ident, $store:ident = self.$field:ident, $now:ident = $clock:path, lane = self.$lane:ident;
        plain { $($plain:tt)* }
        calls {
            $(
                $(#[doc = $doc:literal])*
                fn $name:ident / $aname:ident ($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty { $($body:tt)* }
            )*
        }
    ) => {
        #[pymethods]
        impl $class {
            $($plain)*
            $(
                $(#[doc = $doc])*
                fn $name(&self, py: Python<'_>, $($arg: $ty),*) -> PyResult<$ret> {
                    let ($store, $now) = (&*self.$field, $clock(py)?);
                    let _ = &$now; // not every call needs the clock
                    py.detach(|| -> PyResult<$ret> { $($body)* })
                }

                $(#[doc = $doc])*
                fn $aname<'py>(&self, py: Python<'py>, $($arg: $ty),*) -> PyResult<Bound<'py, PyAny>> {
                    let ($store, $now) = (std::sync::Arc::clone(&self.$field), $clock(py)?);
                    let _ = &$now;
                    super::aio::spawn(py, &self.$lane, move || -> PyResult<$ret> { $($body)* })
                }
            )*
        }
    };
}

mod aio;
mod codec;
mod errors;
mod filestore;
mod forwarding;
mod memcached;
mod pgstore;
mod redis;

/// A store's settings from the dict Python's option reading made (see
/// `crate::config`).
fn settings<T: serde::de::DeserializeOwned>(store: &str, given: &Bound<'_, PyDict>) -> PyResult<T> {
    pythonize::depythonize(given.as_any()).map_err(|e| PyValueError::new_err(format!("{store} settings: {e}")))
}

/// What a write tells a store that keeps expiry and culls itself, beside
/// the key and value, as the backend passes it (`_write_args`): expiry in
/// Unix seconds (0: never), MAX_ENTRIES and CULL_FREQUENCY.
#[derive(FromPyObject, Clone, Copy)]
struct Write(f64, i64, i64);

impl Write {
    fn expires(self) -> f64 {
        // Python sends 0.0 for "never" and keeps past expiries above 0;
        // anything without an end (inf, NaN) is never as well, since the
        // entry formats cannot hold it.
        if self.0.is_nan() || self.0 == f64::INFINITY || self.0 == 0.0 {
            0.0
        } else {
            self.0.max(1e-6)
        }
    }

    fn limits(self) -> crate::Limits {
        crate::Limits::new(self.1, self.2)
    }
}

/// `change((flags, value))` -> the new `(flags, value)`, called with the
/// GIL from a thread that may or may not hold it (a store's `update`).
fn changed_item(change: &Py<PyAny>, flags: u32, value: &[u8]) -> PyResult<(u32, Vec<u8>)> {
    aio::with_python(|py| {
        change
            .call1(py, ((flags, pyo3::types::PyBytes::new(py, value)),))?
            .extract::<(u32, Vec<u8>)>(py)
    })
}

/// An `incr` delta: Python's int, read fast when it fits 64 bits.
#[derive(Clone, Copy)]
struct Delta(i128);

impl FromPyObject<'_, '_> for Delta {
    type Error = PyErr;

    fn extract(obj: Borrowed<'_, '_, PyAny>) -> PyResult<Self> {
        match obj.extract::<i64>() {
            Ok(small) => Ok(Delta(small.into())),
            Err(_) => obj.extract::<i128>().map(Delta),
        }
    }
}

/// Python's `time.time()`, looked up at every call: the clock of a store
/// that keeps expiry itself is Python's, so a test that fakes it (mock,
/// freezegun) fakes it for the store too, as it does for the expiry times
/// Django computes.
fn python_clock(py: Python<'_>) -> PyResult<f64> {
    static TIME: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let time = TIME.get_or_try_init(py, || py.import("time").map(Bound::unbind))?;
    time.bind(py).getattr(intern!(py, "time"))?.call0()?.extract()
}

/// The clock of a store whose server keeps expiry (none).
fn server_clock(_: Python<'_>) -> PyResult<()> {
    Ok(())
}

/// A store's operation counters as a new dict, for `stats()`.
fn counters_dict<'py>(py: Python<'py>, counters: &[(&'static str, u64)]) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in counters {
        dict.set_item(*name, *value)?;
    }
    Ok(dict)
}

/// A network store's `stats()`: its counters, its pool settings, and per
/// server (by name) its idle and in-use connections, connections dialed,
/// and calls combined into another caller's round trip.
fn pooled_stats<'py>(
    py: Python<'py>,
    counters: &[(&'static str, u64)],
    pool_size: usize,
    max_connections: Option<usize>,
    servers: Vec<crate::net::ServerPool>,
) -> PyResult<Bound<'py, PyDict>> {
    let stats = counters_dict(py, counters)?;
    stats.set_item("pool_size", pool_size)?;
    stats.set_item("max_connections", max_connections)?;
    let per_server = PyDict::new(py);
    for (name, idle, in_use, connects, combined) in servers {
        let pool = PyDict::new(py);
        pool.set_item("idle", idle)?;
        pool.set_item("in_use", in_use)?;
        pool.set_item("connects", connects)?;
        pool.set_item("combined", combined)?;
        per_server.set_item(name, pool)?;
    }
    stats.set_item("servers", per_server)?;
    Ok(stats)
}

/// Log a server's outage or recovery on the `racefree` logger. Called on
/// the thread that saw it, without the GIL (and no pool lock held), so it
/// attaches; during interpreter shutdown the event is dropped.
fn log_event(event: Event) {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let level = match event.level {
        Level::Info => 20,
        Level::Warning => 30,
    };
    Python::try_attach(|py| {
        let logged = LOGGER
            .get_or_try_init(py, || {
                py.import("logging")?
                    .call_method1("getLogger", ("racefree",))
                    .map(Bound::unbind)
            })
            .and_then(|logger| logger.call_method1(py, "log", (level, "%s", event.message)));
        if let Err(error) = logged {
            error.write_unraisable(py, None);
        }
    });
}

/// Drop pooled connections inherited from the parent process.
#[pyfunction]
fn _after_fork_in_child() {
    crate::fork::after_fork_in_child();
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_SECONDS", crate::config::MAX_SECONDS)?;
    crate::health::set_sink(log_event);
    m.add_class::<memcached::MemcachedClient>()?;
    m.add_class::<filestore::FileStore>()?;
    m.add_class::<pgstore::PgStore>()?;
    m.add_class::<redis::RedisClient>()?;
    m.add_class::<forwarding::ForwardingCore>()?;
    m.add_class::<forwarding::Lease>()?;
    m.add_function(wrap_pyfunction!(codec::compress, m)?)?;
    m.add_function(wrap_pyfunction!(codec::decompress, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(aio::_close_async_gate, m)?)?;
    Ok(())
}
