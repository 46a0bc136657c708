//! `racefree._core.ForwardingCore`: the generation-safe target of a
//! forwarding cache, shared by every backend instance of one alias.
//!
//! Targets are Python backend objects built by a Python callable. Waiting
//! for another thread's build happens with the GIL released (the builder
//! needs it), and a replaced target is closed by a Python callable once its
//! last call has returned.

use std::sync::{Arc, Mutex};

use crate::sync::locked;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::forwarding::{Close, Forwarder, Lease as CoreLease};

/// One built target and the settings it was built from.
struct Built {
    target: Py<PyAny>,
    source: Py<PyAny>,
}

#[pyclass(frozen, module = "racefree._core")]
pub struct ForwardingCore {
    core: Forwarder<Built>,
    /// `build() -> (target, source)`.
    build: Py<PyAny>,
    /// `report_failure(exception)`: a rebuild failed, the old target serves.
    report_failure: Py<PyAny>,
}

impl ForwardingCore {
    fn build_target(&self) -> PyResult<Built> {
        Python::attach(|py| {
            let built = self.build.bind(py).call0()?;
            let (target, source): (Py<PyAny>, Py<PyAny>) = built.extract()?;
            Ok(Built { target, source })
        })
    }

    fn acquire(&self, py: Python<'_>) -> PyResult<CoreLease<Built>> {
        if let Some(lease) = self.core.try_lease() {
            return Ok(lease);
        }
        let (lease, failure) = py.detach(|| self.core.lease(|| self.build_target()))?;
        if let Some(error) = failure {
            let reported = self.report_failure.bind(py).call1((error.into_value(py),));
            if let Err(report_error) = reported {
                report_error.write_unraisable(py, None);
            }
        }
        Ok(lease)
    }
}

#[pymethods]
impl ForwardingCore {
    #[new]
    fn new(build: Py<PyAny>, close: Py<PyAny>, report_failure: Py<PyAny>) -> Self {
        let close: Close<Built> = Arc::new(move |built: &Built| {
            Python::attach(|py| {
                // The callable logs its own errors; anything escaping it
                // must not reach the unrelated caller that ended the last call.
                if let Err(error) = close.bind(py).call1((built.target.clone_ref(py),)) {
                    error.write_unraisable(py, None);
                }
            })
        });
        ForwardingCore {
            core: Forwarder::new(close),
            build,
            report_failure,
        }
    }

    /// Call `target.<name>(*args, **kwargs)` on the current target, which
    /// stays open until the call returns.
    #[pyo3(signature = (name, args, kwargs=None))]
    fn call(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyString>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        // Python's **kwargs is a dict even when empty.
        let kwargs = kwargs.filter(|kwargs| !kwargs.is_empty());
        let forward = |built: &Built| {
            built
                .target
                .bind(py)
                .call_method(name, args.clone(), kwargs)
                .map(Bound::unbind)
        };
        if let Some(result) = self.core.with_current(forward) {
            return result;
        }
        let lease = self.acquire(py)?;
        forward(lease.target())
    }

    /// A lease on the current target, for calls that span an `await`:
    /// the target is not closed before `release()`.
    fn lease(&self, py: Python<'_>) -> PyResult<Lease> {
        let lease = self.acquire(py)?;
        let target = lease.target().target.clone_ref(py);
        Ok(Lease {
            target,
            lease: Mutex::new(Some(lease)),
        })
    }

    /// The current target (built first if needed), for attribute access.
    fn target(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.acquire(py)?.target().target.clone_ref(py))
    }

    /// The settings the current target was built from, or None.
    fn source(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.core.try_lease().map(|lease| lease.target().source.clone_ref(py))
    }

    #[getter]
    fn generation(&self) -> u64 {
        self.core.generation()
    }

    /// Build a new target and switch every caller to it, unless the
    /// generation already moved past `from_generation`. Returns whether
    /// this call built; a build error is raised and the old target stays.
    fn reset(&self, py: Python<'_>, from_generation: u64) -> PyResult<bool> {
        py.detach(|| self.core.replace(from_generation, || self.build_target()))
    }

    /// Make the next call build a new target from the settings.
    fn invalidate(&self) {
        self.core.invalidate();
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snapshot = self.core.snapshot();
        let stats = PyDict::new(py);
        stats.set_item("generation", snapshot.generation)?;
        stats.set_item("builds", snapshot.builds)?;
        stats.set_item("build_failures", snapshot.build_failures)?;
        stats.set_item("closes", snapshot.closes)?;
        stats.set_item("in_flight", snapshot.in_flight)?;
        stats.set_item("retiring", snapshot.retiring)?;
        Ok(stats)
    }
}

/// A call in progress on one target (see `ForwardingCore.lease`).
#[pyclass(frozen, module = "racefree._core", name = "ForwardingLease")]
pub struct Lease {
    target: Py<PyAny>,
    lease: Mutex<Option<CoreLease<Built>>>,
}

#[pymethods]
impl Lease {
    #[getter]
    fn target(&self, py: Python<'_>) -> Py<PyAny> {
        self.target.clone_ref(py)
    }

    /// End the call; may close a target that was replaced meanwhile.
    /// Calling it again does nothing.
    fn release(&self) {
        let lease = locked(&self.lease).take();
        drop(lease);
    }

    fn __enter__(&self, py: Python<'_>) -> Py<PyAny> {
        self.target.clone_ref(py)
    }

    fn __exit__(&self, _kind: Py<PyAny>, _value: Py<PyAny>, _traceback: Py<PyAny>) {
        self.release();
    }
}
