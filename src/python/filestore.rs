//! `racefree._core.FileStore`: the locking file store for Python.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::aio::{self, Bytes};
use crate::filestore::{Error, FileStore as Store, Limits};

pyo3::import_exception!(racefree.exceptions, LockTimeoutError);

/// A file cache in one directory, safe for any number of threads and
/// processes on this host. Values are `(flags, bytes)`; expiry times are
/// Unix seconds (0: never), and `now` is the caller's clock.
#[pyclass(frozen, module = "racefree._core")]
pub struct FileStore {
    store: Arc<Store>,
}

fn to_pyerr(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::Io { path, source, .. } => match source.raw_os_error() {
            // OSError(errno, ...) becomes the matching subclass
            // (PermissionError, FileNotFoundError, ...).
            Some(errno) => PyOSError::new_err((errno, message, path)),
            None => PyOSError::new_err(message),
        },
        Error::LockTimeout { .. } => LockTimeoutError::new_err(message),
        Error::NotAnInteger => PyTypeError::new_err(message),
        Error::Overflow => PyOverflowError::new_err(message),
    }
}

#[pymethods]
impl FileStore {
    #[new]
    #[pyo3(signature = (directory, *, lock_timeout=5.0))]
    fn new(directory: PathBuf, lock_timeout: f64) -> PyResult<Self> {
        if !(lock_timeout > 0.0 && lock_timeout <= 86_400.0) {
            return Err(PyValueError::new_err(format!(
                "lock_timeout must be more than 0 and at most 86400 seconds, not {lock_timeout}"
            )));
        }
        Ok(FileStore {
            store: Arc::new(Store::new(directory, Duration::from_secs_f64(lock_timeout))),
        })
    }

    #[getter]
    fn directory(&self) -> PathBuf {
        self.store.root().to_owned()
    }

    /// The file that holds `key`.
    fn path_for(&self, key: &str) -> PathBuf {
        self.store.entry_path(key.as_bytes())
    }

