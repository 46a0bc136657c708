//! `racefree._core.RedisClient`: the Redis store for Python.

use std::sync::Arc;

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyDict, PyList};

use super::aio::{self, Bytes};
use super::errors::batch_failure;
use super::{Delta, settings};
use crate::redis::resp::Value;
use crate::redis::{BatchFailure, Client, Error, Expiry, Ttl, Values};

/// A pooled, thread-safe Redis client over a primary and optional read
/// replicas, or over a Redis Cluster's primaries. Keys are str (sent as UTF-8), values bytes in Django's
/// RedisCache encoding (made in Python); `write` is the TTL: None keeps a
/// value until it is evicted, 0 does not store it, else whole seconds.
#[pyclass(frozen, module = "racefree._core")]
pub struct RedisClient {
    client: Arc<Client>,
    lane: aio::Lane,
}

/// Async calls in flight at once, per client, when their commands share
/// round trips (`COMBINE_CALLS`): they ride one connection per server.
const ASYNC_COMBINED: usize = 16;

/// Connections async calls use at most at once, per client, when each
/// call has a round trip of its own.
const ASYNC_CONNECTIONS: usize = 4;

fn key_bytes(keys: &[PyBackedStr]) -> Vec<&[u8]> {
    keys.iter().map(|key| key.as_bytes()).collect()
}

/// A batch call's outcome, converted with the GIL: its result, or its
/// first failure raised with `failed_keys` (every key not served) and, for
/// `get_many`, `partial` (what the healthy nodes returned) attached, as
/// the memcached store's batches do.
struct Batch<T> {
    keys: Vec<PyBackedStr>,
    result: T,
    failures: Vec<BatchFailure>,
}

impl<T> Batch<T> {
    /// `result`, or the first failure with its attributes.
    fn finish<'py>(mut self, py: Python<'py>, result: Bound<'py, PyAny>, partial: bool) -> PyResult<Bound<'py, PyAny>> {
        if self.failures.is_empty() {
            return Ok(result);
        }
        let failed = self.failures.iter().flat_map(|failure| failure.indexes.iter());
        let failed = PyList::new(py, failed.map(|&index| &self.keys[index]))?;
        let error = PyErr::from(self.failures.remove(0).error);
        Err(batch_failure(py, error, failed, partial.then_some(result)))
    }
}

/// `get_many`: `{key: value}` for the keys found, in the order asked (as
/// Django's RedisCache returns them).
impl<'py> IntoPyObject<'py> for Batch<Values> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let found = PyDict::new(py);
        for (key, value) in self.keys.iter().zip(std::mem::take(&mut self.result)) {
            if let Some(value) = value {
                found.set_item(key, PyBytes::new(py, &value))?;
            }
        }
        self.finish(py, found.into_any(), true)
    }
}

/// `set_many`: the keys not stored (none: a failure raises), and
/// `delete_many`: None.
impl<'py> IntoPyObject<'py> for Batch<Option<Vec<String>>> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let result = match &self.result {
            Some(not_stored) => PyList::new(py, not_stored)?.into_any(),
            None => py.None().into_bound(py),
        };
        self.finish(py, result, false)
    }
}

/// An argument of `command`: bytes as they are, str as UTF-8.
#[derive(FromPyObject)]
enum Arg {
    Bytes(PyBackedBytes),
    Text(PyBackedStr),
}

impl Arg {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Arg::Bytes(bytes) => bytes,
            Arg::Text(text) => text.as_bytes(),
        }
    }
}

/// A reply as Python values: a status as str, an integer as int, a bulk
/// string as bytes, an array as list, and nil as None.
struct Reply(Value);

impl<'py> IntoPyObject<'py> for Reply {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.0 {
            Value::Status(status) => status.into_pyobject(py)?.into_any(),
            Value::Int(n) => n.into_pyobject(py)?.into_any(),
            Value::Bulk(Some(data)) => PyBytes::new(py, &data).into_any(),
            Value::Bulk(None) | Value::Array(None) => py.None().into_bound(py),
            Value::Array(Some(items)) => PyList::new(py, items.into_iter().map(Reply))?.into_any(),
            // Only in replies nested in an array (a transaction's).
            Value::Error(message) => return Err(Error::refused("(nested reply)", &message).into()),
        })
    }
}

/// Redis counts in 64-bit signed integers.
fn redis_delta(delta: Delta) -> PyResult<i64> {
    i64::try_from(delta.0)
        .map_err(|_| PyOverflowError::new_err("Redis counts with deltas within 64-bit signed integers"))
}

