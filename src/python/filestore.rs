//! `racefree._core.FileStore`: the locking file store for Python.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::PyDict;

use super::aio::Bytes;
use super::{Write, settings, unix_now};
use crate::filestore::{FileStore as Store, Value};

/// A file cache in one directory, safe for any number of threads and
/// processes on this host. Values are `(flags, bytes)`; expiry times are
/// Unix seconds (0: never), and `now` is the caller's clock (Python's
/// `time.time()`, so a test that fakes it fakes it here too).
#[pyclass(frozen, module = "racefree._core")]
pub struct FileStore {
    store: Arc<Store>,
}

type Found = Option<(u32, Bytes)>;

fn found(value: Option<Value>) -> Found {
    value.map(|value| (value.flags, Bytes(value.value)))
}

store_methods! {
    FileStore, store = self.store;

    plain {
        /// `options`: the backend's OPTIONS the store takes, by lowercase name.
        #[new]
        fn new(directory: PathBuf, options: &Bound<'_, PyDict>) -> PyResult<Self> {
            let options = settings("FileStore", options)?;
            Ok(FileStore {
                store: Arc::new(Store::new(directory, options)),
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

        /// Counters: hits, misses, sets, deletes, errors (this process's).
        fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            super::counters_dict(py, &self.store.stats())
        }

        /// Entries in the cache, as counted in shared memory.
        fn count(&self, py: Python<'_>) -> PyResult<i64> {
            Ok(py.detach(|| self.store.count())?)
        }
    }

    calls {
        /// `(flags, value)`, or None if there is no live value.
        fn get / aget(key: PyBackedStr, now: f64) -> Found {
            Ok(found(store.get(key.as_bytes(), now)?))
        }

        fn has_key / ahas_key(key: PyBackedStr, now: f64) -> bool {
            Ok(store.contains(key.as_bytes(), now)?)
        }

        fn set / aset(key: PyBackedStr, flags: u32, value: PyBackedBytes, write: Write) -> () {
            Ok(store.set(key.as_bytes(), flags, &value, write.expires(), write.now(), write.limits())?)
        }

        /// Store only if the key has no live value; True if stored.
        fn add / aadd(key: PyBackedStr, flags: u32, value: PyBackedBytes, write: Write) -> bool {
            Ok(store.add(key.as_bytes(), flags, &value, write.expires(), write.now(), write.limits())?)
        }

        /// A new expiry for a live value; True if there was one.
        fn touch / atouch(key: PyBackedStr, write: Write) -> bool {
            Ok(store.touch(key.as_bytes(), write.expires(), write.now())?)
        }

        fn delete / adelete(key: PyBackedStr, now: f64) -> bool {
            Ok(store.delete(key.as_bytes(), now)?)
        }

        /// Atomic add to a stored integer, keeping its expiry; None if missing.
        fn incr / aincr(key: PyBackedStr, delta: i128, now: f64) -> Option<i128> {
            Ok(store.incr(key.as_bytes(), delta, now)?)
        }

        /// `{key: (flags, value)}` for the live keys.
        fn get_many / aget_many(keys: Vec<PyBackedStr>, now: f64) -> HashMap<PyBackedStr, (u32, Bytes)> {
            let mut result = HashMap::with_capacity(keys.len());
            for key in keys {
                if let Some(item) = found(store.get(key.as_bytes(), now)?) {
                    result.insert(key, item);
                }
            }
            Ok(result)
        }

        /// Store `(key, flags, value)` triples with one expiry; returns the
        /// keys not stored (none: a failure raises).
        fn set_many / aset_many(items: Vec<(PyBackedStr, u32, PyBackedBytes)>, write: Write) -> Vec<String> {
            for (key, flags, value) in &items {
                store.set(key.as_bytes(), *flags, value, write.expires(), write.now(), write.limits())?;
            }
            Ok(Vec::new())
        }

        /// Delete keys (nothing is returned, so the clock does not matter).
        fn delete_many / adelete_many(keys: Vec<PyBackedStr>) -> () {
            let now = unix_now();
            for key in &keys {
                store.delete(key.as_bytes(), now)?;
            }
            Ok(())
        }

        /// Remove every entry; other files in the directory are left alone.
        fn clear / aclear() -> () {
            Ok(store.clear()?)
        }
    }
}
