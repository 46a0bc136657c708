//! Store errors as Python exceptions, in one place: each store's error
//! converts with `?` (a `From` per store). The exception classes are
//! defined in `racefree/exceptions.py`, so they can subclass Django's and
//! Python's own. Every conversion works without the GIL (the exception is
//! built lazily), so calls finishing on the async pool use it too.

use pyo3::PyErrArguments;
use pyo3::exceptions::{PyOSError, PyOverflowError, PyPermissionError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyList;

use crate::{codec, filestore, memcached, pgstore, redis};

pyo3::import_exception!(racefree.exceptions, CacheConnectionError);
pyo3::import_exception!(racefree.exceptions, CacheAuthenticationError);
pyo3::import_exception!(racefree.exceptions, CacheTimeoutError);
pyo3::import_exception!(racefree.exceptions, CacheProtocolError);
pyo3::import_exception!(racefree.exceptions, CacheServerError);
pyo3::import_exception!(racefree.exceptions, ValueTooLargeError);
pyo3::import_exception!(racefree.exceptions, LockTimeoutError);
pyo3::import_exception!(django.core.cache.backends.base, InvalidCacheKey);

impl From<codec::Error> for PyErr {
    fn from(error: codec::Error) -> PyErr {
        // A bad level, or stored bytes that are not what they claim to be.
        PyValueError::new_err(error.to_string())
    }
}

impl From<memcached::Error> for PyErr {
    fn from(error: memcached::Error) -> PyErr {
        use memcached::Error;
        let message = error.to_string();
        match error {
            // Keys are checked with `memcached_key` first, which names the key.
            Error::InvalidKey(_) | Error::Config(_) => PyValueError::new_err(message),
            Error::Connect { .. } | Error::Io { .. } | Error::Tls { .. } => CacheConnectionError::new_err(message),
            Error::Auth { .. } => CacheAuthenticationError::new_err(message),
            Error::Timeout { .. } => CacheTimeoutError::new_err(message),
            Error::Protocol { .. } => CacheProtocolError::new_err(message),
            Error::Server { .. } => CacheServerError::new_err(message),
            Error::ValueTooLarge { .. } => ValueTooLargeError::new_err(message),
            Error::NotANumber { .. } => PyTypeError::new_err(message),
        }
    }
}

impl From<redis::Error> for PyErr {
    fn from(error: redis::Error) -> PyErr {
        use redis::Error;
        let message = error.to_string();
        match error {
            Error::Config(_) => PyValueError::new_err(message),
            Error::Connect { .. } | Error::Io { .. } | Error::Tls { .. } => CacheConnectionError::new_err(message),
            Error::Auth { .. } => CacheAuthenticationError::new_err(message),
            Error::Timeout { .. } => CacheTimeoutError::new_err(message),
            Error::Protocol { .. } => CacheProtocolError::new_err(message),
            Error::Server { .. } => CacheServerError::new_err(message),
            Error::NotAnInteger { .. } | Error::WrongType { .. } => PyTypeError::new_err(message),
            Error::Overflow { .. } => PyOverflowError::new_err(message),
        }
    }
}

impl From<filestore::Error> for PyErr {
    fn from(error: filestore::Error) -> PyErr {
        use filestore::Error;
        let message = error.to_string();
        match error {
            Error::Io { path, source, .. } => match source.raw_os_error() {
                // OSError(errno, ...) becomes the matching subclass
                // (PermissionError, FileNotFoundError, ...).
                Some(errno) => PyOSError::new_err((errno, message, path)),
                None => PyOSError::new_err(message),
            },
            Error::UntrustedDirectory { path, .. } => PyPermissionError::new_err((libc::EACCES, message, path)),
            Error::LockTimeout { .. } => LockTimeoutError::new_err(message),
            Error::NotAnInteger => PyTypeError::new_err(message),
            Error::Overflow => PyOverflowError::new_err(message),
        }
    }
}

impl From<pgstore::Error> for PyErr {
    fn from(error: pgstore::Error) -> PyErr {
        use pgstore::Error;
        let message = error.to_string();
        match error {
            Error::Connect(_) | Error::ConnectionLost(_) => CacheConnectionError::new_err(message),
            Error::Timeout(_) | Error::NoReply(_) => CacheTimeoutError::new_err(message),
            Error::Database { .. } => CacheServerError::new_err(message),
            Error::InvalidKey(_) => InvalidCacheKey::new_err(message),
            Error::Config(_) => PyValueError::new_err(message),
        }
    }
}

/// The key's bytes, or Django's `InvalidCacheKey` before anything is sent.
/// A batch call's first failure, as the exception it raises: with
/// `failed_keys` (every key not served) and, for a read, `partial` (what
/// the healthy servers returned).
pub(crate) fn batch_failure<'py>(
    py: Python<'py>,
    error: PyErr,
    failed_keys: Bound<'py, PyList>,
    partial: Option<Bound<'py, PyAny>>,
) -> PyErr {
    let value = error.value(py);
    let attached = value
        .setattr("failed_keys", failed_keys)
        .and_then(|()| partial.map_or(Ok(()), |partial| value.setattr("partial", partial)));
    match attached {
        Ok(()) => error,
        Err(other) => other,
    }
}

pub(crate) fn memcached_key(key: &str) -> PyResult<&[u8]> {
    match memcached::protocol::check_key(key.as_bytes()) {
        Ok(()) => Ok(key.as_bytes()),
        Err(_) => Err(InvalidCacheKey::new_err(KeyMessage(key.to_owned()))),
    }
}

/// The arguments of `InvalidCacheKey` for a key memcached cannot take,
/// with the message Django's memcached backends give: built, when the
/// exception is first looked at, by `racefree._keys` (the one place the
/// messages are written).
struct KeyMessage(String);

impl PyErrArguments for KeyMessage {
    fn arguments(self, py: Python<'_>) -> Py<PyAny> {
        static BUILDER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let built = BUILDER
            .get_or_try_init(py, || {
                py.import("racefree._keys")
                    .and_then(|m| m.getattr("memcached_key_error"))
                    .map(Bound::unbind)
            })
            .and_then(|builder| builder.bind(py).call1((self.0.as_str(),)))
            .and_then(|exception| match exception.is_instance_of::<InvalidCacheKey>() {
                true => exception.getattr("args"),
                false => Ok((format!("invalid memcached key: {:?}", self.0),)
                    .into_pyobject(py)?
                    .into_any()),
            });
        match built {
            Ok(args) => args.unbind(),
            Err(error) => (format!("invalid memcached key: {:?} ({error})", self.0),)
                .into_pyobject(py)
                .map(|args| args.into_any().unbind())
                .unwrap_or_else(|_| py.None()),
        }
    }
}
