//! The Redis client: one primary and optional read replicas, or the
//! primaries of a Redis Cluster, each with a pool of connections; every
//! cache operation as one command or one server-side script, so none of
//! them is a read-then-write race.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fork::{Built, PerProcess};
use crate::net::{Address, RoundTrip, ServerError, ServerPool, TlsTarget, Unanswered, unrecorded};
use crate::stats::{Counters, Snapshot};

use super::cluster::{BatchOp, Cluster};
use super::error::{Error, Result};
use super::resp::{self, Value};
use super::scripts::{self, Script};
use super::sentinel::Sentinel;
use super::server::{self, Config, KnownServers, Lease, Login, Route, Server, exchange, reply, round_trip};
use super::slot::slot;

/// An expiry as the commands take it: `None` keeps the value until it is
/// evicted, `Some(0)` expires it at once (Django: "don't cache"), else
/// whole seconds, as Django's RedisCache rounds them.
pub type Ttl = Option<u64>;

/// A key's new expiry, for `Client::expire`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// This many milliseconds from now (`PEXPIRE`).
    AfterMs(i64),
    /// At this Unix time in milliseconds (`PEXPIREAT`).
    AtUnixMs(i64),
    /// Never: the expiry removed (`PERSIST`).
    Never,
}

/// What `get_many` read, per key in order (`None`: missing or failed).
pub type Values = Vec<Option<Vec<u8>>>;

/// The keys (indexes into the request) a batch could not serve, and why:
/// their node failed, or refused their command.
#[derive(Debug)]
pub struct BatchFailure {
    pub indexes: Vec<usize>,
    pub error: Error,
}

pub struct Client {
    stats: Counters,
    /// This process's servers (a forked child builds its own).
    nodes: PerProcess<Nodes>,
    addresses: Vec<Address>,
    tls: Vec<Option<TlsTarget>>,
    /// In cluster mode, the TLS configuration nodes found later share.
    cluster_tls: Option<Arc<rustls::ClientConfig>>,
    login: Arc<Login>,
    /// With Sentinel, the login the Sentinels take, and their settings.
    sentinel_login: Option<(Arc<Login>, Config)>,
    config: Config,
}

/// The servers calls go to.
enum Nodes {
    /// The primary first, then the replicas.
    Fixed(Vec<Server>),
    /// A cluster's nodes, by its slot map (LOCATION's servers are seeds).
    /// Boxed: it is far larger than a list, and built once per process.
    Cluster(Box<Cluster>),
    /// The primary that Sentinels name (LOCATION's servers are the
    /// Sentinels).
    Sentinel(Box<Sentinel>),
}

fn unexpected(server: &Server, what: &str, value: Value) -> Error {
    Error::protocol(server.name(), format!("unexpected reply {value:?} to {what}"))
}

fn bulk(server: &Server, value: Value) -> Result<Option<Vec<u8>>> {
    match value {
        Value::Bulk(data) => Ok(data),
        other => Err(unexpected(server, "a read", other)),
    }
}

/// A `SCAN` reply: the next cursor and a page of keys.
fn scan_page(server: &Server, value: Value) -> Result<(u64, Vec<Vec<u8>>)> {
    if let Value::Array(Some(parts)) = &value
        && let [Value::Bulk(Some(cursor)), Value::Array(Some(found))] = parts.as_slice()
        && let Some(cursor) = std::str::from_utf8(cursor).ok().and_then(|digits| digits.parse().ok())
        && let Some(keys) = found
            .iter()
            .map(|key| match key {
                Value::Bulk(Some(key)) => Some(key.clone()),
                _ => None,
            })
            .collect::<Option<Vec<Vec<u8>>>>()
    {
        return Ok((cursor, keys));
    }
    Err(unexpected(server, "SCAN", value))
}

fn integer(server: &Server, value: Value) -> Result<i64> {
    match value {
        Value::Int(n) => Ok(n),
        other => Err(unexpected(server, "a count", other)),
    }
}

/// `SET`'s reply: `OK`, or nil when `NX` found the key.
fn stored(server: &Server, value: Value) -> Result<bool> {
    match value {
        Value::Status(status) if status == "OK" => Ok(true),
        Value::Bulk(None) => Ok(false),
        other => Err(unexpected(server, "SET", other)),
    }
}

/// A TTL of whole seconds as the milliseconds sent (`PX`, `PEXPIRE`):
/// one less, since Redis still serves a key in its expiry's millisecond,
/// and a value stored for n seconds must not be read n seconds later
/// (Django's tests read at exactly that moment).
fn lifetime_ms(seconds: u64) -> u64 {
    seconds.saturating_mul(1000).saturating_sub(1).max(1)
}

