//! Errors of the file store.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug)]
pub enum Error {
    /// A file system call failed (not a missing entry, which is a miss).
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The cache directory is another user's or writable by others.
    UntrustedDirectory { path: PathBuf, why: String },
    /// Another process held the key's lock longer than the lock timeout.
    LockTimeout { path: PathBuf, waited: Duration },
    /// `incr` on a value that is not an integer.
    NotAnInteger,
    /// `incr` past the integer range the store counts in (±2**127).
    Overflow,
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A file or directory the call needed was not there.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { action, path, source } => {
                write!(f, "cannot {action} {}: {source}", path.display())
            }
            Error::UntrustedDirectory { path, why } => write!(
                f,
                "racefree will not use the cache directory {}: {why}; anyone who can write there could \
                 plant values that get unpickled (make it the web server user's, mode 700, or choose \
                 another LOCATION)",
                path.display()
            ),
            Error::LockTimeout { path, waited } => write!(
                f,
                "cache lock {} still held by another process after {:.1} s",
                path.display(),
                waited.as_secs_f64()
            ),
            Error::NotAnInteger => write!(f, "the cached value is not an integer"),
            Error::Overflow => write!(f, "incr/decr would leave the range of a 128-bit integer"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

impl crate::stats::Failure for Error {
    fn is_failure(&self) -> bool {
        !matches!(self, Error::NotAnInteger | Error::Overflow)
    }
}
