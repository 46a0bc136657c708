//! `racefree._core.MemcachedClient`: the memcached store for Python.

use std::sync::Arc;

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyDict, PyList};

use super::aio;
use super::errors::{batch_failure, memcached_key};
use super::{Delta, settings};
use crate::memcached::{BatchFailure, Client, Entry, Item, StoreMode, StoreOutcome, Turn};

/// A pooled, thread-safe memcached client. Values are `(flags, bytes)`
/// pairs; the flags are pymemcache's serializer flags, set in Python.
#[pyclass(frozen, module = "racefree._core")]
pub struct MemcachedClient {
    client: Arc<Client>,
    lane: aio::Lane,
}

fn memcached_keys(keys: &[PyBackedStr]) -> PyResult<Vec<&[u8]>> {
    keys.iter().map(|key| memcached_key(key)).collect()
}

/// A batch call's outcome: its result, or its first server failure raised
/// with `failed_keys` (and for `get_many`, `partial`: what the healthy
/// servers returned) attached. Converted with the GIL.
struct Batch<T> {
    keys: Vec<PyBackedStr>,
    result: T,
    failures: Vec<BatchFailure>,
    /// Keys not stored for another reason (too large), also failed.
    also_failed: Vec<usize>,
    /// `set_many`'s values, released with the GIL (when this is converted)
    /// rather than on a thread without it.
    _values: Vec<Value>,
}

/// A value as the backend stores it: `(flags, bytes)`.
type Value = (u32, PyBackedBytes);

impl<T> Batch<T> {
    fn new(keys: Vec<PyBackedStr>, result: T, failures: Vec<BatchFailure>) -> Self {
        Batch {
            keys,
            result,
            failures,
            also_failed: Vec::new(),
            _values: Vec::new(),
        }
    }

    /// The keys at `indexes`, as a Python list.
    fn key_list<'py>(&self, py: Python<'py>, indexes: impl Iterator<Item = usize>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, indexes.map(|index| &self.keys[index]))
    }

    /// `result`, or the first failure with its attributes.
    fn finish<'py>(mut self, py: Python<'py>, result: Bound<'py, PyAny>, partial: bool) -> PyResult<Bound<'py, PyAny>> {
        if self.failures.is_empty() {
            return Ok(result);
        }
        let failed = self.failures.iter().flat_map(|f| f.indexes.iter().copied());
        let failed = self.key_list(py, failed.chain(self.also_failed.iter().copied()))?;
        let error = PyErr::from(self.failures.remove(0).error);
        Err(batch_failure(py, error, failed, partial.then_some(result)))
    }
}

/// `get_many`: `{key: (flags, value)}` for the keys found.
impl<'py> IntoPyObject<'py> for Batch<Vec<Option<Item>>> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let found = PyDict::new(py);
        for (key, item) in self.keys.iter().zip(std::mem::take(&mut self.result)) {
            if let Some(item) = item {
                found.set_item(key, (item.flags, PyBytes::new(py, &item.value)))?;
            }
        }
        self.finish(py, found.into_any(), true)
    }
}

/// `set_many`: the keys not stored (over the item size limit; their old
/// values are deleted).
impl<'py> IntoPyObject<'py> for Batch<Vec<StoreOutcome>> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let too_large = self.result.iter().enumerate();
        let too_large: Vec<usize> = too_large
            .filter(|(_, outcome)| **outcome == StoreOutcome::TooLarge)
            .map(|(index, _)| index)
            .collect();
        let not_stored = self.key_list(py, too_large.iter().copied())?.into_any();
        self.also_failed = too_large;
        self.finish(py, not_stored, false)
    }
}

/// `delete_many`: None.
impl<'py> IntoPyObject<'py> for Batch<()> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.finish(py, py.None().into_bound(py), false)
    }
}

/// Memcached's unsigned delta for Python's signed one.
fn magnitude(delta: i128) -> PyResult<u64> {
    u64::try_from(delta.unsigned_abs())
        .map_err(|_| PyOverflowError::new_err("memcached counts with deltas below 2**64"))
}

