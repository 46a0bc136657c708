//! Errors of the PostgreSQL store.

use std::fmt;

use tokio_postgres::error::SqlState;

#[derive(Debug)]
pub enum Error {
    /// No connection: the server is unreachable or the pool timed out.
    Connect(String),
    /// The connection broke during a call; it was discarded.
    ConnectionLost(String),
    /// The server cancelled the statement (statement_timeout).
    Timeout(String),
    /// No reply within the client's deadline (IO_TIMEOUT): the statement
    /// may or may not have run; the connection was discarded.
    NoReply(String),
    /// The server refused the statement (missing table, constraint, ...).
    Database { code: String, message: String },
    /// A key the cache table cannot hold; nothing was sent.
    InvalidKey(String),
    /// Bad settings.
    Config(String),
}

impl Error {
    /// Classify a driver error.
    pub(crate) fn from_pg(error: &tokio_postgres::Error) -> Error {
        if let Some(db) = error.as_db_error() {
            let code = db.code();
            if *code == SqlState::QUERY_CANCELED {
                return Error::Timeout(db.message().to_owned());
            }
            if is_connection_loss_code(code) {
                return Error::ConnectionLost(db.message().to_owned());
            }
            return Error::Database {
                code: code.code().to_owned(),
                message: db.message().to_owned(),
            };
        }
        if error.is_closed() || is_io(error) {
            return Error::ConnectionLost(error.to_string());
        }
        Error::Database {
            code: String::new(),
            message: error.to_string(),
        }
    }

    /// The connection broke before the statement was sent or ran: it
    /// can be sent again on a new one.
    pub(crate) fn is_connection_loss(&self) -> bool {
        matches!(self, Error::ConnectionLost(_))
    }

    /// The connection cannot be used again (lost, or its state unknown).
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(self, Error::ConnectionLost(_) | Error::NoReply(_))
    }
}

fn is_connection_loss_code(code: &SqlState) -> bool {
    *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::CONNECTION_FAILURE
        || *code == SqlState::CONNECTION_EXCEPTION
}

fn is_io(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(message) => write!(f, "cannot connect to PostgreSQL: {message}"),
            Error::ConnectionLost(message) => write!(f, "PostgreSQL connection lost: {message}"),
            Error::Timeout(message) => write!(f, "PostgreSQL cancelled the statement: {message}"),
            Error::NoReply(message) => write!(f, "PostgreSQL did not answer: {message}"),
            Error::Database { code, message } if code.is_empty() => write!(f, "PostgreSQL error: {message}"),
            Error::Database { code, message } => write!(f, "PostgreSQL error {code}: {message}"),
            Error::InvalidKey(reason) => write!(f, "cache key {reason}"),
            Error::Config(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

impl crate::stats::Failure for Error {
    fn is_failure(&self) -> bool {
        !matches!(self, Error::InvalidKey(_) | Error::Config(_))
    }
}
