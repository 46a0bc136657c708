//! PostgreSQL connections, pooled by `crate::pool`.
//!
//! A connection whose state is in doubt (a failed call inside a
//! transaction, a lost connection) is poisoned and closed when its lease
//! ends instead of handed to the next caller.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use tokio_postgres::Config;

use crate::config::{optional_seconds, seconds};
use crate::health::Health;
use crate::pool::{self, Dial};

use super::error::{Error, Result};
use super::session::Session;
use super::tls::{SslParams, Tls, split_dsn};

/// The PostgreSQL backend's OPTIONS of the same names (defaults and checks
/// are Python's), all about its connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Connections per process.
    pub pool_size: u32,
    /// Longest wait for a connection: for a free pooled one, and for a new
    /// one's whole startup (TCP, authentication).
    #[serde(deserialize_with = "seconds")]
    pub connect_timeout: Duration,
    /// The client's own deadline for each statement's reply, which holds
    /// when the server cannot enforce `statement_timeout` (frozen, queued
    /// by a pooler, unreachable); also the TCP user timeout.
    #[serde(deserialize_with = "seconds")]
    pub io_timeout: Duration,
    /// Sent as the session's `statement_timeout`: a statement stuck on a
    /// lock or a slow disk is cancelled by the server instead of holding
    /// the caller (None: the server's setting).
    #[serde(deserialize_with = "optional_seconds")]
    pub statement_timeout: Option<Duration>,
    /// Idle connections older than this are closed instead of reused.
    #[serde(deserialize_with = "seconds")]
    pub idle_timeout: Duration,
}

pub(crate) type Pool = pool::Pool<Dialer>;

pub(crate) struct PgConnection {
    pub(crate) session: Session,
    poisoned: bool,
    /// Why the connection broke, if it did.
    lost: Option<String>,
}

impl PgConnection {
    pub(crate) fn poison(&mut self) {
        self.poisoned = true;
    }

    /// The connection broke with `error`: discard it, and count the
    /// failure against the server's health.
    pub(crate) fn lost(&mut self, error: &Error) {
        self.poisoned = true;
        self.lost = Some(error.to_string());
    }

    fn is_broken(&self) -> bool {
        self.poisoned || self.session.is_closed()
    }
}

pub(crate) struct Dialer {
    config: Config,
    tls: Tls,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl Dial for Dialer {
    type Conn = PgConnection;
    type Error = Error;

    fn dial(&self) -> Result<PgConnection> {
        let session = Session::connect(&self.config, &self.tls, self.connect_timeout, self.io_timeout)?;
        Ok(PgConnection {
            session,
            poisoned: false,
            lost: None,
        })
    }

    fn is_reusable(&self, conn: &mut PgConnection) -> bool {
        !conn.is_broken() && conn.session.is_alive()
    }

    fn all_busy(&self, cap: usize, waited: Duration) -> Error {
        Error::Connect(format!(
            "all {cap} pooled connections stayed in use for {:.1} s (POOL_SIZE)",
            waited.as_secs_f64()
        ))
    }

    /// Every call's connection comes back unless it broke.
    fn keeps_unreleased(&self, conn: &PgConnection, health: &Health) -> bool {
        if let Some(why) = &conn.lost {
            health.failed(why);
        } else if conn.session.is_closed() {
            health.failed(&"PostgreSQL connection closed");
        } else {
            health.succeeded();
        }
        !conn.is_broken()
    }
}

/// A pool of connections to the server of `config`, as `options` say.
pub(crate) fn pool(config: &Config, tls: &Tls, options: &Options) -> Pool {
    let mut config = config.clone();
    config.connect_timeout(options.connect_timeout);
    // Unacknowledged data, and an idle connection whose peer vanished,
    // end the connection after about IO_TIMEOUT instead of the kernel's
    // 15 minutes and 2 hours.
    config.tcp_user_timeout(options.io_timeout);
    config.keepalives(true);
    config.keepalives_idle(options.io_timeout.max(Duration::from_secs(1)));
    config.keepalives_interval((options.io_timeout / 3).max(Duration::from_secs(1)));
    config.keepalives_retries(3);
    if let Some(timeout) = options.statement_timeout {
        let option = format!("-c statement_timeout={}", timeout.as_millis());
        let given = config.get_options().filter(|given| !given.is_empty());
        config.options(given.map_or(option.clone(), |given| format!("{given} {option}")));
    }
    let size = options.pool_size as usize;
    let limits = pool::Config {
        max_idle: size,
        max_open: Some(size),
        wait: options.connect_timeout,
        idle_timeout: options.idle_timeout,
    };
    let server = server_name(&config);
    let dialer = Dialer {
        config,
        tls: tls.clone(),
        connect_timeout: options.connect_timeout,
        io_timeout: options.io_timeout,
    };
    Pool::new(dialer, limits, server)
}

/// How log lines name the server: "PostgreSQL server host:port/database".
fn server_name(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("PostgreSQL server {host}:{port}/{database}")
}

/// Where and how to connect, from a libpq DSN (key/value or URL form) and
/// Django-style parameters (`host`, `port`, `user`, `password`, `dbname`,
/// `options`, `application_name` and libpq's TLS parameters), the latter
/// taking precedence. `home` is where libpq's `~/.postgresql` files are.
pub fn connection_settings(
    dsn: Option<&str>,
    params: &HashMap<String, String>,
    home: Option<std::path::PathBuf>,
) -> Result<(Config, Tls)> {
    let invalid = |e: String| Error::Config(format!("invalid PostgreSQL connection settings: {e}"));
    let (mut config, mut ssl) = match dsn {
        Some(dsn) => {
            let (rest, ssl) = split_dsn(dsn).map_err(invalid)?;
            (Config::from_str(&rest).map_err(|e| invalid(e.to_string()))?, ssl)
        }
        None => (Config::new(), SslParams::default()),
    };
    for (name, value) in params {
        match name.as_str() {
            "host" => {
                for host in value.split(',') {
                    config.host(host.trim());
                }
            }
            "port" => {
                let port = value.parse().map_err(|_| invalid(format!("invalid port {value:?}")))?;
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
                if !ssl.take(other, value).map_err(invalid)? {
                    return Err(invalid(format!("unsupported parameter {other:?}")));
                }
            }
        }
    }
    let tls = ssl.tls(home).map_err(invalid)?;
    Ok((config, tls))
}
