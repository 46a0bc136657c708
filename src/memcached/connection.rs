//! One connection to one memcached server: the shared `net::Connection`,
//! plus what memcached's protocol does on it (the round trip that confirms
//! a new connection, opaque tokens, the `mn` no-op).

use std::io;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use crate::net::spin::SpinWait;
use crate::net::{self, Address, Opening, opening_failed};

use super::error::{AuthProblem, Error, Result};
use super::handshake::Handshake;

/// What a TLS error for a server that did not answer in TLS tells the user
/// to check (`net::Opening::tls_hint`).
const TLS_HINT: &str = "is it started with -Z, on this port?";

/// A memcached connection: a `net::Connection` (which it derefs to, for
/// `out`, `send`, `read_line` and the rest) and its opaque tokens.
pub(crate) struct Connection {
    net: net::Connection,
    next_opaque: u32,
}

impl Deref for Connection {
    type Target = net::Connection;

    fn deref(&self) -> &net::Connection {
        &self.net
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut net::Connection {
        &mut self.net
    }
}

impl Connection {
    /// Connect to `address` and go through `handshake` (TLS, login), all
    /// within `connect_timeout`. `server` names the server in errors.
    pub(crate) fn open(
        address: &Address,
        server: &str,
        handshake: &Handshake,
        connect_timeout: Duration,
        io_timeout: Duration,
        spin: &Arc<SpinWait>,
    ) -> Result<Connection> {
        let opening = Opening {
            address,
            server,
            tls: handshake.tls.as_ref(),
            connect_timeout,
            io_timeout,
            spin,
            tls_hint: TLS_HINT,
        };
        // The confirming round trip: plain connections without a login
        // skip it (`Handshake::confirms`).
        let mut round_trip = |conn: &mut net::Connection| confirm(conn, handshake, server);
        let confirm = handshake
            .confirms()
            .then_some(&mut round_trip as net::Confirm<'_, Error>);
        Ok(Connection {
            net: net::Connection::open(&opening, confirm)?,
            next_opaque: 0,
        })
    }

    /// A fresh opaque token for the next request.
    pub(crate) fn opaque(&mut self) -> u32 {
        self.next_opaque = self.next_opaque.wrapping_add(1);
        self.next_opaque
    }

    /// Write a no-op (`mn`) within the current exchange: its deadline
    /// stays, and its reply is read after the others'.
    pub(crate) fn send_no_op(&mut self) -> io::Result<()> {
        self.net.write_now(b"mn\r\n")
    }
}

/// The round trip that confirms a new connection: `version`, which a
/// server with a login (`-Y`) refuses until it had one; then the login
/// if it asks. Credentials are sent only to a server that asks for
/// them (one without `-Y` would store them as an item). (Not `mn`: a
/// TLS-only port waits for a record header's five bytes before it
/// drops a plain-text client.)
fn confirm(conn: &mut net::Connection, handshake: &Handshake, server: &str) -> Result<()> {
    let failed = |error: io::Error| Error::from(opening_failed(server, error, TLS_HINT));
    conn.write_now(b"version\r\n").map_err(failed)?;
    let reply = conn.read_line().map_err(failed)?;
    if reply.starts_with(b"VERSION ") {
        return Ok(());
    }
    if reply != b"CLIENT_ERROR unauthenticated" {
        let reply = String::from_utf8_lossy(reply).into_owned();
        return Err(Error::protocol(
            server,
            format!("unexpected reply {reply:?} to `version`"),
        ));
    }
    let Some(credentials) = &handshake.credentials else {
        return Err(Error::Auth {
            server: server.to_owned(),
            problem: AuthProblem::Required,
        });
    };
    conn.write_now(&credentials.login_request()).map_err(failed)?;
    match conn.read_line().map_err(failed)? {
        b"STORED" => Ok(()),
        b"CLIENT_ERROR authentication failure" => Err(Error::Auth {
            server: server.to_owned(),
            problem: AuthProblem::Rejected {
                username: credentials.username.clone(),
            },
        }),
        other => {
            let reply = String::from_utf8_lossy(other).into_owned();
            Err(Error::protocol(
                server,
                format!("unexpected reply {reply:?} to the login"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared opening errors, in memcached's words.
    fn failed(error: io::Error) -> String {
        Error::from(opening_failed("127.0.0.1:11211", error, TLS_HINT)).to_string()
    }

    #[test]
    fn opening_errors_name_memcached_and_its_flags() {
        let not_tls = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let message = failed(io::Error::new(io::ErrorKind::InvalidData, not_tls));
        assert!(
            message.starts_with("TLS with memcached server 127.0.0.1:11211 failed: ")
                && message.ends_with(": the server did not answer in TLS; is it started with -Z, on this port?"),
            "{message}"
        );
        let message = failed(io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(
            message,
            "cannot connect to memcached server 127.0.0.1:11211: no TLS handshake and login within CONNECT_TIMEOUT"
        );
    }
}
