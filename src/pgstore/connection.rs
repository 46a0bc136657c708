//! PostgreSQL connections, pooled by `crate::pool`.
//!
//! A connection whose state is in doubt (a failed call inside a
//! transaction, a lost connection) is poisoned and closed when its lease
//! ends instead of handed to the next caller.

use std::time::Duration;

use postgres::{Client, NoTls};

use crate::health::Health;
use crate::pool::{self, Dial};

use super::error::{Error, Result};

/// Idle connections older than this are closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) type Pool = pool::Pool<Dialer>;

pub(crate) struct PgConnection {
    pub(crate) client: Client,
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
        self.poisoned || self.client.is_closed()
    }
}

pub(crate) struct Dialer(postgres::Config);

impl Dial for Dialer {
    type Conn = PgConnection;
    type Error = Error;

    fn dial(&self) -> Result<PgConnection> {
        let client = self.0.connect(NoTls).map_err(|e| Error::Connect(e.to_string()))?;
        Ok(PgConnection {
            client,
            poisoned: false,
            lost: None,
        })
    }

    fn is_reusable(&self, conn: &PgConnection) -> bool {
        !conn.is_broken()
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
        } else if conn.client.is_closed() {
            health.failed(&"PostgreSQL connection closed");
        } else {
            health.succeeded();
        }
        !conn.is_broken()
    }
}

/// A pool of `size` connections; a caller waits up to `wait_timeout` for
/// one when all are in use.
pub(crate) fn pool(config: postgres::Config, size: usize, wait_timeout: Duration) -> Pool {
    let limits = pool::Config {
        max_idle: size,
        max_open: Some(size),
        wait: wait_timeout,
        idle_timeout: IDLE_TIMEOUT,
    };
    let server = server_name(&config);
    Pool::new(Dialer(config), limits, server)
}

/// How log lines name the server: "PostgreSQL server host:port/database".
fn server_name(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(name)) => name.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("PostgreSQL server {host}:{port}/{database}")
}
