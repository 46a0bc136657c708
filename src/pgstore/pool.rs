//! An r2d2 pool of PostgreSQL connections.
//!
//! Like `r2d2_postgres`, plus a poison flag: a connection whose state is in
//! doubt (a failed call inside a transaction, a lost connection) is
//! discarded when it comes back instead of handed to the next caller.

use postgres::{Client, NoTls};

pub(crate) struct PgConnection {
    pub(crate) client: Client,
    poisoned: bool,
}

impl PgConnection {
    pub(crate) fn poison(&mut self) {
        self.poisoned = true;
    }
}

pub(crate) struct Manager {
    pub(crate) config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConnection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConnection, postgres::Error> {
        Ok(PgConnection {
            client: self.config.connect(NoTls)?,
            poisoned: false,
        })
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(drop)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.poisoned || conn.client.is_closed()
    }
}

/// Logs why new connections fail (r2d2 retries them in the background).
#[derive(Debug)]
pub(crate) struct QuietErrors;

impl<E> r2d2::HandleError<E> for QuietErrors {
    fn handle_error(&self, _error: E) {}
}
