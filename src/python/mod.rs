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
use pyo3::types::PyDict;

/// A store's operation counters as a new dict, for `stats()`.
fn counters_dict<'py>(py: Python<'py>, counters: &[(&'static str, u64)]) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in counters {
        dict.set_item(*name, *value)?;
    }
    Ok(dict)
}

/// Drop pooled connections inherited from the parent process.
#[pyfunction]
fn _after_fork_in_child() {
    crate::fork::after_fork_in_child();
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<memcached::MemcachedClient>()?;
    m.add_class::<filestore::FileStore>()?;
    m.add_class::<pgstore::PgStore>()?;
    m.add_class::<forwarding::ForwardingCore>()?;
    m.add_class::<forwarding::Lease>()?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(aio::_close_async_gate, m)?)?;
    Ok(())
}
