//! `racefree._core.MemcachedClient`: the memcached store for Python.

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use super::aio::{self, Bytes, Finish, Finished};
use super::errors::{invalid_key, store_error, to_pyerr};
use crate::memcached::{BatchFailure, Client, Config, Entry, Item, StoreMode, StoreOutcome, protocol};

/// A pooled, thread-safe memcached client. Values are `(flags, bytes)`
/// pairs; the flags are pymemcache's serializer flags, set in Python.
#[pyclass(frozen, module = "racefree._core")]
pub struct MemcachedClient {
    client: Arc<Client>,
}

/// Longest accepted timeout: a day (deadlines are computed by adding it
/// to the current time).
const MAX_SECONDS: f64 = 86_400.0;

fn seconds(name: &str, value: f64, zero_ok: bool) -> PyResult<Duration> {
    let in_range = if zero_ok { value >= 0.0 } else { value > 0.0 };
    if in_range && value <= MAX_SECONDS {
        Ok(Duration::from_secs_f64(value))
    } else {
        let lower = if zero_ok { "at least 0" } else { "more than 0" };
        Err(PyValueError::new_err(format!(
            "{name} must be {lower} and at most {MAX_SECONDS} seconds, not {value}"
        )))
    }
}

/// The key's bytes, or Django's `InvalidCacheKey` before anything is sent.
fn wire_key<'k>(py: Python<'_>, key: &'k str) -> PyResult<&'k [u8]> {
    match protocol::check_key(key.as_bytes()) {
        Ok(()) => Ok(key.as_bytes()),
        Err(_) => Err(invalid_key(py, key)),
    }
}

fn wire_keys<'k>(py: Python<'_>, keys: &'k [Bound<'_, PyString>]) -> PyResult<Vec<&'k str>> {
    keys.iter()
        .map(|key| {
            let text = key.to_str()?;
            wire_key(py, text)?;
            Ok(text)
        })
        .collect()
}

/// Raise the first failure of a batch, with `failed_keys` (and for
/// `get_many`, `partial`: what the healthy servers returned) attached.
fn batch_error(
    py: Python<'_>,
    keys: &[Bound<'_, PyString>],
    mut failures: Vec<BatchFailure>,
    extra_failed: Vec<usize>,
    partial: Option<Bound<'_, PyDict>>,
) -> PyResult<PyErr> {
    let failed = PyList::empty(py);
    for index in failures.iter().flat_map(|f| f.indexes.iter()).chain(&extra_failed) {
        failed.append(&keys[*index])?;
    }
    let first = failures.remove(0);
    let error = to_pyerr(py, None, first.error);
    let value = error.value(py);
    value.setattr("failed_keys", failed)?;
    if let Some(partial) = partial {
        value.setattr("partial", partial)?;
    }
    Ok(error)
}

/// `get_many`'s dict (keyed by the given key objects), or its first failure.
fn get_many_result<'py>(
    py: Python<'py>,
    keys: &[Bound<'py, PyString>],
    found: Vec<Option<Item>>,
    failures: Vec<BatchFailure>,
) -> PyResult<Bound<'py, PyDict>> {
    let result = PyDict::new(py);
    for (key, item) in keys.iter().zip(found) {
        if let Some(item) = item {
            result.set_item(key, (item.flags, PyBytes::new(py, &item.value)))?;
        }
    }
    if failures.is_empty() {
        Ok(result)
    } else {
        Err(batch_error(py, keys, failures, Vec::new(), Some(result))?)
    }
}

/// `set_many`'s keys not stored (too large), or its first failure.
fn set_many_result<'py>(
    py: Python<'py>,
    keys: &[Bound<'py, PyString>],
    outcomes: &[StoreOutcome],
    failures: Vec<BatchFailure>,
) -> PyResult<Bound<'py, PyList>> {
    let too_large: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, outcome)| **outcome == StoreOutcome::TooLarge)
        .map(|(index, _)| index)
        .collect();
    if !failures.is_empty() {
        return Err(batch_error(py, keys, failures, too_large, None)?);
    }
    PyList::new(py, too_large.iter().map(|&index| &keys[index]))
}

/// A batch's key objects (returned with the result) and their checked
/// bytes (owned, for the call on the blocking pool).
type OwnedKeys = (Vec<Py<PyString>>, Vec<Vec<u8>>);

