//! One Redis server as a client sees it: how a connection to it is opened
//! (TLS, login, database) and its pool. Connections are leased for one
//! exchange each (`net::Lease`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use serde::Deserialize;

use crate::config::seconds;
use crate::net::spin::SpinWait;
use crate::net::{
    Address, Connection, Endpoint, OpenError, Opening, Refusals, Refused, Secret, ServerError, TlsOptions, TlsTarget,
};
use crate::pool::{self, Dial};
use crate::sync::locked;

use super::client::{Commands, Replies};
use super::error::{Error, Result};
use super::resp::{self, Value};

/// What `opening_failed` adds when a server does not answer in TLS.
const TLS_HINT: &str = "is this the server's tls-port?";

/// Connection settings shared by every server of a client: the backend's
/// OPTIONS of the same names (defaults, checks and the URL's parts are
/// Python's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Limit on dialing a server (TLS and login included), and on waiting
    /// for a free connection when `max_connections` is reached.
    #[serde(deserialize_with = "seconds")]
    pub connect_timeout: Duration,
    /// Limit on each exchange (a request and its whole reply).
    #[serde(deserialize_with = "seconds")]
    pub io_timeout: Duration,
    /// Idle connections kept per server.
    pub pool_size: usize,
    /// Hard cap on open connections per server (`None`: no cap).
    #[serde(deserialize_with = "Option::deserialize")]
    pub max_connections: Option<usize>,
    /// Idle connections older than this are closed instead of reused.
    #[serde(deserialize_with = "seconds")]
    pub idle_timeout: Duration,
    /// Longest busy-wait for a reply before sleeping (zero: never spin).
    #[serde(deserialize_with = "seconds")]
    pub spin_wait: Duration,
    /// TLS to every server (`None`: plain text).
    #[serde(deserialize_with = "Option::deserialize")]
    pub tls: Option<TlsOptions>,
    /// `AUTH [username] password` (an ACL user, or the default user).
    #[serde(deserialize_with = "Option::deserialize")]
    pub username: Option<String>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub password: Option<Secret>,
    /// The logical database (`SELECT`).
    pub db: u32,
    /// `CLIENT SETNAME`, shown by `CLIENT LIST`.
    #[serde(deserialize_with = "Option::deserialize")]
    pub client_name: Option<String>,
    /// Reads (get, get_many, has_key) go to a replica when LOCATION lists
    /// some, as Django's RedisCache does (not in cluster mode: see `cluster`).
    pub read_from_replicas: bool,
    /// Commands that reach a server together share one round trip: one
    /// pipeline on one connection (see `net::combine`).
    pub combine_calls: bool,
    /// LOCATION lists seed nodes of a Redis Cluster: keys go to their
    /// slot's primary (see `cluster`).
    pub cluster: bool,
    /// LOCATION lists Redis Sentinels, which name this service's primary
    /// (see `sentinel`).
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
}

/// The service Sentinels are asked about, and the login the Sentinels
/// themselves take (a primary's password is often not theirs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    pub service: String,
    #[serde(deserialize_with = "Option::deserialize")]
    pub username: Option<String>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub password: Option<Secret>,
    /// How often the Sentinels are asked whether the primary changed
    /// while it answers (see `sentinel`).
    #[serde(deserialize_with = "seconds")]
    pub check_interval: Duration,
}

/// The commands a new connection sends before its first request.
pub(crate) struct Login {
    /// `AUTH`, `SELECT`, `CLIENT SETNAME`, pipelined.
    request: Vec<u8>,
    commands: usize,
    /// The first command is `AUTH`.
    authenticates: bool,
    /// Under TLS a `PING` is added: a TLS 1.3 server refuses a client
    /// certificate only after the handshake, on the first read.
    pings: bool,
    /// A role check (`ROLE_CHECK`) is added, whose reply must not say
    /// "replica": a primary named by Sentinel may have been demoted since
    /// (see `sentinel`).
    checks_role: bool,
}