store_methods! {
    MemcachedClient, client = self.client, _now = super::server_clock, lane = self.lane;

    plain {
        /// `config`: the backend's OPTIONS the client takes, by lowercase name.
        #[new]
        fn new(servers: Vec<String>, config: &Bound<'_, PyDict>) -> PyResult<Self> {
            let config: crate::memcached::Config = settings("MemcachedClient", config)?;
            // As many async calls in flight per server as it may have
            // connections (at least a few); a call may wait its own
            // budget for one of them.
            let per_server = config.max_connections.unwrap_or(config.pool_size).max(4);
            let lane = aio::Lane::new(per_server * servers.len(), config.connect_timeout + config.io_timeout);
            let client = Client::new(&servers, config).map_err(|e| PyValueError::new_err(e.to_string()))?;
            Ok(MemcachedClient {
                client: Arc::new(client),
                lane,
            })
        }

        /// Server addresses, in configured order.
        #[getter]
        fn servers(&self) -> Vec<String> {
            self.client.servers()
        }

        /// Index (in `servers`) of the server that owns `key`.
        fn server_index(&self, key: &str) -> usize {
            self.client.server_index(key.as_bytes())
        }

        /// Close the idle pooled connections (they reopen on demand).
        fn close_idle(&self, py: Python<'_>) {
            py.detach(|| self.client.close_idle());
        }

        /// Counters (hits, misses, sets, deletes, errors), the pool size, and
        /// per server its idle and in-use connections.
        fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            let (counters, servers) = self.client.stats();
            let config = self.client.config();
            super::pooled_stats(py, &counters, config.pool_size, config.max_connections, servers)
        }

        /// Idle pooled connections per server.
        fn idle_connections(&self) -> Vec<usize> {
            self.client.idle_connections()
        }
    }

    calls {
        /// `(flags, value)`, or None on a miss.
        fn get / aget(key: PyBackedStr) -> Option<(u32, super::aio::Bytes)> {
            let found = client.get(memcached_key(&key)?)?;
            Ok(found.map(|item| (item.flags, super::aio::Bytes(item.value))))
        }

        fn has_key / ahas_key(key: PyBackedStr) -> bool {
            Ok(client.contains(memcached_key(&key)?)?)
        }

        fn touch / atouch(key: PyBackedStr, write: i64) -> bool {
            Ok(client.touch(memcached_key(&key)?, write)?)
        }

        /// `write`: the TTL, as memcached takes it.
        fn set / aset(key: PyBackedStr, item: Value, write: i64) -> () {
            let (flags, value) = &item;
            client.store(memcached_key(&key)?, value, *flags, write, StoreMode::Set)?;
            Ok(())
        }

        /// Store only if absent; True if stored.
        fn add / aadd(key: PyBackedStr, item: Value, write: i64) -> bool {
            let (flags, value) = &item;
            Ok(client.store(memcached_key(&key)?, value, *flags, write, StoreMode::Add)?)
        }

        fn delete / adelete(key: PyBackedStr) -> bool {
            Ok(client.delete(memcached_key(&key)?)?)
        }

        /// Atomic add of a signed delta; None if the key is missing.
        /// Memcached wraps at 2**64 going up and stops at 0 going down.
        fn incr / aincr(key: PyBackedStr, delta: Delta) -> Option<u64> {
            let (key, by) = (memcached_key(&key)?, magnitude(delta.0)?);
            Ok(if delta.0 < 0 { client.decr(key, by)? } else { client.incr(key, by)? })
        }

        /// `{key: (flags, value)}` for the keys found. A failed server
        /// raises, with `partial` (what the others returned) and
        /// `failed_keys` on the exception.
        fn get_many / aget_many(keys: Vec<PyBackedStr>) -> Batch<Vec<Option<Item>>> {
            let (found, failures) = client.get_many(&memcached_keys(&keys)?)?;
            Ok(Batch::new(keys, found, failures))
        }

        /// Store `(key, flags, value)` triples; returns the keys not stored
        /// (values over the item size limit, whose old values are deleted).
        /// A failed server raises, with `failed_keys` on the exception.
        fn set_many / aset_many(items: Vec<(PyBackedStr, Value)>, write: i64) -> Batch<Vec<StoreOutcome>> {
            let (keys, values): (Vec<PyBackedStr>, Vec<Value>) = items.into_iter().unzip();
            let entries = memcached_keys(&keys)?
                .into_iter()
                .zip(&values)
                .map(|(key, (flags, value))| Entry { key, value, flags: *flags })
                .collect::<Vec<_>>();
            let (outcomes, failures) = client.set_many(&entries, write)?;
            Ok(Batch {
                _values: values,
                ..Batch::new(keys, outcomes, failures)
            })
        }

        /// Delete keys; a failed server raises, with `failed_keys`.
        /// Read-modify-write with a CAS token, keeping the TTL:
        /// `change((flags, value))` returns the new `(flags, value)`, which
        /// is returned; None if the key is missing. It may be called again
        /// if another client wrote the key meanwhile; an exception from it
        /// writes nothing and propagates.
        fn update / aupdate(key: PyBackedStr, change: Py<PyAny>) -> Option<(u32, aio::Bytes)> {
            let outcome = client.update(memcached_key(&key)?, |flags, value| super::changed_item(&change, flags, value))?;
            Ok(outcome?.map(|item| (item.flags, aio::Bytes(item.value))))
        }

        /// Delete only while the key holds exactly `item` (compare-and-delete).
        fn delete_if / adelete_if(key: PyBackedStr, item: Value) -> bool {
            Ok(client.delete_if(memcached_key(&key)?, (item.0, &item.1))?)
        }

        /// A new TTL only while the key holds exactly `item`.
        fn touch_if / atouch_if(key: PyBackedStr, item: Value, write: i64) -> bool {
            Ok(client.touch_if(memcached_key(&key)?, (item.0, &item.1), write)?)
        }

        fn delete_many / adelete_many(keys: Vec<PyBackedStr>) -> Batch<()> {
            let failures = client.delete_many(&memcached_keys(&keys)?)?;
            Ok(Batch::new(keys, (), failures))
        }

        /// `get_or_set`'s one round trip: `(item, turn)`. `item` is
        /// `(flags, value)`, or None while another caller computes it (a
        /// placeholder). `turn` is None when `item` is to be served (a hit,
        /// also of an invalidated item or one another caller refreshes),
        /// else `(win, stale, cas, ttl)`: `win` if this caller computes (a
        /// miss, which left a placeholder for `vivify` seconds; the stale
        /// item; or, with `recache`, the refresh of an item with less than
        /// that left), not if it waits for another's value.
        fn claim / aclaim(key: PyBackedStr, vivify: i64, recache: Option<i64>) -> (Option<(u32, aio::Bytes)>, Option<(bool, bool, u64, i64)>) {
            let claim = client.claim(memcached_key(&key)?, vivify, recache)?;
            let turn = (claim.item.is_none() || claim.marks.win)
                .then_some((claim.marks.win, claim.marks.stale, claim.cas, claim.ttl));
            Ok((claim.item.map(|item| (item.flags, aio::Bytes(item.value))), turn))
        }

        /// A winner that could not compute gives its turn back, so that
        /// the next caller wins: `item` None gives back a placeholder,
        /// `stale` an invalidated item, else the refresh of `item`
        /// (stored again, with `ttl` left). Only while the key still has
        /// `cas`; True if given back.
        fn give_back / agive_back(key: PyBackedStr, cas: u64, item: Option<Value>, stale: bool, ttl: i64) -> bool {
            let turn = match (&item, stale) {
                (None, _) => Turn::Placeholder,
                (Some(_), true) => Turn::Stale,
                (Some((flags, value)), false) => Turn::Refresh { flags: *flags, value, ttl },
            };
            Ok(client.give_back(memcached_key(&key)?, cas, turn)?)
        }

        /// Mark stale (plain reads miss it; `claim` serves it while one
        /// caller refreshes it), to live `write` more seconds as memcached
        /// takes a TTL. True if the key was there.
        fn invalidate / ainvalidate(key: PyBackedStr, write: i64) -> bool {
            Ok(client.invalidate(memcached_key(&key)?, Some(write))?)
        }

        /// Empty every server (memcached `flush_all`).
        fn clear / aclear() -> () {
            Ok(client.flush_all()?)
        }
    }
}
