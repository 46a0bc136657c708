//! `racefree._core.PgStore`: the PostgreSQL store for Python.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyDict};

use super::aio::{self, Bytes};
use super::{Write, settings};
use crate::pgstore::{PgStore as Store, Settings, connection_settings, expiry, moment};

/// A pooled PostgreSQL cache on Django's cache table. Values are the
/// pickled bytes (stored base64, as Django does); expiry times are Unix
/// seconds (0: never) on Python's clock (`python_clock`).
#[pyclass(frozen, module = "racefree._core")]
pub struct PgStore {
    store: Arc<Store>,
    lane: aio::Lane,
}

/// `change(value) -> new value`, called with the GIL from a thread that
/// may or may not hold it.
fn changed(change: &Py<PyAny>, current: &[u8]) -> PyResult<Vec<u8>> {
    aio::with_python(|py| change.call1(py, (PyBytes::new(py, current),))?.extract::<Vec<u8>>(py))
}

store_methods! {
    PgStore, store = self.store, now = super::python_clock, lane = self.lane;

    plain {
        /// `params` (Django-style) or `dsn` say where the server is;
        /// `options`: the backend's OPTIONS the store takes, by lowercase name.
        #[new]
        #[pyo3(signature = (table, params, dsn, options))]
        fn new(
            table: String,
            params: HashMap<String, String>,
            dsn: Option<&str>,
            options: &Bound<'_, PyDict>,
        ) -> PyResult<Self> {
            let options: crate::pgstore::Options = settings("PgStore", options)?;
            // No more async calls in flight than pooled connections: the
            // others wait here, not on pool threads, for CONNECT_TIMEOUT.
            let lane = aio::Lane::new(options.pool_size as usize, options.connect_timeout);
            let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
            let (config, tls) = connection_settings(dsn, &params, home)?;
            let store = Store::new(Settings {
                config,
                tls,
                table,
                options,
            })?;
            Ok(PgStore {
                store: Arc::new(store),
                lane,
            })
        }

        /// Statements sent so far: each is one round trip to the server.
        #[getter]
        fn round_trips(&self) -> u64 {
            self.store.round_trips()
        }

        /// Counters (hits, misses, sets, deletes, errors) and the pool's
        /// size, open, idle and in-use connections.
        fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            let (counters, (size, open, idle, connects)) = self.store.stats();
            let stats = super::counters_dict(py, &counters)?;
            stats.set_item("pool_size", size)?;
            stats.set_item("connections", open)?;
            stats.set_item("idle", idle)?;
            stats.set_item("in_use", open.saturating_sub(idle))?;
            stats.set_item("connects", connects)?;
            stats.set_item("round_trips", self.store.round_trips())?;
            Ok(stats)
        }

        /// Connections open now.
        #[getter]
        fn connections(&self) -> u32 {
            self.store.connections()
        }

        /// Close idle connections (e.g. before the database is dropped).
        fn close_idle(&self, py: Python<'_>) {
            py.detach(|| self.store.close_idle());
        }
    }

    calls {
        /// The live value, or None.
        fn get / aget(key: PyBackedStr) -> Option<Bytes> {
            Ok(store.get(&key, moment(now))?.map(Bytes))
        }

        /// `{key: value}` for the live keys, one round trip.
        fn get_many / aget_many(keys: Vec<PyBackedStr>) -> HashMap<String, Bytes> {
            let keys: Vec<&str> = keys.iter().map(|key| &**key).collect();
            let found = store.get_many(&keys, moment(now))?;
            Ok(found.into_iter().map(|(key, value)| (key, Bytes(value))).collect())
        }

        fn has_key / ahas_key(key: PyBackedStr) -> bool {
            Ok(store.contains(&key, moment(now))?)
        }

        fn set / aset(key: PyBackedStr, item: PyBackedBytes, write: Write) -> () {
            Ok(store.set(&key, &item, expiry(write.expires()), moment(now), write.limits())?)
        }

        /// Store only if the key is absent or expired; True if stored.
        fn add / aadd(key: PyBackedStr, item: PyBackedBytes, write: Write) -> bool {
            Ok(store.add(&key, &item, expiry(write.expires()), moment(now), write.limits())?)
        }

        /// Store `(key, value)` pairs with one expiry, one round trip;
        /// returns the keys not stored (none: a failure raises).
        fn set_many / aset_many(items: Vec<(PyBackedStr, PyBackedBytes)>, write: Write) -> Vec<String> {
            let pairs: Vec<(&str, &[u8])> = items.iter().map(|(key, value)| (&**key, &**value)).collect();
            store.set_many(&pairs, expiry(write.expires()), moment(now), write.limits())?;
            Ok(Vec::new())
        }

        /// A new expiry for a live value; True if there was one.
        fn touch / atouch(key: PyBackedStr, write: Write) -> bool {
            Ok(store.touch(&key, expiry(write.expires()), moment(now))?)
        }

        fn delete / adelete(key: PyBackedStr) -> bool {
            Ok(store.delete(&key, moment(now))?)
        }

        /// Delete only while the key holds exactly `item` (compare-and-delete).
        fn delete_if / adelete_if(key: PyBackedStr, item: PyBackedBytes) -> bool {
            Ok(store.delete_if(&key, &item, moment(now))?)
        }

        /// A new expiry only while the key holds exactly `item`.
        fn touch_if / atouch_if(key: PyBackedStr, item: PyBackedBytes, write: Write) -> bool {
            Ok(store.touch_if(&key, &item, expiry(write.expires()), moment(now))?)
        }

        fn delete_many / adelete_many(keys: Vec<PyBackedStr>) -> () {
            let keys: Vec<&str> = keys.iter().map(|key| &**key).collect();
            Ok(store.delete_many(&keys)?)
        }

        /// Atomically replace a live value with `change(value)` (called with
        /// the key locked, in the same transaction); returns the new value,
        /// or None if there was no live value. An exception from `change`
        /// writes nothing and propagates.
        fn update / aupdate(key: PyBackedStr, change: Py<PyAny>) -> Option<Bytes> {
            let outcome = store.update(&key, moment(now), |current| changed(&change, current))?;
            Ok(outcome?.map(Bytes))
        }

        /// Remove every entry.
        fn clear / aclear() -> () {
            Ok(store.clear()?)
        }
    }
}
