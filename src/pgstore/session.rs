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

use tokio::runtime::{Builder, Runtime};
use tokio::time::timeout;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, NoTls, Row};

use super::error::{Error, Result};

pub(crate) struct Session {
    runtime: Runtime,
    client: Client,
    reply_timeout: Duration,
}

impl Session {
    /// Connect and authenticate within `connect_timeout`.
    pub(crate) fn connect(config: &Config, connect_timeout: Duration, reply_timeout: Duration) -> Result<Session> {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Connect(format!("cannot start the connection's runtime: {e}")))?;
        let (client, connection) = runtime
            // The timer is made inside: it needs the runtime's context.
            .block_on(async { timeout(connect_timeout, config.connect(NoTls)).await })
            .map_err(|_| {
                Error::Connect(format!(
                    "the server did not complete the startup within {:.1} s (CONNECT_TIMEOUT)",
                    connect_timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| Error::Connect(e.to_string()))?;
        // Reads and writes the socket whenever a call runs the runtime; its
        // end (an error included) shows as a closed client.
        runtime.spawn(async move {
            let _ = connection.await;
        });
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