/// `change(value) -> new value`, called with the GIL from a thread that
/// may or may not hold it.
fn changed(change: &Py<PyAny>, current: &[u8]) -> PyResult<Vec<u8>> {
    aio::with_python(|py| change.call1(py, (PyBytes::new(py, current),))?.extract::<Vec<u8>>(py))
}

store_methods! {
    RedisClient, client = self.client, _now = super::server_clock, lane = self.lane;

    plain {
        /// `servers`: `host:port` or `unix:/path`, the primary first;
        /// `config`: the backend's OPTIONS the client takes, by lowercase name.
        #[new]
        fn new(servers: Vec<String>, config: &Bound<'_, PyDict>) -> PyResult<Self> {
            let config: crate::redis::Config = settings("RedisClient", config)?;
            // Async calls in flight: a few suffice, since one event loop
            // cannot issue calls faster than they are answered (a round
            // trip is tens of microseconds); the others wait their turn
            // here, not on pool threads. Combined, the calls in flight
            // share one connection per server, and more of them make
            // fuller round trips; else each holds a connection, so 200
            // tasks hold ASYNC_CONNECTIONS connections, not 200 (and no
            // more on the primary, which takes every write).
            let in_flight = match config.combine_calls {
                true => ASYNC_COMBINED,
                false => config.max_connections.unwrap_or(ASYNC_CONNECTIONS).min(ASYNC_CONNECTIONS),
            };
            let lane = aio::Lane::new(in_flight, config.connect_timeout + config.io_timeout);
            let client = Client::new(&servers, config).map_err(|e| PyValueError::new_err(e.to_string()))?;
            Ok(RedisClient {
                client: Arc::new(client),
                lane,
            })
        }

        /// Server addresses as LOCATION gave them, the primary (or the
        /// first cluster seed) first.
        #[getter]
        fn servers(&self) -> Vec<String> {
            self.client.servers()
        }

        /// In cluster mode the primaries of this process's slot map (asked
        /// of a node if there is none yet); else `servers`.
        fn nodes(&self, py: Python<'_>) -> PyResult<Vec<String>> {
            Ok(py.detach(|| self.client.nodes())?)
        }

        /// Close the idle pooled connections (they reopen on demand).
        fn close_idle(&self, py: Python<'_>) {
            py.detach(|| self.client.close_idle());
        }

        /// Counters (hits, misses, sets, deletes, errors), the pool size,
        /// and per server its idle and in-use connections, connections
        /// dialed, and calls combined into another caller's round trip.
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
        /// The value, or None.
        fn get / aget(key: PyBackedStr) -> Option<Bytes> {
            Ok(client.get(key.as_bytes())?.map(Bytes))
        }

        /// `{key: value}` for the keys found: one `MGET`, or one pipeline
        /// per cluster node. A failed node raises, with `partial` (what
        /// the others returned) and `failed_keys` on the exception.
        fn get_many / aget_many(keys: Vec<PyBackedStr>) -> Batch<Values> {
            let (found, failures) = client.get_many(&key_bytes(&keys))?;
            Ok(Batch { keys, result: found, failures })
        }

        fn has_key / ahas_key(key: PyBackedStr) -> bool {
            Ok(client.contains(key.as_bytes())?)
        }

        fn set / aset(key: PyBackedStr, item: PyBackedBytes, write: Ttl) -> () {
            Ok(client.set(key.as_bytes(), &item, write)?)
        }

        /// Store only if absent (`SET NX`); True if stored.
        fn add / aadd(key: PyBackedStr, item: PyBackedBytes, write: Ttl) -> bool {
            Ok(client.add(key.as_bytes(), &item, write)?)
        }

        /// Store `(key, value)` pairs, pipelined; returns the keys not
        /// stored (none: a failure raises, with `failed_keys`).
        fn set_many / aset_many(items: Vec<(PyBackedStr, PyBackedBytes)>, write: Ttl) -> Batch<Option<Vec<String>>> {
            let pairs: Vec<(&[u8], &[u8])> = items.iter().map(|(key, value)| (key.as_bytes(), &**value)).collect();
            let failures = client.set_many(&pairs, write)?;
            drop(pairs);
            let keys = items.into_iter().map(|(key, _)| key).collect();
            Ok(Batch { keys, result: Some(Vec::new()), failures })
        }

        /// A new expiry for an existing key; True if it exists.
        fn touch / atouch(key: PyBackedStr, write: Ttl) -> bool {
            Ok(client.touch(key.as_bytes(), write)?)
        }

        fn delete / adelete(key: PyBackedStr) -> bool {
            Ok(client.delete(key.as_bytes())?)
        }

        /// Delete only while the key holds exactly `item` (compare-and-delete).
        fn delete_if / adelete_if(key: PyBackedStr, item: PyBackedBytes) -> bool {
            Ok(client.delete_if(key.as_bytes(), &item)?)
        }

        /// A new TTL only while the key holds exactly `item`.
        fn touch_if / atouch_if(key: PyBackedStr, item: PyBackedBytes, write: Ttl) -> bool {
            Ok(client.touch_if(key.as_bytes(), &item, write)?)
        }

        /// A failed node raises, with `failed_keys`.
        fn delete_many / adelete_many(keys: Vec<PyBackedStr>) -> Batch<Option<Vec<String>>> {
            let failures = client.delete_many(&key_bytes(&keys))?;
            Ok(Batch { keys, result: None, failures })
        }

        /// Atomic add of a signed delta, keeping the expiry; None if the
        /// key is missing.
        fn incr / aincr(key: PyBackedStr, delta: Delta) -> Option<i64> {
            Ok(client.incr(key.as_bytes(), redis_delta(delta)?)?)
        }

        /// Atomic add with a bare `INCRBY`: a missing key is created
        /// holding `delta`, without expiry.
        fn incr_or_create / aincr_or_create(key: PyBackedStr, delta: Delta) -> i64 {
            Ok(client.incr_or_create(key.as_bytes(), redis_delta(delta)?)?)
        }

        /// Replace the value with `change(value)` if no one else changed it
        /// meanwhile (else read and change again), keeping the expiry;
        /// returns the new value, or None if the key is missing. An
        /// exception from `change` writes nothing and propagates.
        fn update / aupdate(key: PyBackedStr, change: Py<PyAny>) -> Option<Bytes> {
            let outcome = client.update(key.as_bytes(), |current| changed(&change, current))?;
            Ok(outcome?.map(Bytes))
        }

        /// Milliseconds the key has left (`PTTL`): -2 if it is missing,
        /// -1 if it never expires.
        fn pttl / apttl(key: PyBackedStr) -> i64 {
            Ok(client.pttl(key.as_bytes())?)
        }

        /// `PEXPIRE`: True if the key exists; 0 or less deletes it.
        fn pexpire / apexpire(key: PyBackedStr, ms: i64) -> bool {
            Ok(client.expire(key.as_bytes(), Expiry::AfterMs(ms))?)
        }

        /// `PEXPIREAT` (Unix milliseconds): True if the key exists; a past
        /// time deletes it.
        fn pexpire_at / apexpire_at(key: PyBackedStr, unix_ms: i64) -> bool {
            Ok(client.expire(key.as_bytes(), Expiry::AtUnixMs(unix_ms))?)
        }

        /// `PERSIST`: True if the key had an expiry, now removed.
        fn persist / apersist(key: PyBackedStr) -> bool {
            Ok(client.expire(key.as_bytes(), Expiry::Never)?)
        }

        /// How many primaries `scan` numbers (1, or a cluster's).
        fn primaries / aprimaries() -> usize {
            Ok(client.primaries()?)
        }

        /// One page of `SCAN ... MATCH pattern COUNT count` on primary
        /// number `node`: `(next cursor, keys)`, the cursor 0 when done.
        /// Keys that are not UTF-8 come back with U+FFFD for what is not.
        fn scan / ascan(node: usize, cursor: u64, pattern: PyBackedStr, count: usize) -> (u64, Vec<String>) {
            let (next, keys) = client.scan(node, cursor, pattern.as_bytes(), count)?;
            Ok((next, keys.iter().map(|key| String::from_utf8_lossy(key).into_owned()).collect()))
        }

        /// Delete every key matching `pattern`, `SCAN`ning `count` keys at
        /// a time on each primary; how many it deleted.
        fn delete_matching / adelete_matching(pattern: PyBackedStr, count: usize) -> u64 {
            Ok(client.delete_matching(pattern.as_bytes(), count)?)
        }

        /// One command, `args` whole (str sent as UTF-8), on the server of
        /// `keys` (the keys among `args`, which in cluster mode must share
        /// a slot; with `read`, a replica may answer): the reply as Python
        /// values. A key of another kind raises TypeError.
        fn command / acommand(keys: Vec<PyBackedStr>, args: Vec<Arg>, read: bool) -> Reply {
            let args: Vec<&[u8]> = args.iter().map(Arg::as_bytes).collect();
            Ok(Reply(client.command(&key_bytes(&keys), &args, read)?))
        }

        /// Empty the database (`FLUSHDB`).
        fn clear / aclear() -> () {
            Ok(client.clear()?)
        }
    }
}