impl Login {
    pub(crate) fn new(config: &Config) -> Result<Login> {
        let mut request = Vec::new();
        let mut commands = 0;
        let authenticates = config.password.is_some();
        if let Some(password) = &config.password {
            let password = password.0.as_bytes();
            match &config.username {
                Some(user) => resp::command(&mut request, &[b"AUTH", user.as_bytes(), password]),
                None => resp::command(&mut request, &[b"AUTH", password]),
            }
            commands += 1;
        } else if config.username.is_some() {
            return Err(Error::Config("USERNAME needs a PASSWORD".into()));
        }
        if config.db != 0 {
            resp::command(&mut request, &[b"SELECT", config.db.to_string().as_bytes()]);
            commands += 1;
        }
        if let Some(name) = &config.client_name {
            if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(Error::Config(
                    "client_name must be non-empty, without spaces or control characters".into(),
                ));
            }
            resp::command(&mut request, &[b"CLIENT", b"SETNAME", name.as_bytes()]);
            commands += 1;
        }
        let pings = config.tls.is_some();
        if pings {
            resp::command(&mut request, &[b"PING"]);
            commands += 1;
        }
        Ok(Login {
            request,
            commands,
            authenticates,
            pings,
            checks_role: false,
        })
    }

    /// This login, then the role check: a connection opens only on a
    /// server that does not say it is a replica.
    pub(crate) fn checking_role(mut self) -> Login {
        resp::command(&mut self.request, ROLE_CHECK);
        self.commands += 1;
        self.checks_role = true;
        self
    }

    fn is_needed(&self) -> bool {
        self.commands > 0
    }

    /// Send the commands and check every reply (all are read, so a
    /// refusal of the first leaves nothing unread).
    fn run(&self, conn: &mut Connection, server: &str) -> Result<()> {
        let failed = |error| Error::from_io(server, error);
        // write_now, not send: send would start an IO_TIMEOUT deadline in
        // place of the opening's CONNECT_TIMEOUT one.
        conn.write_now(&self.request).map_err(failed)?;
        let mut first_error = None;
        // The added commands come last: PING, then the role check.
        let role_at = self.checks_role.then(|| self.commands - 1);
        let ping_at = self.pings.then(|| self.commands - 1 - usize::from(self.checks_role));
        for index in 0..self.commands {
            let reply = resp::read(conn).map_err(failed)?;
            let error = match reply {
                reply if role_at == Some(index) => match says_replica(&reply) {
                    true => not_primary(server),
                    false => continue,
                },
                Value::Status(status) if status == "OK" || (ping_at == Some(index) && status == "PONG") => continue,
                Value::Error(message) if index == 0 && self.authenticates => Error::Auth {
                    server: server.to_owned(),
                    message,
                },
                Value::Error(message) => Error::refused(server, &message),
                other => Error::protocol(server, format!("unexpected reply {other:?} to the login")),
            };
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Why the last try to learn where calls go (a cluster's slot map,
/// Sentinel's primary) failed, and when, while nothing is known yet. The
/// callers that waited for that try, or come soon after it, get its error
/// at once: with servers that do not answer, callers would otherwise ask
/// one after another, each waiting out the timeouts behind the others.
pub(crate) struct FirstTry(Mutex<Option<(Instant, Error)>>);

impl FirstTry {
    pub(crate) fn new() -> Self {
        FirstTry(Mutex::new(None))
    }

    /// The error of a try that failed after the caller `arrived`, or less
    /// than `interval` ago.
    pub(crate) fn failure(&self, arrived: Instant, interval: Duration) -> Option<Error> {
        let failed = locked(&self.0);
        let (at, error) = failed.as_ref()?;
        (*at >= arrived || at.elapsed() < interval).then(|| error.duplicate())
    }

    pub(crate) fn failed(&self, error: &Error) {
        *locked(&self.0) = Some((Instant::now(), error.duplicate()));
    }
}

/// How a client asks a server whether it is a replica: `HELLO 2` (which
/// keeps RESP2) reports a "role", and, unlike `ROLE` (an `@admin`
/// command), any ACL user may send it.
pub(crate) const ROLE_CHECK: &[&[u8]] = &[b"HELLO", b"2"];

/// Whether the reply to `ROLE_CHECK` says the server is a replica. A
/// server that cannot say (one without `HELLO`, before Redis 6) is taken
/// at the Sentinels' word: a write it refuses (`READONLY`) still moves
/// the call.
pub(crate) fn says_replica(reply: &Value) -> bool {
    let Value::Array(Some(fields)) = reply else {
        return false;
    };
    fields.chunks(2).any(|field| match field {
        [Value::Bulk(Some(name)), Value::Bulk(Some(role))] => {
            name == b"role" && (role == b"replica" || role == b"slave")
        }
        _ => false,
    })
}

/// The error of a connection to a server that Sentinel named the primary
/// but that is a replica now (demoted by a failover): like a refused
/// connection, nothing was sent on it.
pub(crate) fn not_primary(server: &str) -> Error {
    Error::Connect {
        server: server.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "not the primary (a replica now): a failover is under way or done",
        ),
    }
}

/// A Redis server: its pool, and the combiner of concurrent commands to
/// it (`Config::combine_calls`).
pub(crate) type Server = Endpoint<Dialer, Commands, Replies>;

/// A new server's pool and combiner.
pub(crate) fn new(address: Address, tls: Option<TlsTarget>, login: Arc<Login>, config: &Config) -> Server {
    let dialer = Dialer {
        name: address.to_string(),
        address,
        tls,
        login,
        config: config.clone(),
        spin: Arc::new(SpinWait::new(config.spin_wait)),
        refusals: Refusals::new(),
    };
    let limits = pool::Config {
        max_idle: config.pool_size,
        max_open: config.max_connections,
        wait: config.connect_timeout,
        idle_timeout: config.idle_timeout,
    };
    Endpoint::new(dialer, limits, "Redis")
}

/// The servers a client meets at run time (a cluster's nodes, the
/// primaries Sentinel names), one per address, each with its pool, made
/// on first use. Locked only to look one up or add one, never across I/O.
pub(crate) struct KnownServers {
    servers: Mutex<HashMap<String, Arc<Server>>>,
    /// The TLS configuration they share (`None`: plain text).
    tls: Option<Arc<ClientConfig>>,
    login: Arc<Login>,
    config: Config,
}

impl KnownServers {
    pub(crate) fn new(tls: Option<Arc<ClientConfig>>, login: Arc<Login>, config: Config) -> Self {
        KnownServers {
            servers: Mutex::new(HashMap::new()),
            tls,
            login,
            config,
        }
    }

    /// The server at `address`, made on first use.
    pub(crate) fn get(&self, address: &Address) -> Result<Arc<Server>> {
        let name = address.to_string();
        if let Some(server) = locked(&self.servers).get(&name) {
            return Ok(Arc::clone(server));
        }
        let tls = match &self.tls {
            None => None,
            Some(config) => {
                let options = self.config.tls.as_ref();
                let name = crate::net::server_name(address, options.and_then(|o| o.server_name.as_deref()), "Redis")
                    .map_err(|detail| Error::Tls {
                        server: name.clone(),
                        detail,
                    })?;
                let target = TlsTarget {
                    config: Arc::clone(config),
                    name,
                };
                Some(target.for_this_process())
            }
        };
        let made = Arc::new(new(address.clone(), tls, Arc::clone(&self.login), &self.config));
        // Another thread may have made it meanwhile: theirs is kept.
        Ok(Arc::clone(locked(&self.servers).entry(name).or_insert(made)))
    }

    /// Every server made so far, by name.
    pub(crate) fn all(&self) -> Vec<Arc<Server>> {
        let mut servers: Vec<Arc<Server>> = locked(&self.servers).values().cloned().collect();
        servers.sort_by(|a, b| a.name().cmp(b.name()));
        servers
    }
}

impl Server {
    pub(crate) fn address(&self) -> &Address {
        &self.pool.dialer.address
    }
}

/// Run one request/reply exchange on a leased connection of `server`. It
/// goes back to the pool only if the exchange left the stream in step.
pub(crate) fn exchange<T>(server: &Server, run: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
    server.lease()?.exchange(run)
}

/// The reply of one command: an error reply becomes the error (the
/// connection stays in step: the reply was read whole).
pub(crate) fn reply(conn: &mut Connection, server: &Server) -> Result<Value> {
    match resp::read(conn).map_err(server.io_error())? {
        Value::Error(message) => Err(Error::refused(server.name(), &message)),
        value => Ok(value),
    }
}

/// Where one command goes: a server, and whether it must be preceded by
/// `ASKING` (a cluster node importing the key's slot serves it only then).
#[derive(Clone, Copy)]
pub(crate) struct Route<'s> {
    pub(crate) server: &'s Server,
    pub(crate) asking: bool,
}

/// Send the command `write` appends (after `ASKING` if the route says so,
/// pipelined: the flag holds for the next command only) and read its reply.
pub(crate) fn round_trip(conn: &mut Connection, route: Route<'_>, write: impl FnOnce(&mut Vec<u8>)) -> Result<Value> {
    let server = route.server;
    if route.asking {
        resp::command(&mut conn.out, &[b"ASKING"]);
    }
    write(&mut conn.out);
    conn.send().map_err(server.io_error())?;
    if route.asking {
        match resp::read(conn).map_err(server.io_error())? {
            Value::Status(status) if status == "OK" => {}
            Value::Error(message) => {
                // The command's reply is still due: read it to stay in step.
                match reply(conn, server) {
                    Err(error) if !error.keeps_connection() => return Err(error),
                    _ => return Err(Error::refused(server.name(), &message)),
                }
            }
            other => {
                return Err(Error::protocol(
                    server.name(),
                    format!("unexpected reply {other:?} to ASKING"),
                ));
            }
        }
    }
    reply(conn, server)
}

/// A connection checked out for one exchange (see `net::Lease`).
pub(crate) type Lease<'a> = crate::net::Lease<'a, Dialer>;

/// How connections to one server are opened.
pub(crate) struct Dialer {
    address: Address,
    /// How errors name the server ("127.0.0.1:6379").
    name: String,
    tls: Option<TlsTarget>,
    login: Arc<Login>,
    config: Config,
    spin: Arc<SpinWait>,
    refusals: Refusals<Error>,
}

impl Refused for Dialer {
    fn refusals(&self) -> &Refusals<Error> {
        &self.refusals
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl From<OpenError> for Error {
    fn from(error: OpenError) -> Error {
        match error {
            OpenError::Connect { server, source } => Error::Connect { server, source },
            OpenError::Tls { server, detail } => Error::Tls { server, detail },
        }
    }
}

impl Dial for Dialer {
    type Conn = Connection;
    type Error = Error;

    fn dial(&self) -> Result<Connection> {
        let opening = Opening {
            address: &self.address,
            server: &self.name,
            tls: self.tls.as_ref(),
            connect_timeout: self.config.connect_timeout,
            io_timeout: self.config.io_timeout,
            spin: &self.spin,
            tls_hint: TLS_HINT,
        };
        let mut login = |conn: &mut Connection| self.login.run(conn, &self.name);
        let confirm: Option<crate::net::Confirm<'_, Error>> = match self.login.is_needed() {
            true => Some(&mut login),
            false => None,
        };
        self.refusals.dial(|| Connection::open(&opening, confirm))
    }

    /// Not closed by a restarted server, and holding no stray bytes.
    fn is_reusable(&self, conn: &mut Connection) -> bool {
        conn.is_reusable()
    }

    fn all_busy(&self, cap: usize, _waited: Duration) -> Error {
        Error::Timeout {
            server: format!("{} (all {cap} connections busy)", self.name),
        }
    }
}
