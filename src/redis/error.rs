//! Errors of the Redis store.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// The server could not be reached (refused, unreachable, resolve failed).
    Connect { server: String, source: io::Error },
    /// No reply within the I/O timeout (or no connection within the connect
    /// timeout). The connection, if any, was discarded.
    Timeout { server: String },
    /// The connection failed mid-exchange; it was discarded.
    Io { server: String, source: io::Error },
    /// A reply that does not belong to the request (garbage, a reply of
    /// the wrong kind). The connection was discarded.
    Protocol { server: String, detail: String },
    /// The server refused the command (an `-ERR` reply): the reply was
    /// read whole, so the connection stays in step.
    Server { server: String, message: String },
    /// `incr` of a value Redis cannot count with (not an integer).
    NotAnInteger { server: String },
    /// `incr` past the range of a 64-bit signed integer.
    Overflow { server: String },
    /// The key holds another kind of value than the command works on (a
    /// set where a string is read, a string where a hash is written).
    WrongType { server: String, message: String },
    /// The TLS handshake failed.
    Tls { server: String, detail: String },
    /// The server refused this client's login (`AUTH`), or asks for one.
    Auth { server: String, message: String },
    /// Bad settings, or a call that cannot be made (a primary that does not exist).
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the server (or the path to it) failed, as opposed to a
    /// refused request: only these count as failures in the stats, are
    /// logged as outages, and may be ignored with IGNORE_EXCEPTIONS.
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

    /// Errors after which the stream is still in step: the whole reply
    /// was read, so the connection may serve another request.
    pub(crate) fn keeps_connection(&self) -> bool {
        matches!(
            self,
            Error::Server { .. } | Error::NotAnInteger { .. } | Error::Overflow { .. } | Error::WrongType { .. }
        )
    }

    pub(crate) fn protocol(server: &str, detail: impl Into<String>) -> Error {
        Error::Protocol {
            server: server.to_owned(),
            detail: detail.into(),
        }
    }

    /// The error for an `-ERR ...` reply: the ones `incr` gives for a
    /// value it cannot count with get their own kinds (a script adds its
    /// own context after the message, so the start is compared).
    pub(crate) fn refused(server: &str, message: &str) -> Error {
        let server = server.to_owned();
        let text = message.strip_prefix("ERR ").unwrap_or(message);
        if text.starts_with("value is not an integer") {
            Error::NotAnInteger { server }
        } else if text.starts_with("increment or decrement would overflow") {
            Error::Overflow { server }
        } else if message.starts_with("WRONGTYPE") {
            Error::WrongType {
                server,
                message: message.to_owned(),
            }
        } else if message.starts_with("NOAUTH") || message.starts_with("WRONGPASS") {
            Error::Auth {
                server,
                message: message.to_owned(),
            }
        } else {
            Error::Server {
                server,
                message: message.to_owned(),
            }
        }
    }
}

/// A combined call that no server answered (see `net::combine`).
impl crate::net::Unanswered for Error {
    fn no_reply(server: &str) -> Error {
        Error::protocol(server, "the combined round trip ended without a reply for this call")
    }

    fn out_of_patience(server: &str) -> Error {
        Error::Timeout {
            server: server.to_owned(),
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

    /// Its TLS or its login, which trying again at once will not change.
    fn keeps_connection(&self) -> bool {
        Error::keeps_connection(self)
    }

    fn is_refusal(&self) -> bool {
        matches!(self, Error::Tls { .. } | Error::Auth { .. })
    }

    /// A copy for another caller (io errors keep their kind and text).
    fn duplicate(&self) -> Error {
        let io = |source: &io::Error| io::Error::new(source.kind(), source.to_string());
        match self {
            Error::Connect { server, source } => Error::Connect {
                server: server.clone(),
                source: io(source),
            },
            Error::Timeout { server } => Error::Timeout { server: server.clone() },
            Error::Io { server, source } => Error::Io {
                server: server.clone(),
                source: io(source),
            },
            Error::Protocol { server, detail } => Error::protocol(server, detail.clone()),
            Error::Server { server, message } => Error::Server {
                server: server.clone(),
                message: message.clone(),
            },
            Error::NotAnInteger { server } => Error::NotAnInteger { server: server.clone() },
            Error::Overflow { server } => Error::Overflow { server: server.clone() },
            Error::WrongType { server, message } => Error::WrongType {
                server: server.clone(),
                message: message.clone(),
            },
            Error::Tls { server, detail } => Error::Tls {
                server: server.clone(),
                detail: detail.clone(),
            },
            Error::Auth { server, message } => Error::Auth {
                server: server.clone(),
                message: message.clone(),
            },
            Error::Config(message) => Error::Config(message.clone()),
        }
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
            Error::Connect { server, source } => write!(f, "cannot connect to Redis server {server}: {source}"),
            Error::Timeout { server } => write!(f, "Redis server {server} did not answer in time"),
            Error::Io { server, source } => write!(f, "connection to Redis server {server} failed: {source}"),
            Error::Protocol { server, detail } => {
                write!(f, "Redis server {server} sent an unexpected reply: {detail}")
            }
            Error::Server { server, message } => write!(f, "Redis server {server} refused the command: {message}"),
            Error::NotAnInteger { server } => write!(
                f,
                "the cached value is not an integer Redis server {server} can count with"
            ),
            Error::Overflow { server } => write!(
                f,
                "incr/decr on Redis server {server} would go past a 64-bit signed integer"
            ),
            Error::WrongType { server, message } => write!(
                f,
                "the key on Redis server {server} holds another kind of value than this call works on: {message}"
            ),
            Error::Tls { server, detail } => write!(f, "TLS with Redis server {server} failed: {detail}"),
            Error::Auth { server, message } => write!(
                f,
                "Redis server {server} refused the login: {message} (OPTIONS USERNAME and PASSWORD, or the URL's)"
            ),
            Error::Config(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for Error {}