fn owned_keys(py: Python<'_>, keys: &[Bound<'_, PyString>]) -> PyResult<OwnedKeys> {
    let wire = wire_keys(py, keys)?
        .into_iter()
        .map(|key| key.as_bytes().to_vec())
        .collect();
    Ok((keys.iter().map(|key| key.clone().unbind()).collect(), wire))
}

fn bind_all<'py>(py: Python<'py>, keys: Vec<Py<PyString>>) -> Vec<Bound<'py, PyString>> {
    keys.into_iter().map(|key| key.into_bound(py)).collect()
}

/// What an async batch call brings back to the event loop thread.
enum BatchOutcome {
    Get(Vec<Py<PyString>>, Vec<Option<Item>>, Vec<BatchFailure>),
    Set(Vec<Py<PyString>>, Vec<StoreOutcome>, Vec<BatchFailure>),
    Delete(Vec<Py<PyString>>, Vec<BatchFailure>),
}

impl Finish for BatchOutcome {
    fn finish(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self {
            BatchOutcome::Get(keys, found, failures) => get_many_result(py, &bind_all(py, keys), found, failures)?
                .into_any()
                .unbind(),
            BatchOutcome::Set(keys, outcomes, failures) => {
                set_many_result(py, &bind_all(py, keys), &outcomes, failures)?
                    .into_any()
                    .unbind()
            }
            BatchOutcome::Delete(_, failures) if failures.is_empty() => py.None(),
            BatchOutcome::Delete(keys, failures) => {
                return Err(batch_error(py, &bind_all(py, keys), failures, Vec::new(), None)?);
            }
        })
    }
}

