//! Errors of the memcached store.

use std::fmt;
use std::io;

use crate::net::OpenError;

/// Why a key was refused before anything was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    Empty,
    /// Longer than 250 bytes once UTF-8 encoded.
    TooLong,
    /// Contains a space, a control character or DEL, which would split or
    /// corrupt the command line on the wire.
    BadCharacter,
}

#[derive(Debug)]
pub enum Error {
    /// The key cannot be sent to memcached; nothing was sent.
    InvalidKey(KeyProblem),
    /// The server could not be reached (refused, unreachable, resolve failed).
    Connect { server: String, source: io::Error },
    /// No reply within the I/O timeout (or no connection within the connect
    /// timeout). The connection, if any, was discarded.
    Timeout { server: String },
    /// The connection failed mid-exchange; it was discarded.
    Io { server: String, source: io::Error },
    /// A reply that does not belong to the request (desync, garbage). The
    /// connection was discarded, so no later call can read it.
    Protocol { server: String, detail: String },
    /// The server answered SERVER_ERROR.
    Server { server: String, message: String },
    /// The value exceeds the server's item size limit.
    ValueTooLarge { server: String, size: usize },
    /// `incr`/`decr` on a value memcached cannot treat as a number.
    NotANumber { server: String },
    /// The TLS handshake failed: the server's certificate was rejected,
    /// the server refused ours, or it does not speak TLS.
    Tls { server: String, detail: String },
    /// The server's login (memcached `-Y`) refused this client.
    Auth { server: String, problem: AuthProblem },
    /// Bad settings.
    Config(String),
}

/// Why a server's login refused this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthProblem {
    /// The username and password were not accepted.
    Rejected { username: String },
    /// The server asks for a login and none is configured.
    Required,
}

impl Error {
    /// Whether this error means the server (or the path to it) failed, as
    /// opposed to a refused request. Only these may be ignored with
    /// IGNORE_EXCEPTIONS.
    pub fn is_server_failure(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Timeout { .. }
                | Error::Io { .. }
                | Error::Protocol { .. }
                | Error::Server { .. }
                | Error::Tls { .. }
                | Error::Auth { .. }
        )
    }

    /// Whether the server refused this client as configured (its TLS or
    /// its login), which trying again at once will not change.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, Error::Tls { .. } | Error::Auth { .. })
    }

    /// Errors after which the stream is still in step: the whole reply was
    /// read, so the connection may serve another request.
    pub(crate) fn keeps_connection(&self) -> bool {
        matches!(
            self,
            Error::Server { .. } | Error::ValueTooLarge { .. } | Error::NotANumber { .. }
        )
    }

    pub(crate) fn protocol(server: &str, detail: impl Into<String>) -> Error {
        Error::Protocol {
            server: server.to_owned(),
            detail: detail.into(),
        }
    }
}

/// A connection that could not be opened (`net::Connection::open`).
impl From<OpenError> for Error {
    fn from(error: OpenError) -> Error {
        match error {
            OpenError::Connect { server, source } => Error::Connect { server, source },
            OpenError::Tls { server, detail } => Error::Tls { server, detail },
        }
    }
}

impl crate::net::ServerError for Error {
    fn from_io(server: &str, source: io::Error) -> Error {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                server: server.to_owned(),
            },
            _ => Error::Io {
                server: server.to_owned(),
                source,
            },
        }
    }

    fn is_server_failure(&self) -> bool {
        Error::is_server_failure(self)
    }

    fn keeps_connection(&self) -> bool {
        Error::keeps_connection(self)
    }

    fn is_refusal(&self) -> bool {
        Error::is_refusal(self)
    }

    fn duplicate(&self) -> Error {
        duplicate(self)
    }
}

/// A combined get that no server answered (see `net::combine`).
impl crate::net::Unanswered for Error {
    fn no_reply(server: &str) -> Error {
        Error::protocol(server, "the combined round trip ended without a reply for this get")
    }

    fn out_of_patience(server: &str) -> Error {
        Error::Timeout {
            server: server.to_owned(),
        }
    }
}

/// An equal error for another caller (`io::Error` is not `Clone`).
fn duplicate(error: &Error) -> Error {
    match error {
        Error::InvalidKey(problem) => Error::InvalidKey(*problem),
        Error::Connect { server, source } => Error::Connect {
            server: server.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Timeout { server } => Error::Timeout { server: server.clone() },
        Error::Io { server, source } => Error::Io {
            server: server.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Protocol { server, detail } => Error::protocol(server, detail.clone()),
        Error::Server { server, message } => Error::Server {
            server: server.clone(),
            message: message.clone(),
        },
        Error::ValueTooLarge { server, size } => Error::ValueTooLarge {
            server: server.clone(),
            size: *size,
        },
        Error::NotANumber { server } => Error::NotANumber { server: server.clone() },
        Error::Tls { server, detail } => Error::Tls {
            server: server.clone(),
            detail: detail.clone(),
        },
        Error::Auth { server, problem } => Error::Auth {
            server: server.clone(),
            problem: problem.clone(),
        },
        Error::Config(message) => Error::Config(message.clone()),
    }
}

impl crate::stats::Failure for Error {
    fn is_failure(&self) -> bool {
        self.is_server_failure()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidKey(KeyProblem::Empty) => write!(f, "memcached key is empty"),
            Error::InvalidKey(KeyProblem::TooLong) => {
                write!(f, "memcached key is longer than 250 bytes")
            }
            Error::InvalidKey(KeyProblem::BadCharacter) => {
                write!(f, "memcached key contains a space or control character")
            }
            Error::Connect { server, source } => {
                write!(f, "cannot connect to memcached server {server}: {source}")
            }
            Error::Timeout { server } => {
                write!(f, "memcached server {server} did not answer in time")
            }
            Error::Io { server, source } => {
                write!(f, "connection to memcached server {server} failed: {source}")
            }
            Error::Protocol { server, detail } => {
                write!(f, "unexpected reply from memcached server {server}: {detail}")
            }
            Error::Server { server, message } => {
                write!(f, "memcached server {server} reported an error: {message}")
            }
            Error::ValueTooLarge { server, size } => write!(
                f,
                "value of {size} bytes is larger than the item size limit of memcached server {server}"
            ),
            Error::NotANumber { server: _ } => write!(
                f,
                "the cached value is not an integer memcached can increment or decrement \
                 (it must be stored as an int between 0 and 2**64-1)"
            ),
            Error::Tls { server, detail } => write!(f, "TLS with memcached server {server} failed: {detail}"),
            Error::Auth {
                server,
                problem: AuthProblem::Rejected { username },
            } => write!(
                f,
                "memcached server {server} rejected the credentials of user {username:?} \
                 (OPTIONS USERNAME and PASSWORD)"
            ),
            Error::Auth {
                server,
                problem: AuthProblem::Required,
            } => write!(
                f,
                "memcached server {server} requires authentication (it runs with -Y): \
                 set OPTIONS USERNAME and PASSWORD"
            ),
            Error::Config(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