/// `SET key value [PX ms] [NX]` (a TTL of 0 is the callers' to handle).
fn set_command(out: &mut Vec<u8>, key: &[u8], value: &[u8], ttl: Ttl, only_new: bool) {
    let mut ms = itoa::Buffer::new();
    let mut args: [&[u8]; 6] = [b"SET", key, value, b"", b"", b""];
    let mut n = 3;
    if let Some(ttl) = ttl {
        args[3] = b"PX";
        args[4] = ms.format(lifetime_ms(ttl)).as_bytes();
        n = 5;
    }
    if only_new {
        args[n] = b"NX";
        n += 1;
    }
    resp::command(out, &args[..n]);
}

/// `get_many` in cluster mode: `GET` per key.
struct Gets<'a>(&'a [&'a [u8]]);

impl BatchOp for Gets<'_> {
    type Out = Option<Vec<u8>>;

    fn write(&self, out: &mut Vec<u8>, index: usize) {
        resp::command(out, &[b"GET", self.0[index]]);
    }

    fn read(&self, server: &Server, value: Value) -> Result<Self::Out> {
        bulk(server, value)
    }
}

/// `set_many`: `SET` per key (true: stored).
struct Sets<'a> {
    entries: &'a [(&'a [u8], &'a [u8])],
    ttl: Ttl,
}

impl BatchOp for Sets<'_> {
    type Out = bool;

    fn write(&self, out: &mut Vec<u8>, index: usize) {
        let (key, value) = self.entries[index];
        set_command(out, key, value, self.ttl, false);
    }

    fn read(&self, server: &Server, value: Value) -> Result<bool> {
        stored(server, value)
    }
}

/// `delete_many` in cluster mode: `DEL` per key (true: it was there).
struct Deletes<'a>(&'a [&'a [u8]]);

impl BatchOp for Deletes<'_> {
    type Out = bool;

    fn write(&self, out: &mut Vec<u8>, index: usize) {
        resp::command(out, &[b"DEL", self.0[index]]);
    }

    fn read(&self, server: &Server, value: Value) -> Result<bool> {
        Ok(integer(server, value)? > 0)
    }
}

/// One caller's commands in a round trip: their bytes, and how many
/// replies they get.
pub(crate) struct Commands {
    bytes: Vec<u8>,
    replies: usize,
}

/// The replies to one caller's `Commands`, in order: a refused command (an
/// error reply) fails only its own.
pub(crate) type Replies = Vec<Result<Value>>;

/// The round trip of one or more callers' commands: all of them as one
/// pipeline on one connection, the replies read back in the same order. A
/// connection that fails fails the callers whose replies were not all read
/// yet.
struct Pipeline<'a>(&'a Server);

