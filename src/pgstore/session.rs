//! One PostgreSQL connection with a deadline on every exchange.
//!
//! The `postgres` crate's blocking client has no client-side timeout: its
//! connect timeout covers the TCP connect only, and `statement_timeout` is
//! enforced by the server. A server that accepts and never answers (frozen,
//! behind a pooler that queues clients, or across a network that drops
//! packets) would hold the caller for ever. A session drives tokio-postgres
//! on a single-threaded runtime of its own, as that client does, and puts a
//! timer on each exchange: the whole startup (TCP, authentication) gets the
//! connect timeout, each statement the reply timeout. A session that missed
//! a deadline is in an unknown state and is discarded by its pool.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use tokio::runtime::{Builder, Runtime};
use tokio::time::timeout;
use tokio_postgres::config::{Host, SslMode as WireMode};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::{Error, Result};
use super::tls::{SslMode, Tls};

pub(crate) struct Session {
    runtime: Runtime,
    client: Client,
    reply_timeout: Duration,
}

impl Session {
    /// Connect and authenticate within `connect_timeout`, with TLS as
    /// `tls` says.
    pub(crate) fn connect(
        config: &Config,
        tls: &Tls,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Session> {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Connect(format!("cannot start the connection's runtime: {e}")))?;
        let client = runtime
            // The timer is made inside: it needs the runtime's context.
            .block_on(async { timeout(connect_timeout, negotiate(config, tls)).await })
            .map_err(|_| {
                Error::Connect(format!(
                    "the server did not complete the startup within {:.1} s (CONNECT_TIMEOUT)",
                    connect_timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| Error::Connect(describe(&e, tls.mode)))?;
        Ok(Session {
            runtime,
            client,
            reply_timeout,
        })
    }

    fn within<T>(&self, exchange: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>) -> Result<T> {
        match self
            .runtime
            .block_on(async { timeout(self.reply_timeout, exchange).await })
        {
            Ok(result) => result.map_err(|e| Error::from_pg(&e)),
            Err(_) => Err(Error::NoReply(format!(
                "no reply within {:.1} s (IO_TIMEOUT)",
                self.reply_timeout.as_secs_f64()
            ))),
        }
    }

    /// One unprepared statement with typed parameters: one round trip.
    pub(crate) fn query(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<Row>> {
        self.within(self.client.query_typed(sql, params))
    }

    /// Statements without parameters, in one round trip.
    pub(crate) fn batch_execute(&self, sql: &str) -> Result<()> {
        self.within(self.client.batch_execute(sql))
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Whether the server is still connected, as far as the socket shows
    /// without a round trip: the runtime polls its I/O once (`yield_now`
    /// defers until after that poll) and lets the connection task read an
    /// end of stream or a termination notice a restarted server sent.
    pub(crate) fn is_alive(&self) -> bool {
        self.runtime.block_on(async {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        });
        !self.client.is_closed()
    }
}

/// A started session as libpq's `sslmode` asks: `allow` tries plain first
/// and TLS if the server refuses that; `prefer` tries TLS first and plain
/// if the server has no TLS or the handshake fails; the others insist on
/// what they ask for. Unix sockets never use TLS, as in libpq.
async fn negotiate(config: &Config, tls: &Tls) -> std::result::Result<Client, tokio_postgres::Error> {
    let on_unix_socket = matches!(config.get_hosts().first(), Some(Host::Unix(_)));
    let client_config = match &tls.client {
        Some(client_config) if !on_unix_socket => client_config,
        _ => return start(config, WireMode::Disable, None).await,
    };
    match tls.mode {
        SslMode::Disable => start(config, WireMode::Disable, None).await,
        SslMode::Allow => match start(config, WireMode::Disable, None).await {
            Err(refused) if refused.as_db_error().is_some() => {
                start(config, WireMode::Require, Some(client_config)).await
            }
            other => other,
        },
        SslMode::Prefer => match start(config, WireMode::Prefer, Some(client_config)).await {
            Err(failed) if tls_failure(&failed).is_some() => start(config, WireMode::Disable, None).await,
            other => other,
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            start(config, WireMode::Require, Some(client_config)).await
        }
    }
}

/// One connection attempt; its connection task runs on the session's
/// runtime, reading and writing the socket whenever a call runs the
/// runtime (its end, an error included, shows as a closed client).
async fn start(
    config: &Config,
    mode: WireMode,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> std::result::Result<Client, tokio_postgres::Error> {
    let mut config = config.clone();
    config.ssl_mode(mode);
    match tls {
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        Some(tls) => {
            let (client, connection) = config.connect(MakeRustlsConnect::new((**tls).clone())).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
    }
}

/// The TLS error behind a failed connection attempt, if that is why.
fn tls_failure(error: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        source = match cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner),
            None => cause.source(),
        };
    }
    None
}

/// Why a connection attempt failed, naming a TLS cause plainly.
fn describe(error: &tokio_postgres::Error, mode: SslMode) -> String {
    match tls_failure(error) {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => format!(
            "the server's certificate is not signed by a CA in sslrootcert (sslmode={}): {}",
            mode.name(),
            crate::tls::describe(&rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        Some(tls) => format!("{} (sslmode={})", crate::tls::describe(tls), mode.name()),
        None => match error.as_db_error() {
            // The server's own words: "no pg_hba.conf entry for ...".
            Some(refusal) => format!("the server refused: {}", refusal.message()),
            None => with_causes(error),
        },
    }
}

/// An error and what caused it, "a: b: c": tokio-postgres's own message
/// alone is often only "error performing TLS handshake".
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