#[pymethods]
impl MemcachedClient {
    #[new]
    // One keyword argument per OPTION, as Python callers spell them.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (servers, *, connect_timeout=1.0, io_timeout=1.0, pool_size=32, max_connections=None, idle_timeout=60.0, spin_wait=0.00005, combine_gets=true))]
    fn new(
        servers: Vec<String>,
        connect_timeout: f64,
        io_timeout: f64,
        pool_size: usize,
        max_connections: Option<usize>,
        idle_timeout: f64,
        spin_wait: f64,
        combine_gets: bool,
    ) -> PyResult<Self> {
        let config = Config {
            connect_timeout: seconds("connect_timeout", connect_timeout, false)?,
            io_timeout: seconds("io_timeout", io_timeout, false)?,
            pool_size,
            max_connections,
            idle_timeout: seconds("idle_timeout", idle_timeout, false)?,
            spin_wait: seconds("spin_wait", spin_wait, true)?,
            combine_gets,
        };
        let client = Client::new(&servers, config).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(MemcachedClient {
            client: Arc::new(client),
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

    /// `(flags, value)` or None on a miss.
    fn get<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<(u32, Bound<'py, PyBytes>)>> {
        let wire = wire_key(py, key)?;
        let found = py
            .detach(|| self.client.get(wire))
            .map_err(|e| to_pyerr(py, Some(key), e))?;
        Ok(found.map(|item| (item.flags, PyBytes::new(py, &item.value))))
    }

    fn has_key(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let wire = wire_key(py, key)?;
        py.detach(|| self.client.contains(wire))
            .map_err(|e| to_pyerr(py, Some(key), e))
    }

    fn touch(&self, py: Python<'_>, key: &str, ttl: i64) -> PyResult<bool> {
        let wire = wire_key(py, key)?;
        py.detach(|| self.client.touch(wire, ttl))
            .map_err(|e| to_pyerr(py, Some(key), e))
    }

    fn set(&self, py: Python<'_>, key: &str, flags: u32, value: &[u8], ttl: i64) -> PyResult<()> {
        let wire = wire_key(py, key)?;
        py.detach(|| self.client.store(wire, value, flags, ttl, StoreMode::Set))
            .map(drop)
            .map_err(|e| to_pyerr(py, Some(key), e))
    }

    /// Store only if absent; True if stored.
    fn add(&self, py: Python<'_>, key: &str, flags: u32, value: &[u8], ttl: i64) -> PyResult<bool> {
        let wire = wire_key(py, key)?;
        py.detach(|| self.client.store(wire, value, flags, ttl, StoreMode::Add))
            .map_err(|e| to_pyerr(py, Some(key), e))
    }

    fn delete(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let wire = wire_key(py, key)?;
        py.detach(|| self.client.delete(wire))
            .map_err(|e| to_pyerr(py, Some(key), e))
    }

    /// Atomic increment; None if the key is missing.
    fn incr(&self, py: Python<'_>, key: &str, delta: u64) -> PyResult<Option<u64>> {
        let wire = wire_key(py, key)?;
        py.detach(|| self.client.incr(wire, delta, false))
            .map_err(|e| to_pyerr(py, Some(key), e))
    }

    /// Atomic decrement (stops at 0); None if the key is missing.
    fn decr(&self, py: Python<'_>, key: &str, delta: u64) -> PyResult<Option<u64>> {
        let wire = wire_key(py, key)?;
        py.detach(|| self.client.incr(wire, delta, true))
            .map_err(|e| to_pyerr(py, Some(key), e))
    }

    /// `{key: (flags, value)}` for the keys found; the dict's keys are the
    /// given key objects. A failed server raises, with `partial` (what the
    /// others returned) and `failed_keys` on the exception.
    fn get_many<'py>(&self, py: Python<'py>, keys: Vec<Bound<'py, PyString>>) -> PyResult<Bound<'py, PyDict>> {
        let texts = wire_keys(py, &keys)?;
        let wire: Vec<&[u8]> = texts.iter().map(|k| k.as_bytes()).collect();
        let (found, failures) = py
            .detach(|| self.client.get_many(&wire))
            .map_err(|e| to_pyerr(py, None, e))?;
        get_many_result(py, &keys, found, failures)
    }

    /// Store `(key, flags, value)` triples; returns the keys not stored
    /// (values over the item size limit, whose old values are deleted).
    /// A failed server raises, with `failed_keys` on the exception.
    fn set_many<'py>(
        &self,
        py: Python<'py>,
        items: Vec<(Bound<'py, PyString>, u32, Bound<'py, PyBytes>)>,
        ttl: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let keys: Vec<Bound<'py, PyString>> = items.iter().map(|(k, _, _)| k.clone()).collect();
        let texts = wire_keys(py, &keys)?;
        let entries: Vec<Entry> = texts
            .iter()
            .zip(&items)
            .map(|(key, (_, flags, value))| Entry {
                key: key.as_bytes(),
                value: value.as_bytes(),
                flags: *flags,
            })
            .collect();
        let (outcomes, failures) = py
            .detach(|| self.client.set_many(&entries, ttl))
            .map_err(|e| to_pyerr(py, None, e))?;
        set_many_result(py, &keys, &outcomes, failures)
    }

    /// Delete keys; a failed server raises, with `failed_keys`.
    fn delete_many(&self, py: Python<'_>, keys: Vec<Bound<'_, PyString>>) -> PyResult<()> {
        let texts = wire_keys(py, &keys)?;
        let wire: Vec<&[u8]> = texts.iter().map(|k| k.as_bytes()).collect();
        let failures = py
            .detach(|| self.client.delete_many(&wire))
            .map_err(|e| to_pyerr(py, None, e))?;
        match failures.is_empty() {
            true => Ok(()),
            false => Err(batch_error(py, &keys, failures, Vec::new(), None)?),
        }
    }

    /// Empty every server (memcached `flush_all`).
    fn flush_all(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.client.flush_all()).map_err(|e| to_pyerr(py, None, e))
    }

    /// Close the idle pooled connections (they reopen on demand).
    fn close_idle(&self, py: Python<'_>) {
        py.detach(|| self.client.close_idle());
    }

    // The async versions: the same calls, run on the blocking pool; each
    // returns an asyncio.Future (see aio.rs). Keys are checked here, with
    // the GIL, so the InvalidCacheKey message is Django's.

    fn aget<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        let (client, wire) = (Arc::clone(&self.client), wire_key(py, key)?.to_vec());
        aio::spawn(py, move || {
            let found = client.get(&wire).map_err(store_error)?;
            Ok(found.map(|item| (item.flags, Bytes(item.value))))
        })
    }

