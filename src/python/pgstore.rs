//! `racefree._core.PgStore`: the PostgreSQL store for Python.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::aio::{self, Bytes};
use super::errors::{CacheConnectionError, CacheServerError, CacheTimeoutError};
use crate::Limits;
use crate::pgstore::{Error, PgStore as Store, Settings, expiry, moment};

pyo3::import_exception!(django.core.cache.backends.base, InvalidCacheKey);

/// A pooled PostgreSQL cache on Django's cache table. Values are the
/// pickled bytes (stored base64, as Django does); times are Unix seconds
/// (expiry 0: never).
#[pyclass(frozen, module = "racefree._core")]
pub struct PgStore {
    store: Arc<Store>,
}

fn to_pyerr(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::Connect(_) | Error::ConnectionLost(_) => CacheConnectionError::new_err(message),
        Error::Timeout(_) => CacheTimeoutError::new_err(message),
        Error::Database { .. } => CacheServerError::new_err(message),
        Error::InvalidKey(_) => InvalidCacheKey::new_err(message),
        Error::Config(_) => PyValueError::new_err(message),
    }
}

/// A postgres::Config from a libpq DSN or from Django-style parameters.
fn connection_config(dsn: Option<&str>, params: &HashMap<String, String>) -> PyResult<postgres::Config> {
    let bad = |e: postgres::Error| PyValueError::new_err(format!("invalid PostgreSQL connection settings: {e}"));
    let mut config = match dsn {
        Some(dsn) => postgres::Config::from_str(dsn).map_err(bad)?,
        None => postgres::Config::new(),
    };
    for (name, value) in params {
        match name.as_str() {
            "host" => {
                for host in value.split(',') {
                    config.host(host.trim());
                }
            }
            "port" => {
                let port = value
                    .parse()
                    .map_err(|_| PyValueError::new_err(format!("invalid PostgreSQL port {value:?}")))?;
                config.port(port);
            }
            "user" => {
                config.user(value);
            }
            "password" => {
                config.password(value);
            }
            "dbname" => {
                config.dbname(value);
            }
            "options" => {
                config.options(value);
            }
            "application_name" => {
                config.application_name(value);
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "unsupported PostgreSQL connection parameter {other:?}"
                )));
            }
        }
    }
    Ok(config)
}