impl<'a> RoundTrip for Pipeline<'a> {
    type Request = Commands;
    type Reply = Replies;
    type Error = Error;
    /// The connection the pipeline was written on (or why it was not), and
    /// how many replies each request awaits.
    type Sent = (Result<Lease<'a>>, Vec<usize>);

    fn send(&self, requests: &[&Commands]) -> Self::Sent {
        let server = self.0;
        let counts = requests.iter().map(|request| request.replies).collect();
        let written = server.lease().and_then(|mut lease| {
            let conn = lease.conn();
            for request in requests {
                conn.out.extend_from_slice(&request.bytes);
            }
            match conn.send() {
                Ok(()) => Ok(lease),
                Err(source) => {
                    let error = server.io_error()(source);
                    lease.discard(&error);
                    Err(error)
                }
            }
        });
        (written, counts)
    }

    fn receive(&self, (written, counts): Self::Sent) -> Vec<Result<Replies>> {
        let server = self.0;
        let mut outcomes = Vec::with_capacity(counts.len());
        let result = written.and_then(|lease| {
            lease.exchange(|conn| {
                for &count in &counts {
                    let mut replies = Vec::with_capacity(count);
                    for _ in 0..count {
                        match reply(conn, server) {
                            Err(error) if !error.keeps_connection() => return Err(error),
                            outcome => replies.push(outcome),
                        }
                    }
                    outcomes.push(Ok(replies));
                }
                Ok(())
            })
        });
        if let Err(error) = result {
            outcomes.resize_with(counts.len(), || Err(error.duplicate()));
        }
        outcomes
    }
}

/// Every key of a batch, failed with `error`.
fn all_failed(count: usize, error: Error) -> Vec<BatchFailure> {
    vec![BatchFailure {
        indexes: (0..count).collect(),
        error,
    }]
}

fn failed_count(failures: &[BatchFailure]) -> usize {
    failures.iter().map(|failure| failure.indexes.len()).sum()
}

impl Client {
    /// A client for `servers` (`host:port`, `[v6]:port` or `unix:/path`):
    /// the first is the primary, the others read replicas; in cluster
    /// mode, any nodes of the cluster. Nothing is dialed yet.
    pub fn new<S: AsRef<str>>(servers: &[S], config: Config) -> Result<Client> {
        if servers.is_empty() {
            return Err(Error::Config("no Redis server given in LOCATION".into()));
        }
        if config.connect_timeout.is_zero() || config.io_timeout.is_zero() {
            return Err(Error::Config("Redis timeouts must be greater than zero".into()));
        }
        if config.max_connections == Some(0) {
            return Err(Error::Config("MAX_CONNECTIONS must be at least 1".into()));
        }
        let addresses = servers
            .iter()
            .map(|spec| parse_address(spec.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        if config.cluster {
            if config.db != 0 {
                return Err(Error::Config(
                    "Redis Cluster has database 0 only (its nodes refuse SELECT): leave DB at 0".into(),
                ));
            }
            if let Some(address) = addresses.iter().find(|address| matches!(address, Address::Unix(_))) {
                return Err(Error::Config(format!(
                    "Redis Cluster nodes are reached at the TCP addresses the cluster reports, not at {address}"
                )));
            }
        }
        let (tls, cluster_tls) = match &config.tls {
            None => (vec![None; addresses.len()], None),
            Some(options) => {
                let shared = crate::net::client_config(options).map_err(Error::Config)?;
                let tls = (addresses.iter())
                    .map(|address| {
                        let name = crate::net::server_name(address, options.server_name.as_deref(), "Redis")
                            .map_err(Error::Config)?;
                        Ok(Some(TlsTarget {
                            config: Arc::clone(&shared),
                            name,
                        }))
                    })
                    .collect::<Result<Vec<_>>>()?;
                (tls, Some(shared))
            }
        };
        let (login, sentinel_login) = match &config.sentinel {
            None => (Login::new(&config)?, None),
            Some(sentinel) => {
                if config.cluster {
                    return Err(Error::Config(
                        "Sentinel names one primary, a cluster has several: not both".into(),
                    ));
                }
                let sentinels = Config {
                    username: sentinel.username.clone(),
                    password: sentinel.password.clone(),
                    db: 0,
                    sentinel: None,
                    ..config.clone()
                };
                let login = Arc::new(Login::new(&sentinels)?);
                // Sentinel's primary may have been demoted since it was named.
                (Login::new(&config)?.checking_role(), Some((login, sentinels)))
            }
        };
        let login = Arc::new(login);
        Ok(Client {
            stats: Counters::default(),
            nodes: PerProcess::new(),
            addresses,
            tls,
            cluster_tls,
            login,
            sentinel_login,
            config,
        })
    }

    /// Display names of the servers as LOCATION gave them, the primary
    /// (or the first seed) first.
    pub fn servers(&self) -> Vec<String> {
        self.addresses.iter().map(ToString::to_string).collect()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This process's servers (a forked child builds its own).
    fn current(&self) -> Arc<Built<Nodes>> {
        // LOCATION's servers, each with its pool.
        let listed = |login: &Arc<Login>, config: &Config| -> Vec<Server> {
            (self.addresses.iter().zip(&self.tls))
                .map(|(address, tls)| {
                    let tls = tls.as_ref().map(TlsTarget::for_this_process);
                    server::new(address.clone(), tls, Arc::clone(login), config)
                })
                .collect()
        };
        self.nodes.get(|| match (&self.config.sentinel, &self.sentinel_login) {
            (Some(sentinel), Some((login, config))) => Nodes::Sentinel(Box::new(Sentinel::new(
                sentinel,
                listed(login, config),
                KnownServers::new(self.cluster_tls.clone(), Arc::clone(&self.login), self.config.clone()),
                self.config.clone(),
            ))),
            _ if self.config.cluster => Nodes::Cluster(Box::new(Cluster::new(
                self.addresses.clone(),
                self.cluster_tls.clone(),
                Arc::clone(&self.login),
                self.config.clone(),
            ))),
            _ => Nodes::Fixed(listed(&self.login, &self.config)),
        })
    }

    /// In cluster mode, the primaries of the slot map (asked for if this
    /// process has none yet); else the servers.
    pub fn nodes(&self) -> Result<Vec<String>> {
        match &**self.current() {
            Nodes::Fixed(servers) => Ok(servers.iter().map(|server| server.name().to_owned()).collect()),
            Nodes::Cluster(cluster) => Ok(cluster.map()?.nodes.iter().map(|node| node.name().to_owned()).collect()),
            Nodes::Sentinel(sentinel) => Ok(vec![sentinel.primary()?.name().to_owned()]),
        }
    }

    /// Every server this process has a pool for: LOCATION's, and in
    /// cluster mode the nodes it met (by name).
    fn pools(&self) -> Vec<ServerPool> {
        match &**self.current() {
            Nodes::Fixed(servers) => servers.iter().map(Server::pool_stats).collect(),
            Nodes::Cluster(cluster) => cluster.known_servers().iter().map(|s| s.pool_stats()).collect(),
            Nodes::Sentinel(sentinel) => (sentinel.sentinels().iter())
                .map(Server::pool_stats)
                .chain(sentinel.known_servers().iter().map(|s| s.pool_stats()))
                .collect(),
        }
    }

    /// Run `run` on the server of `key`: the primary, or with `read` a
    /// random replica if there are any (and reads may go there); in
    /// cluster mode the primary of the key's slot, following redirects.
    fn on_key<T>(&self, key: &[u8], read: bool, mut run: impl FnMut(Route<'_>) -> Result<T>) -> Result<T> {
        match &**self.current() {
            Nodes::Fixed(servers) => {
                let server = match servers.len() {
                    n if read && n > 1 && self.config.read_from_replicas => &servers[1 + fastrand::usize(..n - 1)],
                    _ => &servers[0],
                };
                run(Route { server, asking: false })
            }
            Nodes::Cluster(cluster) => cluster.route(slot(key), run),
            // Reads too: a replica may lag behind the writes just made.
            Nodes::Sentinel(sentinel) => sentinel.route(run),
        }
    }

    fn on_primary<T>(&self, key: &[u8], run: impl FnMut(Route<'_>) -> Result<T>) -> Result<T> {
        self.on_key(key, false, run)
    }

    fn on_reader<T>(&self, key: &[u8], run: impl FnMut(Route<'_>) -> Result<T>) -> Result<T> {
        self.on_key(key, true, run)
    }

    /// One command, its reply.
    fn call(&self, route: Route<'_>, args: &[&[u8]]) -> Result<Value> {
        self.exchange_one(route, |out| resp::command(out, args))
    }

    /// One command written by `write`, its reply.
    fn exchange_one(&self, route: Route<'_>, write: impl FnOnce(&mut Vec<u8>)) -> Result<Value> {
        if route.asking {
            // ASKING and its command must be adjacent on one connection.
            return exchange(route.server, |conn| round_trip(conn, route, write));
        }
        let mut replies = self.pipelined(route.server, 1, write)?;
        replies
            .pop()
            .unwrap_or_else(|| Err(Error::no_reply(route.server.name())))
    }

    /// `count` commands written by `write`, their replies, in one round
    /// trip. With `combine_calls`, commands of callers that reach the
    /// server together share that round trip (see `net::combine`), so
    /// that concurrent threads or async tasks keep one connection busy
    /// with few system calls and server wake-ups, instead of one each.
    fn pipelined(&self, server: &Server, count: usize, write: impl FnOnce(&mut Vec<u8>)) -> Result<Replies> {
        let mut request = Commands {
            bytes: Vec::new(),
            replies: count,
        };
        write(&mut request.bytes);
        let trip = Pipeline(server);
        if !self.config.combine_calls {
            return trip
                .run(&[&request])
                .pop()
                .unwrap_or_else(|| Err(Error::no_reply(server.name())));
        }
        let patience = self.config.connect_timeout + self.config.io_timeout * 4;
        let (outcome, recorded) = server.combiner.call(request, patience, &trip);
        if let Some(error) = unrecorded(&outcome, recorded) {
            server.pool.health.failed(error);
        }
        outcome
    }

    /// A script with one key: `EVALSHA`, and `EVAL` if the server does not
    /// have it (restarted, flushed scripts, a replica promoted, a cluster
    /// node not used before).
    fn eval(&self, route: Route<'_>, script: &Script, key: &[u8], args: &[&[u8]]) -> Result<Value> {
        match self.exchange_one(route, |out| script.invoke(out, false, key, args)) {
            Err(Error::Server { message, .. }) if message.starts_with("NOSCRIPT") => {
                self.exchange_one(route, |out| script.invoke(out, true, key, args))
            }
            other => other,
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let result = self.on_reader(key, |route| bulk(route.server, self.call(route, &[b"GET", key])?));
        self.stats.read(result)
    }

    /// Values of `keys`, in order (`None`: missing), and the keys that
    /// could not be read: one `MGET`, or in cluster mode one pipeline of
    /// `GET`s per node (a node that fails fails its own keys only).
    pub fn get_many(&self, keys: &[&[u8]]) -> Result<(Values, Vec<BatchFailure>)> {
        let mut values = vec![None; keys.len()];
        if keys.is_empty() {
            return Ok((values, Vec::new()));
        }
        let failures = match &**self.current() {
            Nodes::Cluster(cluster) => cluster.batch(keys, &mut values, &Gets(keys), |route, index| {
                bulk(route.server, self.call(route, &[b"GET", keys[index]])?)
            }),
            Nodes::Fixed(_) | Nodes::Sentinel(_) => {
                let result = self.on_reader(b"", |route| {
                    let server = route.server;
                    let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
                    args.push(b"MGET");
                    args.extend_from_slice(keys);
                    match self.call(route, &args)? {
                        Value::Array(Some(found)) if found.len() == keys.len() => {
                            found.into_iter().map(|value| bulk(server, value)).collect()
                        }
                        other => Err(unexpected(server, "MGET", other)),
                    }
                });
                match result {
                    Ok(found) => {
                        values = found;
                        Vec::new()
                    }
                    Err(error) => all_failed(keys.len(), error),
                }
            }
        };
        let hits = values.iter().filter(|value| value.is_some()).count() as u64;
        let misses = (keys.len() - failed_count(&failures)) as u64 - hits;
        self.stats.looked_up(hits, misses);
        for failure in &failures {
            self.stats.failed(&failure.error);
        }
        Ok((values, failures))
    }

    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        let result = self.on_reader(key, |route| {
            Ok(integer(route.server, self.call(route, &[b"EXISTS", key])?)? > 0)
        });
        self.stats.other(result)
    }

    /// Store `value`; a TTL of 0 deletes the key instead (Django: a
    /// timeout of 0 or less means "don't cache", and no old value may
    /// stay readable).
    pub fn set(&self, key: &[u8], value: &[u8], ttl: Ttl) -> Result<()> {
        if ttl == Some(0) {
            return self.delete(key).map(drop);
        }
        let result = self.on_primary(key, |route| {
            let reply = self.exchange_one(route, |out| set_command(out, key, value, ttl, false))?;
            stored(route.server, reply).map(drop)
        });
        self.stats.write(result)
    }

    /// Store only if the key is absent (`SET NX`, atomic); True if stored.
    /// With a TTL of 0 nothing is stored: True if the key was absent.
    pub fn add(&self, key: &[u8], value: &[u8], ttl: Ttl) -> Result<bool> {
        if ttl == Some(0) {
            let result = self.on_primary(key, |route| {
                Ok(integer(route.server, self.call(route, &[b"EXISTS", key])?)? == 0)
            });
            return self.stats.other(result);
        }
        let result = self.on_primary(key, |route| {
            let reply = self.exchange_one(route, |out| set_command(out, key, value, ttl, true))?;
            stored(route.server, reply)
        });
        self.stats.stored_if(result)
    }

    /// A new expiry for an existing key; True if it existed. `None`
    /// removes the expiry (a script: `PERSIST` alone says False for a key
    /// that had none), 0 deletes the key.
    pub fn touch(&self, key: &[u8], ttl: Ttl) -> Result<bool> {
        let result = self.on_primary(key, |route| {
            let value = match ttl {
                None => self.eval(route, &scripts::PERSIST, key, &[])?,
                Some(0) => self.call(route, &[b"DEL", key])?,
                Some(ttl) => {
                    let ms = itoa::Buffer::new().format(lifetime_ms(ttl)).to_owned();
                    self.call(route, &[b"PEXPIRE", key, ms.as_bytes()])?
                }
            };
            Ok(integer(route.server, value)? > 0)
        });
        self.stats.other(result)
    }

    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        let result = self.on_primary(key, |route| {
            Ok(integer(route.server, self.call(route, &[b"DEL", key])?)? > 0)
        });
        self.stats.delete(result)
    }

    /// Delete only while the key holds exactly `value` (a lock's release).
    pub fn delete_if(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        let result = self.on_primary(key, |route| {
            Ok(integer(
                route.server,
                self.eval(route, &scripts::DELETE_IF_EQUAL, key, &[value])?,
            )? > 0)
        });
        self.stats.delete(result)
    }

    /// Give the key a new TTL only while it holds exactly `value` (a lock's
    /// extension); a TTL of `None` or 0 is refused, as a lock's lease
    /// always ends. True if done.
    pub fn touch_if(&self, key: &[u8], value: &[u8], ttl: Ttl) -> Result<bool> {
        let Some(seconds) = ttl.filter(|seconds| *seconds > 0) else {
            return Err(Error::Config("touch_if takes a TTL of at least one second".into()));
        };
        let ms = itoa::Buffer::new().format(lifetime_ms(seconds)).to_owned();
        let result = self.on_primary(key, |route| {
            Ok(integer(
                route.server,
                self.eval(route, &scripts::EXPIRE_IF_EQUAL, key, &[value, ms.as_bytes()])?,
            )? > 0)
        });
        self.stats.other(result)
    }

    /// Add `delta` to an integer value, keeping its expiry; `None` if the
    /// key is missing. One script, so a key that expires meanwhile is
    /// never re-created from 0 (Django's `EXISTS` then `INCRBY` can).
    pub fn incr(&self, key: &[u8], delta: i64) -> Result<Option<i64>> {
        let delta = itoa::Buffer::new().format(delta).to_owned();
        let result = self.on_primary(key, |route| {
            let server = route.server;
            // The new value comes back as an integer, or beyond 2^53 as
            // digits (see INCR_IF_EXISTS).
            match self.eval(route, &scripts::INCR_IF_EXISTS, key, &[delta.as_bytes()])? {
                Value::Int(n) => Ok(Some(n)),
                Value::Bulk(Some(digits)) => match std::str::from_utf8(&digits).ok().and_then(|d| d.parse().ok()) {
                    Some(n) => Ok(Some(n)),
                    None => Err(unexpected(server, "incr", Value::Bulk(Some(digits)))),
                },
                Value::Bulk(None) => Ok(None),
                other => Err(unexpected(server, "incr", other)),
            }
        });
        self.stats.other(result)
    }

    /// Add `delta` with a bare `INCRBY`: a missing key is created holding
    /// `delta`, without expiry (django-redis's `ignore_key_check`).
    pub fn incr_or_create(&self, key: &[u8], delta: i64) -> Result<i64> {
        let delta = itoa::Buffer::new().format(delta).to_owned();
        let result = self.on_primary(key, |route| {
            integer(route.server, self.call(route, &[b"INCRBY", key, delta.as_bytes()])?)
        });
        self.stats.other(result)
    }

    /// Read-modify-write, keeping the TTL: `change(value)` gives the new
    /// value, stored only if the key still holds the value it was given
    /// (a compare-and-set script), else read and changed again. `None` if
    /// the key is missing. An error of `change` writes nothing.
    pub fn update<E>(
        &self,
        key: &[u8],
        mut change: impl FnMut(&[u8]) -> std::result::Result<Vec<u8>, E>,
    ) -> Result<std::result::Result<Option<Vec<u8>>, E>> {
        // A cluster redirect starts the loop again at the new node; the
        // script wrote nothing where it was redirected.
        let result = self.on_primary(key, |route| {
            let server = route.server;
            let deadline = Instant::now() + self.config.io_timeout * 4;
            let mut pause = Duration::from_micros(50);
            loop {
                let Some(old) = bulk(server, self.call(route, &[b"GET", key])?)? else {
                    return Ok(Ok(None));
                };
                let new = match change(&old) {
                    Ok(new) => new,
                    Err(error) => return Ok(Err(error)),
                };
                match self.eval(route, &scripts::REPLACE_IF_EQUAL, key, &[&old, &new])? {
                    Value::Int(1) => return Ok(Ok(Some(new))),
                    Value::Int(0) => {}
                    Value::Bulk(None) => return Ok(Ok(None)),
                    other => return Err(unexpected(server, "a compare-and-set", other)),
                }
                if Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        server: format!("{} (the key kept changing during an update)", server.name()),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
        });
        self.stats.other(result)
    }

    /// Store every `(key, value)`, pipelined in one round trip per server
    /// (no transaction: each `SET` is atomic on its own, as in a loop of
    /// `set`s); the keys not stored come back. A TTL of 0 deletes the keys.
    pub fn set_many(&self, entries: &[(&[u8], &[u8])], ttl: Ttl) -> Result<Vec<BatchFailure>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        if ttl == Some(0) {
            let keys: Vec<&[u8]> = entries.iter().map(|(key, _)| *key).collect();
            return self.delete_many(&keys);
        }
        let op = Sets { entries, ttl };
        let mut done = vec![false; entries.len()];
        let failures = match &**self.current() {
            Nodes::Cluster(cluster) => {
                let keys: Vec<&[u8]> = entries.iter().map(|(key, _)| *key).collect();
                cluster.batch(&keys, &mut done, &op, |route, index| {
                    let (key, value) = entries[index];
                    let reply = self.exchange_one(route, |out| set_command(out, key, value, ttl, false))?;
                    stored(route.server, reply)
                })
            }
            Nodes::Fixed(servers) => self.pipeline(&servers[0], &op, &mut done),
            // Not sent again elsewhere: part of the pipeline may have run.
            Nodes::Sentinel(sentinel) => match sentinel.primary() {
                Ok(server) => {
                    let failures = self.pipeline(&server, &op, &mut done);
                    if let Some(failure) = failures.first() {
                        sentinel.noticed(&server, &failure.error);
                    }
                    failures
                }
                Err(error) => all_failed(entries.len(), error),
            },
        };
        self.stats.stored((entries.len() - failed_count(&failures)) as u64);
        for failure in &failures {
            self.stats.failed(&failure.error);
        }
        Ok(failures)
    }

    /// `op` for every index as one pipeline on `server` (see
    /// `pipelined`). A refused command fails its own key only.
    fn pipeline<Op: BatchOp>(&self, server: &Server, op: &Op, results: &mut [Op::Out]) -> Vec<BatchFailure> {
        let count = results.len();
        let replies = match self.pipelined(server, count, |out| (0..count).for_each(|index| op.write(out, index))) {
            Ok(replies) => replies,
            Err(error) => return all_failed(count, error),
        };
        let mut refused = Vec::new();
        for (index, (slot, reply)) in results.iter_mut().zip(replies).enumerate() {
            match reply.and_then(|value| op.read(server, value)) {
                Ok(out) => *slot = out,
                Err(error) => refused.push(BatchFailure {
                    indexes: vec![index],
                    error,
                }),
            }
        }
        refused
    }

    /// Delete `keys`: one `DEL`, or in cluster mode one pipeline of `DEL`s
    /// per node. The keys that could not be deleted come back.
    pub fn delete_many(&self, keys: &[&[u8]]) -> Result<Vec<BatchFailure>> {
        Ok(self.delete_keys(keys).1)
    }

    /// `delete_many`'s work: how many of `keys` existed and were deleted,
    /// and the keys that could not be.
    fn delete_keys(&self, keys: &[&[u8]]) -> (u64, Vec<BatchFailure>) {
        if keys.is_empty() {
            return (0, Vec::new());
        }
        let (deleted, failures) = match &**self.current() {
            Nodes::Cluster(cluster) => {
                let mut deleted = vec![false; keys.len()];
                let failures = cluster.batch(keys, &mut deleted, &Deletes(keys), |route, index| {
                    Ok(integer(route.server, self.call(route, &[b"DEL", keys[index]])?)? > 0)
                });
                (deleted.iter().filter(|deleted| **deleted).count() as u64, failures)
            }
            Nodes::Fixed(_) | Nodes::Sentinel(_) => {
                let result = self.on_primary(b"", |route| {
                    let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
                    args.push(b"DEL");
                    args.extend_from_slice(keys);
                    integer(route.server, self.call(route, &args)?)
                });
                match result {
                    Ok(deleted) => (deleted.max(0) as u64, Vec::new()),
                    Err(error) => (0, all_failed(keys.len(), error)),
                }
            }
        };
        self.stats.deleted(deleted);
        for failure in &failures {
            self.stats.failed(&failure.error);
        }
        (deleted, failures)
    }

    /// Empty the database: `FLUSHDB` on the primary (replicas follow it),
    /// or on every primary of a cluster (all are tried; the first failure
    /// is the error).
    pub fn clear(&self) -> Result<()> {
        let flush = |server: &Server| match self.call(Route { server, asking: false }, &[b"FLUSHDB"])? {
            Value::Status(status) if status == "OK" => Ok(()),
            other => Err(unexpected(server, "FLUSHDB", other)),
        };
        let result = match &**self.current() {
            Nodes::Fixed(servers) => flush(&servers[0]),
            Nodes::Sentinel(_) => self.on_primary(b"", |route| flush(route.server)),
            Nodes::Cluster(cluster) => cluster.map().and_then(|map| {
                let mut outcome = Ok(());
                for node in &map.nodes {
                    if let Err(error) = flush(node)
                        && outcome.is_ok()
                    {
                        outcome = Err(error);
                    }
                }
                outcome
            }),
        };
        self.stats.other(result)
    }

    /// The key's remaining lifetime in milliseconds (`PTTL`, on the
    /// primary): -2 if it is missing, -1 if it never expires.
    pub fn pttl(&self, key: &[u8]) -> Result<i64> {
        let result = self.on_primary(key, |route| integer(route.server, self.call(route, &[b"PTTL", key])?));
        self.stats.other(result)
    }

    /// A new expiry for the key, as Redis's own commands set it (no
    /// Django rules): True if the key exists, and for `Expiry::Never` if
    /// it had an expiry to remove. A lifetime of 0 or less, or a past
    /// time, deletes the key.
    pub fn expire(&self, key: &[u8], expiry: Expiry) -> Result<bool> {
        let result = self.on_primary(key, |route| {
            let mut digits = itoa::Buffer::new();
            let reply = match expiry {
                Expiry::AfterMs(ms) => self.call(route, &[b"PEXPIRE", key, digits.format(ms).as_bytes()])?,
                Expiry::AtUnixMs(ms) => self.call(route, &[b"PEXPIREAT", key, digits.format(ms).as_bytes()])?,
                Expiry::Never => self.call(route, &[b"PERSIST", key])?,
            };
            Ok(integer(route.server, reply)? > 0)
        });
        self.stats.other(result)
    }

    /// The servers that hold keys, which `scan` numbers from 0: the
    /// primary, or a cluster's primaries (by its slot map).
    pub fn primaries(&self) -> Result<usize> {
        match &**self.current() {
            Nodes::Fixed(_) | Nodes::Sentinel(_) => Ok(1),
            Nodes::Cluster(cluster) => Ok(cluster.map()?.nodes.len()),
        }
    }

    /// One page of `SCAN cursor MATCH pattern COUNT count` on primary
    /// number `node`: the next cursor (0 when the node is done) and the
    /// keys found. As with `SCAN`, a key present for the whole scan comes
    /// back at least once; one written or deleted meanwhile may or may
    /// not. A cluster whose nodes changed between pages may be scanned
    /// partly on its old map.
    pub fn scan(&self, node: usize, cursor: u64, pattern: &[u8], count: usize) -> Result<(u64, Vec<Vec<u8>>)> {
        let page = |server: &Server| {
            let mut cursor_digits = itoa::Buffer::new();
            let mut count_digits = itoa::Buffer::new();
            let args: [&[u8]; 6] = [
                b"SCAN",
                cursor_digits.format(cursor).as_bytes(),
                b"MATCH",
                pattern,
                b"COUNT",
                count_digits.format(count.max(1)).as_bytes(),
            ];
            scan_page(server, self.call(Route { server, asking: false }, &args)?)
        };
        let result = match &**self.current() {
            Nodes::Fixed(servers) if node == 0 => page(&servers[0]),
            Nodes::Sentinel(_) if node == 0 => self.on_primary(b"", |route| page(route.server)),
            Nodes::Fixed(_) | Nodes::Sentinel(_) => {
                Err(Error::Config(format!("no primary number {node}: there is one")))
            }
            Nodes::Cluster(cluster) => cluster.map().and_then(|map| match map.nodes.get(node) {
                Some(server) => page(server),
                None => Err(Error::Config(format!(
                    "no primary number {node}: the cluster has {}",
                    map.nodes.len()
                ))),
            }),
        };
        self.stats.other(result)
    }

    /// Delete every key that matches `pattern`, `SCAN`ning each primary
    /// `count` keys at a time and deleting each page as it comes (so no
    /// list of every key is held); the number deleted. A key deleted by
    /// someone else meanwhile is not counted, so concurrent calls count
    /// each key once. The first failure stops it and is the error.
    pub fn delete_matching(&self, pattern: &[u8], count: usize) -> Result<u64> {
        let mut deleted = 0;
        for node in 0..self.primaries()? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self.scan(node, cursor, pattern, count)?;
                let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                let (gone, mut failures) = self.delete_keys(&keys);
                if !failures.is_empty() {
                    return Err(failures.swap_remove(0).error);
                }
                deleted += gone;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }

    /// One command on the data-structure commands' terms (sets, hashes,
    /// sorted sets): `args` whole, its reply as the server sent it. It
    /// goes to the server of `keys` (the keys among `args`; a read may go
    /// to a replica), which in cluster mode must share a slot (a hash tag
    /// makes them), since one node serves the command. A reply of
    /// `WRONGTYPE` is `Error::WrongType`.
    pub fn command(&self, keys: &[&[u8]], args: &[&[u8]], read: bool) -> Result<Value> {
        let Some(first) = keys.first() else {
            return Err(Error::Config("a command needs the key it acts on".into()));
        };
        if args.is_empty() {
            return Err(Error::Config("a command needs its name".into()));
        }
        if self.config.cluster && keys.iter().any(|key| slot(key) != slot(first)) {
            return Err(Error::Config(format!(
                "{} acts on keys in different Redis Cluster slots, which no node serves together; \
                 give the keys one hash tag (the same {{...}} part) to keep them in one slot",
                String::from_utf8_lossy(args[0])
            )));
        }
        let result = self.on_key(first, read, |route| self.call(route, args));
        self.stats.other(result)
    }

    /// Close every idle pooled connection.
    pub fn close_idle(&self) {
        match &**self.current() {
            Nodes::Fixed(servers) => servers.iter().for_each(|server| server.pool.close_idle()),
            Nodes::Sentinel(sentinel) => {
                sentinel.sentinels().iter().for_each(|server| server.pool.close_idle());
                sentinel
                    .known_servers()
                    .iter()
                    .for_each(|server| server.pool.close_idle());
            }
            Nodes::Cluster(cluster) => cluster
                .known_servers()
                .iter()
                .for_each(|server| server.pool.close_idle()),
        }
    }

    /// The operation counters, and per server its `ServerPool`.
    pub fn stats(&self) -> (Snapshot, Vec<ServerPool>) {
        (self.stats.snapshot(), self.pools())
    }

    /// Idle pooled connections, per server (as `stats` lists them).
    pub fn idle_connections(&self) -> Vec<usize> {
        self.pools().iter().map(|(_, idle, ..)| *idle).collect()
    }
}

/// One server as Python hands it over: `host:port`, `[v6]:port`, or
/// `unix:/path` (Python reads Django's URLs and fills in the port).
pub(crate) fn parse_address(spec: &str) -> Result<Address> {
    if let Some(path) = spec.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(Error::Config(format!("no socket path in {spec:?}")));
        }
        return Ok(Address::Unix(path.into()));
    }
    let bad = || Error::Config(format!("a Redis server is host:port or unix:/path, not {spec:?}"));
    let (host, port) = spec.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Address::Tcp {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_python_hands_them_over() {
        assert_eq!(
            parse_address("127.0.0.1:6380").unwrap(),
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 6380
            }
        );
        assert_eq!(
            parse_address("[::1]:6379").unwrap(),
            Address::Tcp {
                host: "::1".into(),
                port: 6379
            }
        );
        assert_eq!(
            parse_address("unix:/tmp/r.sock").unwrap(),
            Address::Unix("/tmp/r.sock".into())
        );
        for bad in ["", "host", "host:port", ":6379", "unix:", "h:70000"] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn set_commands() {
        let mut out = Vec::new();
        set_command(&mut out, b"k", b"v", None, false);
        set_command(&mut out, b"k", b"v", Some(30), true);
        let mut expected = Vec::new();
        resp::command(&mut expected, &[b"SET", b"k", b"v"]);
        resp::command(&mut expected, &[b"SET", b"k", b"v", b"PX", b"29999", b"NX"]);
        assert_eq!(out, expected);
    }
}
