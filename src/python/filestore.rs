//! `racefree._core.FileStore`: the locking file store for Python.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::PyDict;

use super::aio::Bytes;
use super::{Delta, Write, settings};
use crate::filestore::{FileStore as Store, Value};

/// A file cache in one directory, safe for any number of threads and
/// processes on this host. Values are `(flags, bytes)`; expiry times are
/// Unix seconds (0: never) on Python's clock (`python_clock`).
#[pyclass(frozen, module = "racefree._core")]
pub struct FileStore {
    store: Arc<Store>,
    lane: super::aio::Lane,
}

/// Async file calls in flight at once per store: enough to keep a disk
/// busy, few enough to leave the blocking pool to the other stores.
const FILE_CALLS_IN_FLIGHT: usize = 32;

/// A value as the backend stores it: `(flags, bytes)`.
type Item = (u32, PyBackedBytes);
type Found = Option<(u32, Bytes)>;

fn found(value: Option<Value>) -> Found {
    value.map(|value| (value.flags, Bytes(value.value)))
}

store_methods! {
    FileStore, store = self.store, now = super::python_clock, lane = self.lane;

    plain {
        /// `options`: the backend's OPTIONS the store takes, by lowercase name.
        #[new]
        fn new(directory: PathBuf, options: &Bound<'_, PyDict>) -> PyResult<Self> {
            let options: crate::filestore::Options = settings("FileStore", options)?;
            let lane = super::aio::Lane::new(FILE_CALLS_IN_FLIGHT, options.lock_timeout);
            Ok(FileStore {
                store: Arc::new(Store::new(directory, options)),
                lane,
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

        /// PermissionError if the directory is another user's or writable
        /// by others (every call checks this before its first use).
        fn check_directory(&self, py: Python<'_>) -> PyResult<()> {
            Ok(py.detach(|| self.store.check_root())?)
        }

        /// Entries in the cache, as counted in shared memory.
        fn count(&self, py: Python<'_>) -> PyResult<i64> {
            Ok(py.detach(|| self.store.count())?)
        }
    }

    calls {
        /// `(flags, value)`, or None if there is no live value.
        fn get / aget(key: PyBackedStr) -> Found {
            Ok(found(store.get(key.as_bytes(), now)?))
        }

        fn has_key / ahas_key(key: PyBackedStr) -> bool {
            Ok(store.contains(key.as_bytes(), now)?)
        }

        fn set / aset(key: PyBackedStr, item: Item, write: Write) -> () {
            let (flags, value) = &item;
            Ok(store.set(key.as_bytes(), *flags, value, write.expires(), now, write.limits())?)
        }

        /// Store only if the key has no live value; True if stored.
        fn add / aadd(key: PyBackedStr, item: Item, write: Write) -> bool {
            let (flags, value) = &item;
            Ok(store.add(key.as_bytes(), *flags, value, write.expires(), now, write.limits())?)
        }

        /// A new expiry for a live value; True if there was one.
        fn touch / atouch(key: PyBackedStr, write: Write) -> bool {
            Ok(store.touch(key.as_bytes(), write.expires(), now)?)
        }

        fn delete / adelete(key: PyBackedStr) -> bool {
            Ok(store.delete(key.as_bytes(), now)?)
        }

        /// Atomic add to a stored integer, keeping its expiry; None if missing.
        fn incr / aincr(key: PyBackedStr, delta: Delta) -> Option<i128> {
            Ok(store.incr(key.as_bytes(), delta.0, now)?)
        }

        /// `{key: (flags, value)}` for the live keys.
        fn get_many / aget_many(keys: Vec<PyBackedStr>) -> HashMap<String, (u32, Bytes)> {
            let mut result = HashMap::with_capacity(keys.len());
            for key in &keys {
                if let Some(item) = found(store.get(key.as_bytes(), now)?) {
                    result.insert(key.to_string(), item);
                }
            }
            Ok(result)
        }

        /// Store `(key, (flags, value))` pairs with one expiry; returns the
        /// keys not stored (none: a failure raises).
        fn set_many / aset_many(items: Vec<(PyBackedStr, Item)>, write: Write) -> Vec<String> {
            for (key, (flags, value)) in &items {
                store.set(key.as_bytes(), *flags, value, write.expires(), now, write.limits())?;
            }
            Ok(Vec::new())
        }

        /// Read-modify-write under the shard's lock, keeping the expiry:
        /// `change((flags, value))` returns the new `(flags, value)`, which
        /// is returned; None if there was no live value. An exception from
        /// `change` writes nothing and propagates.
        fn update / aupdate(key: PyBackedStr, change: Py<PyAny>) -> Found {
            let outcome = store.update(key.as_bytes(), now, |flags, value| super::changed_item(&change, flags, value))?;
            Ok(found(outcome?))
        }

        /// Delete only while the key holds exactly `item` (compare-and-delete).
        fn delete_if / adelete_if(key: PyBackedStr, item: Item) -> bool {
            Ok(store.delete_if(key.as_bytes(), item.0, &item.1, now)?)
        }

        /// A new expiry only while the key holds exactly `item`.
        fn touch_if / atouch_if(key: PyBackedStr, item: Item, write: Write) -> bool {
            Ok(store.touch_if(key.as_bytes(), item.0, &item.1, write.expires(), now)?)
        }

        fn delete_many / adelete_many(keys: Vec<PyBackedStr>) -> () {
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