#[pymethods]
impl PgStore {
    #[new]
    #[pyo3(signature = (table, params, *, dsn=None, pool_size=10, connect_timeout=5.0, statement_timeout=None))]
    fn new(
        table: String,
        params: HashMap<String, String>,
        dsn: Option<&str>,
        pool_size: u32,
        connect_timeout: f64,
        statement_timeout: Option<f64>,
    ) -> PyResult<Self> {
        if !(connect_timeout > 0.0 && connect_timeout <= 86_400.0) {
            return Err(PyValueError::new_err(format!(
                "connect_timeout must be more than 0 and at most 86400 seconds, not {connect_timeout}"
            )));
        }
        let mut config = connection_config(dsn, &params)?;
        let connect_timeout = Duration::from_secs_f64(connect_timeout);
        config.connect_timeout(connect_timeout);
        config.keepalives(true);
        if let Some(seconds) = statement_timeout {
            if !(seconds > 0.0 && seconds <= 86_400.0) {
                return Err(PyValueError::new_err(format!(
                    "statement_timeout must be more than 0 and at most 86400 seconds, not {seconds}"
                )));
            }
            // Server-side: a statement stuck on a lock or a slow disk is
            // cancelled instead of holding the caller.
            let option = format!("-c statement_timeout={}", (seconds * 1000.0).round() as u64);
            let options = match config.get_options() {
                Some(existing) if !existing.is_empty() => format!("{existing} {option}"),
                _ => option,
            };
            config.options(&options);
        }
        let store = Store::new(Settings {
            config,
            table,
            pool_size,
            connect_timeout,
        })
        .map_err(to_pyerr)?;
        Ok(PgStore { store: Arc::new(store) })
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

    fn get<'py>(&self, py: Python<'py>, key: &str, now: f64) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let found = py.detach(|| self.store.get(key, moment(now))).map_err(to_pyerr)?;
        Ok(found.map(|value| PyBytes::new(py, &value)))
    }

    /// `{key: value}` for the live keys, one round trip.
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Bound<'py, PyString>>,
        now: f64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let texts = keys.iter().map(|k| k.to_str()).collect::<PyResult<Vec<&str>>>()?;
        let found = py
            .detach(|| self.store.get_many(&texts, moment(now)))
            .map_err(to_pyerr)?;
        let result = PyDict::new(py);
        for (key, value) in found {
            result.set_item(key, PyBytes::new(py, &value))?;
        }
        Ok(result)
    }

    fn has_key(&self, py: Python<'_>, key: &str, now: f64) -> PyResult<bool> {
        py.detach(|| self.store.contains(key, moment(now))).map_err(to_pyerr)
    }

    #[allow(clippy::too_many_arguments)]
    fn set(
        &self,
        py: Python<'_>,
        key: &str,
        value: &[u8],
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<()> {
        let limits = Limits::new(max_entries, cull_frequency);
        py.detach(|| self.store.set(key, value, expiry(expires), moment(now), limits))
            .map_err(to_pyerr)
    }

    /// Store only if the key is absent or expired; True if stored.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        py: Python<'_>,
        key: &str,
        value: &[u8],
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<bool> {
        let limits = Limits::new(max_entries, cull_frequency);
        py.detach(|| self.store.add(key, value, expiry(expires), moment(now), limits))
            .map_err(to_pyerr)
    }

    /// Store `(key, value)` pairs with one expiry, one round trip.
    fn set_many(
        &self,
        py: Python<'_>,
        items: Vec<(Bound<'_, PyString>, Bound<'_, PyBytes>)>,
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<()> {
        let pairs = items
            .iter()
            .map(|(key, value)| Ok((key.to_str()?, value.as_bytes())))
            .collect::<PyResult<Vec<_>>>()?;
        let limits = Limits::new(max_entries, cull_frequency);
        py.detach(|| self.store.set_many(&pairs, expiry(expires), moment(now), limits))
            .map_err(to_pyerr)
    }

    fn touch(&self, py: Python<'_>, key: &str, expires: f64, now: f64) -> PyResult<bool> {
        py.detach(|| self.store.touch(key, expiry(expires), moment(now)))
            .map_err(to_pyerr)
    }

    fn delete(&self, py: Python<'_>, key: &str, now: f64) -> PyResult<bool> {
        py.detach(|| self.store.delete(key, moment(now))).map_err(to_pyerr)
    }

    fn delete_many(&self, py: Python<'_>, keys: Vec<Bound<'_, PyString>>) -> PyResult<()> {
        let texts = keys.iter().map(|k| k.to_str()).collect::<PyResult<Vec<&str>>>()?;
        py.detach(|| self.store.delete_many(&texts)).map_err(to_pyerr)
    }

    /// Atomically replace a live value with `change(value)` (called with
    /// the key locked); returns the new value, or None if there was no live
    /// value. An exception from `change` writes nothing and propagates.
    fn update<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        now: f64,
        change: Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let change = change.unbind();
        let outcome = py
            .detach(|| {
                self.store.update(key, moment(now), |current| {
                    Python::attach(|py| {
                        let new = change.call1(py, (PyBytes::new(py, current),))?;
                        new.extract::<Vec<u8>>(py)
                    })
                })
            })
            .map_err(to_pyerr)?;
        Ok(outcome?.map(|value| PyBytes::new(py, &value)))
    }

    /// Remove every entry.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.store.clear()).map_err(to_pyerr)
    }

    // The async versions: the same calls on the blocking pool, each
    // returning an asyncio.Future (see aio.rs).

    fn aget<'py>(&self, py: Python<'py>, key: String, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || {
            Ok(store.get(&key, moment(now)).map_err(to_pyerr)?.map(Bytes))
        })
    }

    fn aget_many<'py>(&self, py: Python<'py>, keys: Vec<String>, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let found = store.get_many(&keys, moment(now)).map_err(to_pyerr)?;
            Ok(found
                .into_iter()
                .map(|(key, value)| (key, Bytes(value)))
                .collect::<HashMap<_, _>>())
        })
    }

    fn ahas_key<'py>(&self, py: Python<'py>, key: String, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || store.contains(&key, moment(now)).map_err(to_pyerr))
    }

    #[allow(clippy::too_many_arguments)]
    fn aset<'py>(
        &self,
        py: Python<'py>,
        key: String,
        value: Vec<u8>,
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (store, limits) = (Arc::clone(&self.store), Limits::new(max_entries, cull_frequency));
        aio::spawn(py, move || {
            store
                .set(&key, &value, expiry(expires), moment(now), limits)
                .map_err(to_pyerr)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn aadd<'py>(
        &self,
        py: Python<'py>,
        key: String,
        value: Vec<u8>,
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (store, limits) = (Arc::clone(&self.store), Limits::new(max_entries, cull_frequency));
        aio::spawn(py, move || {
            store
                .add(&key, &value, expiry(expires), moment(now), limits)
                .map_err(to_pyerr)
        })
    }

    fn aset_many<'py>(
        &self,
        py: Python<'py>,
        items: Vec<(String, Vec<u8>)>,
        expires: f64,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (store, limits) = (Arc::clone(&self.store), Limits::new(max_entries, cull_frequency));
        aio::spawn(py, move || {
            let pairs: Vec<(&str, &[u8])> = items
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_slice()))
                .collect();
            store
                .set_many(&pairs, expiry(expires), moment(now), limits)
                .map_err(to_pyerr)
        })
    }

    fn atouch<'py>(&self, py: Python<'py>, key: String, expires: f64, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || {
            store.touch(&key, expiry(expires), moment(now)).map_err(to_pyerr)
        })
    }

    fn adelete<'py>(&self, py: Python<'py>, key: String, now: f64) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || store.delete(&key, moment(now)).map_err(to_pyerr))
    }

    fn adelete_many<'py>(&self, py: Python<'py>, keys: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            store.delete_many(&keys).map_err(to_pyerr)
        })
    }

    /// `update`, awaited: `change` runs (with the GIL) on a pool thread
    /// while the key is locked, so the read-add-write stays one transaction.
    fn aupdate<'py>(&self, py: Python<'py>, key: String, now: f64, change: Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || {
            let outcome = store
                .update(&key, moment(now), |current| {
                    aio::with_python(|py| change.call1(py, (PyBytes::new(py, current),))?.extract::<Vec<u8>>(py))
                })
                .map_err(to_pyerr)?;
            Ok(outcome?.map(Bytes))
        })
    }

    fn aclear<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let store = Arc::clone(&self.store);
        aio::spawn(py, move || store.clear().map_err(to_pyerr))
    }

    /// Close idle connections (e.g. before the database is dropped).
    fn close_idle(&self, py: Python<'_>) {
        py.detach(|| self.store.close_idle());
    }
}
