//! The PyO3 layer: converts between Python objects and the stores' bytes,
//! releases the GIL around every I/O call, and maps store errors to the
//! exceptions in `racefree.exceptions`. Serialization stays in Python.

mod aio;
mod errors;
mod filestore;
mod forwarding;
mod memcached;
mod pgstore;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use crate::health::{Event, Level};

/// A store's operation counters as a new dict, for `stats()`.
fn counters_dict<'py>(py: Python<'py>, counters: &[(&'static str, u64)]) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in counters {
        dict.set_item(*name, *value)?;
    }
    Ok(dict)
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
    crate::health::set_sink(log_event);
    m.add_class::<memcached::MemcachedClient>()?;
    m.add_class::<filestore::FileStore>()?;
    m.add_class::<pgstore::PgStore>()?;
    m.add_class::<forwarding::ForwardingCore>()?;
    m.add_class::<forwarding::Lease>()?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(aio::_close_async_gate, m)?)?;
    Ok(())
}