    fn ahas_key<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        let (client, wire) = (Arc::clone(&self.client), wire_key(py, key)?.to_vec());
        aio::spawn(py, move || client.contains(&wire).map_err(store_error))
    }

    fn atouch<'py>(&self, py: Python<'py>, key: &str, ttl: i64) -> PyResult<Bound<'py, PyAny>> {
        let (client, wire) = (Arc::clone(&self.client), wire_key(py, key)?.to_vec());
        aio::spawn(py, move || client.touch(&wire, ttl).map_err(store_error))
    }

    fn aset<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        flags: u32,
        value: Vec<u8>,
        ttl: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.astore(py, key, flags, value, ttl, StoreMode::Set)
    }

    fn aadd<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        flags: u32,
        value: Vec<u8>,
        ttl: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.astore(py, key, flags, value, ttl, StoreMode::Add)
    }

    fn adelete<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        let (client, wire) = (Arc::clone(&self.client), wire_key(py, key)?.to_vec());
        aio::spawn(py, move || client.delete(&wire).map_err(store_error))
    }

    fn aincr<'py>(&self, py: Python<'py>, key: &str, delta: u64) -> PyResult<Bound<'py, PyAny>> {
        self.aarithmetic(py, key, delta, false)
    }

    fn adecr<'py>(&self, py: Python<'py>, key: &str, delta: u64) -> PyResult<Bound<'py, PyAny>> {
        self.aarithmetic(py, key, delta, true)
    }

    fn aget_many<'py>(&self, py: Python<'py>, keys: Vec<Bound<'py, PyString>>) -> PyResult<Bound<'py, PyAny>> {
        let client = Arc::clone(&self.client);
        let (keys, wire) = owned_keys(py, &keys)?;
        aio::spawn(py, move || {
            let wire: Vec<&[u8]> = wire.iter().map(Vec::as_slice).collect();
            let (found, failures) = client.get_many(&wire).map_err(store_error)?;
            Ok(Finished(BatchOutcome::Get(keys, found, failures)))
        })
    }

    fn aset_many<'py>(
        &self,
        py: Python<'py>,
        items: Vec<(Bound<'py, PyString>, u32, Vec<u8>)>,
        ttl: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = Arc::clone(&self.client);
        let keys: Vec<Bound<'py, PyString>> = items.iter().map(|(key, _, _)| key.clone()).collect();
        let (keys, wire) = owned_keys(py, &keys)?;
        let values: Vec<(u32, Vec<u8>)> = items.into_iter().map(|(_, flags, value)| (flags, value)).collect();
        aio::spawn(py, move || {
            let entries: Vec<Entry> = wire
                .iter()
                .zip(&values)
                .map(|(key, (flags, value))| Entry {
                    key,
                    value,
                    flags: *flags,
                })
                .collect();
            let (outcomes, failures) = client.set_many(&entries, ttl).map_err(store_error)?;
            Ok(Finished(BatchOutcome::Set(keys, outcomes, failures)))
        })
    }

    fn adelete_many<'py>(&self, py: Python<'py>, keys: Vec<Bound<'py, PyString>>) -> PyResult<Bound<'py, PyAny>> {
        let client = Arc::clone(&self.client);
        let (keys, wire) = owned_keys(py, &keys)?;
        aio::spawn(py, move || {
            let wire: Vec<&[u8]> = wire.iter().map(Vec::as_slice).collect();
            let failures = client.delete_many(&wire).map_err(store_error)?;
            Ok(Finished(BatchOutcome::Delete(keys, failures)))
        })
    }

    fn aflush_all<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = Arc::clone(&self.client);
        aio::spawn(py, move || client.flush_all().map_err(store_error))
    }

    /// Counters (hits, misses, sets, deletes, errors), the pool size, and
    /// per server its idle and in-use connections.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (counters, servers) = self.client.stats();
        let stats = super::counters_dict(py, &counters)?;
        stats.set_item("pool_size", self.client.config().pool_size)?;
        stats.set_item("max_connections", self.client.config().max_connections)?;
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

    /// Idle pooled connections per server.
    fn idle_connections(&self) -> Vec<usize> {
        self.client.idle_connections()
    }
}

impl MemcachedClient {
    fn astore<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        flags: u32,
        value: Vec<u8>,
        ttl: i64,
        mode: StoreMode,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (client, wire) = (Arc::clone(&self.client), wire_key(py, key)?.to_vec());
        aio::spawn(py, move || {
            client.store(&wire, &value, flags, ttl, mode).map_err(store_error)
        })
    }

    fn aarithmetic<'py>(&self, py: Python<'py>, key: &str, delta: u64, decrement: bool) -> PyResult<Bound<'py, PyAny>> {
        let (client, wire) = (Arc::clone(&self.client), wire_key(py, key)?.to_vec());
        aio::spawn(py, move || client.incr(&wire, delta, decrement).map_err(store_error))
    }
}