    fn get<'py>(&self, py: Python<'py>, key: &str, now: f64) -> PyResult<Option<(u32, Bound<'py, PyBytes>)>> {
        let found = py.detach(|| self.store.get(key.as_bytes(), now)).map_err(to_pyerr)?;
        Ok(found.map(|v| (v.flags, PyBytes::new(py, &v.value))))
    }

    fn has_key(&self, py: Python<'_>, key: &str, now: f64) -> PyResult<bool> {
        py.detach(|| self.store.contains(key.as_bytes(), now)).map_err(to_pyerr)
    }

    #[allow(clippy::too_many_arguments)]
    fn set(
        &self,
        py: Python<'_>,
        key: &str,
        flags: u32,
        value: &[u8],
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<()> {
        let limits = Limits::new(max_entries, cull_frequency);
        py.detach(|| self.store.set(key.as_bytes(), flags, value, expires, now, limits))
            .map_err(to_pyerr)
    }

    /// Store only if the key has no live value; True if stored.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        py: Python<'_>,
        key: &str,
        flags: u32,
        value: &[u8],
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<bool> {
        let limits = Limits::new(max_entries, cull_frequency);
        py.detach(|| self.store.add(key.as_bytes(), flags, value, expires, now, limits))
            .map_err(to_pyerr)
    }

    fn touch(&self, py: Python<'_>, key: &str, expires: f64, now: f64) -> PyResult<bool> {
        py.detach(|| self.store.touch(key.as_bytes(), expires, now))
            .map_err(to_pyerr)
    }

    fn delete(&self, py: Python<'_>, key: &str, now: f64) -> PyResult<bool> {
        py.detach(|| self.store.delete(key.as_bytes(), now)).map_err(to_pyerr)
    }

    /// Atomic add to a stored integer, keeping its expiry; None if missing.
    fn incr(&self, py: Python<'_>, key: &str, delta: i128, now: f64) -> PyResult<Option<i128>> {
        py.detach(|| self.store.incr(key.as_bytes(), delta, now))
            .map_err(to_pyerr)
    }

    /// `{key: (flags, value)}` for the live keys; the dict's keys are the
    /// given key objects.
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Bound<'py, PyString>>,
        now: f64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let texts = keys.iter().map(|k| k.to_str()).collect::<PyResult<Vec<&str>>>()?;
        let found = py
            .detach(|| {
                texts
                    .iter()
                    .map(|key| self.store.get(key.as_bytes(), now))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(to_pyerr)?;
        let result = PyDict::new(py);
        for (key, value) in keys.iter().zip(found) {
            if let Some(value) = value {
                result.set_item(key, (value.flags, PyBytes::new(py, &value.value)))?;
            }
        }
        Ok(result)
    }

    /// Store `(key, flags, value)` triples with one expiry.
    fn set_many(
        &self,
        py: Python<'_>,
        items: Vec<(Bound<'_, PyString>, u32, Bound<'_, PyBytes>)>,
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<()> {
        let limits = Limits::new(max_entries, cull_frequency);
        let entries = items
            .iter()
            .map(|(key, flags, value)| Ok((key.to_str()?, *flags, value.as_bytes())))
            .collect::<PyResult<Vec<_>>>()?;
        py.detach(|| {
            entries
                .iter()
                .try_for_each(|(key, flags, value)| self.store.set(key.as_bytes(), *flags, value, expires, now, limits))
        })
        .map_err(to_pyerr)
    }

    fn delete_many(&self, py: Python<'_>, keys: Vec<Bound<'_, PyString>>, now: f64) -> PyResult<()> {
        let texts = keys.iter().map(|k| k.to_str()).collect::<PyResult<Vec<&str>>>()?;
        py.detach(|| {
            texts
                .iter()
                .try_for_each(|key| self.store.delete(key.as_bytes(), now).map(drop))
        })
        .map_err(to_pyerr)
    }

    /// Remove every entry; other files in the directory are left alone.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.store.clear()).map_err(to_pyerr)
    }

    // The async versions: the same calls on the blocking pool, each
    // returning an asyncio.Future (see aio.rs).

    fn aget<'py>(&self, py: Python<'py>, key: String, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || {
            let found = store.get(key.as_bytes(), now).map_err(to_pyerr)?;
            Ok(found.map(|v| (v.flags, Bytes(v.value))))
        })
    }

    fn ahas_key<'py>(&self, py: Python<'py>, key: String, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || store.contains(key.as_bytes(), now).map_err(to_pyerr))
    }

    #[allow(clippy::too_many_arguments)]
    fn aset<'py>(
        &self,
        py: Python<'py>,
        key: String,
        flags: u32,
        value: Vec<u8>,
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (store, limits) = (Arc::clone(&self.store), Limits::new(max_entries, cull_frequency));
        aio::spawn(py, move || {
            store
                .set(key.as_bytes(), flags, &value, expires, now, limits)
                .map_err(to_pyerr)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn aadd<'py>(
        &self,
        py: Python<'py>,
        key: String,
        flags: u32,
        value: Vec<u8>,
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (store, limits) = (Arc::clone(&self.store), Limits::new(max_entries, cull_frequency));
        aio::spawn(py, move || {
            store
                .add(key.as_bytes(), flags, &value, expires, now, limits)
                .map_err(to_pyerr)
        })
    }

    fn atouch<'py>(&self, py: Python<'py>, key: String, expires: f64, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || store.touch(key.as_bytes(), expires, now).map_err(to_pyerr))
    }

    fn adelete<'py>(&self, py: Python<'py>, key: String, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || store.delete(key.as_bytes(), now).map_err(to_pyerr))
    }

    fn aincr<'py>(&self, py: Python<'py>, key: String, delta: i128, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || store.incr(key.as_bytes(), delta, now).map_err(to_pyerr))
    }

    /// `{key: (flags, value)}` for the live keys.
    fn aget_many<'py>(&self, py: Python<'py>, keys: Vec<String>, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || {
            let mut found = HashMap::new();
            for key in keys {
                if let Some(value) = store.get(key.as_bytes(), now).map_err(to_pyerr)? {
                    found.insert(key, (value.flags, Bytes(value.value)));
                }
            }
            Ok(found)
        })
    }

    fn aset_many<'py>(
        &self,
        py: Python<'py>,
        items: Vec<(String, u32, Vec<u8>)>,
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (store, limits) = (Arc::clone(&self.store), Limits::new(max_entries, cull_frequency));
        aio::spawn(py, move || {
            items
                .iter()
                .try_for_each(|(key, flags, value)| store.set(key.as_bytes(), *flags, value, expires, now, limits))
                .map_err(to_pyerr)
        })
    }

    fn adelete_many<'py>(&self, py: Python<'py>, keys: Vec<String>, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || {
            keys.iter()
                .try_for_each(|key| store.delete(key.as_bytes(), now).map(drop))
                .map_err(to_pyerr)
        })
    }

    fn aclear<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || store.clear().map_err(to_pyerr))
    }

    /// Counters: hits, misses, sets, deletes, errors (this process's).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        super::counters_dict(py, &self.store.stats())
    }

    /// Entries in the cache, as counted in shared memory.
    fn count(&self, py: Python<'_>) -> PyResult<i64> {
        py.detach(|| self.store.count()).map_err(to_pyerr)
    }
}
