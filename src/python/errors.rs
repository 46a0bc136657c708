//! Store errors as Python exceptions (defined in `racefree/exceptions.py`,
//! so they can subclass Django's and Python's own).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::memcached::Error;

pyo3::import_exception!(racefree.exceptions, CacheConnectionError);
pyo3::import_exception!(racefree.exceptions, CacheTimeoutError);
pyo3::import_exception!(racefree.exceptions, CacheProtocolError);
pyo3::import_exception!(racefree.exceptions, CacheServerError);
pyo3::import_exception!(racefree.exceptions, ValueTooLargeError);

pub(crate) fn to_pyerr(py: Python<'_>, key: Option<&str>, error: Error) -> PyErr {
    match (error, key) {
        (Error::InvalidKey(_), Some(key)) => invalid_key(py, key),
        (error, _) => store_error(error),
    }
}

/// The exception for `error`, created without the GIL (for calls finished
/// on the blocking pool; their keys were checked before they were sent).
pub(crate) fn store_error(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::InvalidKey(_) | Error::Config(_) => PyValueError::new_err(message),
        Error::Connect { .. } | Error::Io { .. } => CacheConnectionError::new_err(message),
        Error::Timeout { .. } => CacheTimeoutError::new_err(message),
        Error::Protocol { .. } => CacheProtocolError::new_err(message),
        Error::Server { .. } => CacheServerError::new_err(message),
        Error::ValueTooLarge { .. } => ValueTooLargeError::new_err(message),
        Error::NotANumber { .. } => PyTypeError::new_err(message),
    }
}

/// Django's `InvalidCacheKey` for `key`, with the message Django's
/// memcached backends give (built by `racefree._keys`, the one place the
/// messages are written).
pub(crate) fn invalid_key(py: Python<'_>, key: &str) -> PyErr {
    static BUILDER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let built = BUILDER
        .get_or_try_init(py, || {
            py.import("racefree._keys")
                .and_then(|m| m.getattr("memcached_key_error"))
                .map(Bound::unbind)
        })
        .and_then(|builder| builder.call1(py, (key,)));
    match built {
        Ok(exception) if !exception.is_none(py) => PyErr::from_value(exception.into_bound(py)),
        Ok(_) => PyValueError::new_err(format!("invalid memcached key: {key:?}")),
        Err(error) => error,
    }
}
