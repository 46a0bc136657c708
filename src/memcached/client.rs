//! The memcached client: routing, single-key exchanges and pipelined
//! batches over per-server pools.

use std::sync::Arc;

use crate::fork::{Built, PerProcess};
use crate::stats::{Counters, Snapshot};

use super::address::Address;
use super::connection::Connection;
use super::error::{AuthProblem, Error, Result};
use super::handshake::Handshake;
use super::item::Item;
use super::protocol::{self, Marks, Reply, Status, StoreMode};
use super::routing::Rendezvous;
use super::server::{self, Config, Lease, Server};
use crate::net::{RoundTrip, ServerError, ServerPool, unrecorded};

/// Keys per pipelined round trip in a batch. Bounded so that requests
/// never fill the socket buffers while the server is blocked writing
/// replies we have not read yet.
const CHUNK: usize = 128;

/// The keys (indexes into the request) that a failed server took with it.
#[derive(Debug)]
pub struct BatchFailure {
    pub indexes: Vec<usize>,
    pub error: Error,
}

/// One entry of `set_many`.
pub struct Entry<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u32,
}

/// Outcome of `set_many` for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored,
    /// The value is over the server's item size limit; any old value for
    /// the key was deleted so it cannot be read as current.
    TooLarge,
    /// The key's server failed (see the batch failures).
    Failed,
}

/// What `claim` found: the item to serve (None for a placeholder or a
/// miss), the marks saying who computes, and the CAS token and remaining
/// TTL a winner gives its turn back with.
#[derive(Debug)]
pub struct Claim {
    pub item: Option<Item>,
    pub marks: Marks,
    pub cas: u64,
    pub ttl: i64,
}

/// The turn a winner of `claim` gives back (see `Client::give_back`).
#[derive(Debug, Clone, Copy)]
pub enum Turn<'a> {
    /// It won a placeholder (a miss).
    Placeholder,
    /// It won an invalidated item.
    Stale,
    /// It won the early refresh of this current item, which had `ttl` left.
    Refresh { flags: u32, value: &'a [u8], ttl: i64 },
}

pub struct Client {
    stats: Counters,
    servers: PerProcess<Vec<Server>>,
    addresses: Vec<Address>,
    /// What a new connection to each server goes through (TLS, login).
    handshakes: Vec<Handshake>,
    config: Config,
    router: Rendezvous,
}

/// Read one reply line; a meta reply must carry `opaque`.
fn read_reply(conn: &mut Connection, server: &Server, opaque: Option<u32>) -> Result<Reply> {
    let line = conn.read_line().map_err(server.io_error())?;
    let reply = protocol::parse_reply(line);
    match (&reply, opaque) {
        (Reply::Meta { opaque: got, .. }, Some(want)) if *got != Some(want) => Err(Error::protocol(
            server.name(),
            format!("reply tagged {got:?} for request {want}"),
        )),
        (Reply::Garbage(line), _) => Err(Error::protocol(server.name(), format!("unparseable reply {line:?}"))),
        _ => Ok(reply),
    }
}

/// The error for a reply that does not answer the request that was sent.
fn unexpected(server: &Server, reply: Reply) -> Error {
    match reply {
        Reply::ServerError(message) => Error::Server {
            server: server.name().to_owned(),
            message,
        },
        // A server with a login (-Y) answers this to every request until
        // the connection logged in.
        Reply::ClientError(message) if message == "unauthenticated" => Error::Auth {
            server: server.name().to_owned(),
            problem: AuthProblem::Required,
        },
        Reply::ClientError(message) => Error::protocol(server.name(), format!("CLIENT_ERROR {message}")),
        other => Error::protocol(server.name(), format!("unexpected reply {other:?}")),
    }
}

fn check_keys<'k>(keys: impl IntoIterator<Item = &'k [u8]>) -> Result<()> {
    for key in keys {
        protocol::check_key(key).map_err(Error::InvalidKey)?;
    }
    Ok(())
}

impl Client {
    /// A client for `servers` (LOCATION entries). Nothing is dialed yet.
    pub fn new<S: AsRef<str>>(servers: &[S], config: Config) -> Result<Client> {
        if servers.is_empty() {
            return Err(Error::Config("no memcached server given in LOCATION".into()));
        }
        if config.connect_timeout.is_zero() || config.io_timeout.is_zero() {
            return Err(Error::Config("memcached timeouts must be greater than zero".into()));
        }
        if config.max_connections == Some(0) {
            return Err(Error::Config("MAX_CONNECTIONS must be at least 1".into()));
        }
        let mut addresses: Vec<Address> = Vec::with_capacity(servers.len());
        for spec in servers {
            let address = Address::parse(spec.as_ref())?;
            if addresses.iter().any(|a| a.node_name() == address.node_name()) {
                return Err(Error::Config(format!("memcached server {address} is listed twice")));
            }
            addresses.push(address);
        }
        let handshakes = Handshake::for_servers(
            &addresses,
            config.tls.as_ref(),
            config.username.as_deref(),
            config.password.as_ref(),
        )?;
        let router = Rendezvous::new(addresses.iter().map(Address::node_name).collect());
        Ok(Client {
            stats: Counters::default(),
            servers: PerProcess::new(),
            addresses,
            handshakes,
            config,
            router,
        })
    }

    /// Display names of the servers, in configured order.
    pub fn servers(&self) -> Vec<String> {
        self.addresses.iter().map(ToString::to_string).collect()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This process's servers (a forked child builds its own).
    fn current(&self) -> Arc<Built<Vec<Server>>> {
        self.servers.get(|| {
            (self.addresses.iter().zip(&self.handshakes))
                .map(|(address, handshake)| server::new(address.clone(), handshake.for_this_process(), &self.config))
                .collect()
        })
    }

    /// Index of the server that owns `key`.
    pub fn server_index(&self, key: &[u8]) -> usize {
        self.router.route(key)
    }

    /// Run one request/reply exchange on a leased connection. The
    /// connection goes back to the pool only if the exchange left the
    /// stream in step.
    fn exchange<T>(&self, server: &Server, run: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        server.lease()?.exchange(run)
    }

    /// One request on the key's server: build it with a fresh opaque
    /// token, send it, and hand the verified reply to `answer`.
    fn single<T>(
        &self,
        key: &[u8],
        build: impl FnOnce(&mut Vec<u8>, u32),
        answer: impl FnOnce(&mut Connection, &Server, Reply) -> Result<T>,
    ) -> Result<T> {
        self.on_server(key, |server| self.single_on(server, build, answer))
    }

    /// `single` on a server already chosen.
    fn single_on<T>(
        &self,
        server: &Server,
        build: impl FnOnce(&mut Vec<u8>, u32),
        answer: impl FnOnce(&mut Connection, &Server, Reply) -> Result<T>,
    ) -> Result<T> {
        self.exchange(server, |conn| {
            let reply = request(conn, server, build)?;
            answer(conn, server, reply)
        })
    }

    /// Run `run` with the server that owns `key`, after
    /// checking the key.
    fn on_server<T>(&self, key: &[u8], run: impl FnOnce(&Server) -> Result<T>) -> Result<T> {
        check_keys([key])?;
        run(&self.current()[self.router.route(key)])
    }

    /// Fetch a value. Gets that arrive together for one server share a
    /// round trip (see `combine`).
    pub fn get(&self, key: &[u8]) -> Result<Option<Item>> {
        let result = self.on_server(key, |server| {
            let config = server.config();
            if !config.combine_gets {
                return self.get_alone(server, key);
            }
            let patience = config.connect_timeout + config.io_timeout * 4;
            let (outcome, recorded) =
                server
                    .combiner
                    .call(key.to_vec(), patience, &CombinedGet { client: self, server });
            if let Some(error) = unrecorded(&outcome, recorded) {
                server.pool.health.failed(error);
            }
            outcome
        });
        self.stats.read(result)
    }

    /// One get on its own round trip.
    fn get_alone(&self, server: &Server, key: &[u8]) -> Result<Option<Item>> {
        self.single_on(
            server,
            |out, opaque| protocol::meta_get(out, key, opaque, true, None, false),
            |conn, server, reply| match reply {
                Reply::Meta {
                    status: Status::Value(size),
                    flags,
                    marks,
                    ..
                } => {
                    let value = conn.read_value(size).map_err(server.io_error())?;
                    if marks.not_current(size, flags) {
                        if marks.win {
                            hand_back(conn, server, key)?;
                        }
                        return Ok(None);
                    }
                    Ok(Some(Item { value, flags }))
                }
                Reply::Meta {
                    status: Status::Miss, ..
                } => Ok(None),
                other => Err(unexpected(server, other)),
            },
        )
    }

    /// Several callers' gets as one pipeline on one connection.
    fn get_pipelined(&self, server: &Server, keys: &[&[u8]]) -> Vec<Result<Option<Item>>> {
        let op = GetMany::new(keys);
        let indexes: Vec<usize> = (0..keys.len()).collect();
        let mut results = vec![None; keys.len()];
        let outcome = send_batch(server, &op, &indexes).and_then(|(lease, first)| {
            finish_batch(server, lease, &op, &indexes, first, &mut results).map_err(|(_, e)| e)
        });
        self.hand_back_wins(&op);
        match outcome {
            Ok(()) => results.into_iter().map(Ok).collect(),
            Err(error) => {
                let copies: Vec<_> = (1..keys.len()).map(|_| Err(error.duplicate())).collect();
                std::iter::once(Err(error)).chain(copies).collect()
            }
        }
    }

    /// Whether the key is present, without fetching the value.
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        self.meta_flag(key, None)
    }

    /// Set a new expiry on an existing key.
    pub fn touch(&self, key: &[u8], ttl: i64) -> Result<bool> {
        self.meta_flag(key, Some(ttl))
    }

    /// Whether the key holds a current value (an invalidated item or a
    /// placeholder does not, and a touch gives it back its own expiry).
    fn meta_flag(&self, key: &[u8], ttl: Option<i64>) -> Result<bool> {
        let result = self.single(
            key,
            |out, opaque| protocol::meta_get(out, key, opaque, false, ttl, false),
            |conn, server, reply| match reply {
                Reply::Meta {
                    status: Status::Stored,
                    size,
                    flags,
                    marks,
                    ttl: left,
                    ..
                } => {
                    if !marks.not_current(size.unwrap_or(1), flags) {
                        return Ok(true);
                    }
                    if let (Some(_), Some(left)) = (ttl, left) {
                        // The touch reached it: its lease must stay as it was.
                        let kept = ttl_to_keep(left);
                        let reply = request(conn, server, |out, opaque| {
                            protocol::meta_get(out, key, opaque, false, Some(kept), false)
                        })?;
                        if !matches!(
                            reply,
                            Reply::Meta {
                                status: Status::Stored | Status::Miss,
                                ..
                            }
                        ) {
                            return Err(unexpected(server, reply));
                        }
                    }
                    if marks.win {
                        hand_back(conn, server, key)?;
                    }
                    Ok(false)
                }
                Reply::Meta {
                    status: Status::Miss, ..
                } => Ok(false),
                other => Err(unexpected(server, other)),
            },
        );
        self.stats.other(result)
    }

    /// Store a value. `Ok(false)` only for `StoreMode::Add` on a present
    /// key. A value over the item size limit is `Err(ValueTooLarge)`, and
    /// for `StoreMode::Set` the old value is deleted first-hand so it can
    /// never be read as current.
    pub fn store(&self, key: &[u8], value: &[u8], flags: u32, ttl: i64, mode: StoreMode) -> Result<bool> {
        let result = self.single(
            key,
            |out, opaque| protocol::meta_set(out, key, value, flags, ttl, mode, opaque),
            |conn, server, reply| match reply {
                Reply::Meta {
                    status: Status::Stored, ..
                } => Ok(true),
                Reply::Meta {
                    status: Status::NotStored,
                    ..
                } if mode == StoreMode::Add => add_over_stale(conn, server, key, (flags, value), ttl),
                Reply::ServerError(message) if message.contains("too large") => {
                    if mode == StoreMode::Set {
                        delete_on(conn, server, key)?;
                    }
                    Err(Error::ValueTooLarge {
                        server: server.name().to_owned(),
                        size: value.len(),
                    })
                }
                other => Err(unexpected(server, other)),
            },
        );
        self.stats.stored_if(result)
    }

    /// Delete a key; true if it was present.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        let deleted = self.on_server(key, |server| self.exchange(server, |conn| delete_on(conn, server, key)));
        self.stats.delete(deleted)
    }

    /// Read-modify-write `key` with its CAS token: `change` gets the flags
    /// and value and returns new ones, which are stored, with the TTL the
    /// item had left, only if no one wrote the key meanwhile; otherwise it
    /// is read again after a short random pause, for up to four
    /// `IO_TIMEOUT`s (`CacheServerError` after that). `Ok(Ok(None))`: no
    /// such key. If `change` fails, nothing is written and its error is
    /// returned. (A signed counter's increment: the server cannot count
    /// with it.)
    pub fn update<E>(
        &self,
        key: &[u8],
        mut change: impl FnMut(u32, &[u8]) -> std::result::Result<(u32, Vec<u8>), E>,
    ) -> Result<std::result::Result<Option<Item>, E>> {
        let result = self.on_server(key, |server| {
            let deadline = std::time::Instant::now() + server.config().io_timeout * 4;
            let mut pause = std::time::Duration::from_micros(50);
            loop {
                let Some((flags, value, cas, ttl)) = self.exchange(server, |conn| read_with_cas(conn, server, key))?
                else {
                    return Ok(Ok(None));
                };
                let new = match change(flags, &value) {
                    Ok(new) => new,
                    Err(error) => return Ok(Err(error)),
                };
                let stored = self.exchange(server, |conn| {
                    let reply = request(conn, server, |out, opaque| {
                        protocol::meta_set(out, key, &new.1, new.0, ttl, StoreMode::IfUnchanged(cas), opaque)
                    })?;
                    match reply {
                        Reply::Meta {
                            status: Status::Stored, ..
                        } => Ok(Some(true)),
                        Reply::Meta {
                            status: Status::Exists, ..
                        } => Ok(Some(false)),
                        Reply::Meta {
                            status: Status::NotFound,
                            ..
                        } => Ok(None),
                        other => Err(unexpected(server, other)),
                    }
                })?;
                match stored {
                    Some(true) => {
                        return Ok(Ok(Some(Item {
                            flags: new.0,
                            value: new.1,
                        })));
                    }
                    Some(false) => {}
                    None => return Ok(Ok(None)),
                }
                if std::time::Instant::now() >= deadline {
                    return Err(Error::Server {
                        server: server.name().to_owned(),
                        message: "others kept changing the value during every read-modify-write".into(),
                    });
                }
                // Random, so that the writers contending for the key do not
                // collide again in step.
                std::thread::sleep(pause.mul_f64(fastrand::f64()));
                pause = (pause * 2).min(std::time::Duration::from_millis(5));
            }
        });
        self.stats.other(result)
    }

    /// Delete `key` only while it still holds exactly `item` (a lock's
    /// release). True if deleted.
    pub fn delete_if(&self, key: &[u8], item: (u32, &[u8])) -> Result<bool> {
        let deleted = self.while_holding(key, item, |out, cas, opaque| {
            protocol::meta_delete_if_unchanged(out, key, cas, opaque)
        });
        self.stats.delete(deleted)
    }

    /// Give `key` the expiry `ttl` only while it still holds exactly
    /// `item` (a lock's extension): the same item stored again with the
    /// new TTL. True if done.
    pub fn touch_if(&self, key: &[u8], item: (u32, &[u8]), ttl: i64) -> Result<bool> {
        let touched = self.while_holding(key, item, |out, cas, opaque| {
            protocol::meta_set(out, key, item.1, item.0, ttl, StoreMode::IfUnchanged(cas), opaque)
        });
        self.stats.other(touched)
    }

    /// While `key` holds exactly `item`: read it with its CAS token, then
    /// send the request `write` makes with that token, so an item stored
    /// by anyone in between is left alone. True if the server did it.
    fn while_holding(&self, key: &[u8], item: (u32, &[u8]), write: impl Fn(&mut Vec<u8>, u64, u32)) -> Result<bool> {
        self.on_server(key, |server| {
            self.exchange(server, |conn| {
                let Some((flags, value, cas, _)) = read_with_cas(conn, server, key)? else {
                    return Ok(false);
                };
                if (flags, value.as_slice()) != item {
                    return Ok(false);
                }
                let reply = request(conn, server, |out, opaque| write(out, cas, opaque))?;
                done_if_unchanged(server, reply)
            })
        })
    }

    /// Atomically add `delta` to a stored number and return the result;
    /// `None` if the key is missing. Memcached wraps at 2**64.
    pub fn incr(&self, key: &[u8], delta: u64) -> Result<Option<u64>> {
        self.arithmetic(key, delta, false)
    }

    /// Atomically subtract `delta` from a stored number and return the
    /// result; `None` if the key is missing. Memcached stops at 0.
    pub fn decr(&self, key: &[u8], delta: u64) -> Result<Option<u64>> {
        self.arithmetic(key, delta, true)
    }

    fn arithmetic(&self, key: &[u8], delta: u64, decrement: bool) -> Result<Option<u64>> {
        let result = self.single(
            key,
            |out, opaque| protocol::meta_arithmetic(out, key, delta, decrement, opaque),
            |conn, server, reply| match reply {
                Reply::Meta {
                    status: Status::Value(size),
                    ..
                } => {
                    let digits = conn.read_value(size).map_err(server.io_error())?;
                    std::str::from_utf8(&digits)
                        .ok()
                        .and_then(|d| d.trim().parse().ok())
                        .map(Some)
                        .ok_or_else(|| Error::protocol(server.name(), "arithmetic reply is not a number"))
                }
                Reply::Meta {
                    status: Status::NotFound,
                    ..
                } => Ok(None),
                Reply::ClientError(message) if message.contains("non-numeric") => Err(Error::NotANumber {
                    server: server.name().to_owned(),
                }),
                other => Err(unexpected(server, other)),
            },
        );
        self.stats.other(result)
    }

    /// `get_or_set`'s read: the item, or a placeholder vivified for
    /// `vivify` seconds when missing, with the marks saying whether this
    /// caller computes (`win`), must wait (a placeholder it did not win),
    /// or may serve what it got. With `recache`, the caller that finds
    /// less than `recache` seconds left wins a refresh. One round trip.
    pub fn claim(&self, key: &[u8], vivify: i64, recache: Option<i64>) -> Result<Claim> {
        let result = self.single(
            key,
            |out, opaque| protocol::meta_lease_get(out, key, opaque, vivify, recache),
            |conn, server, reply| match reply {
                Reply::Meta {
                    status: Status::Value(size),
                    flags,
                    cas,
                    ttl,
                    marks,
                    ..
                } => {
                    let value = conn.read_value(size).map_err(server.io_error())?;
                    let item = (!marks.placeholder(size, flags)).then_some(Item { value, flags });
                    Ok(Claim {
                        item,
                        marks,
                        cas: cas.unwrap_or(0),
                        ttl: ttl.unwrap_or(-1),
                    })
                }
                // A miss memcached could not vivify (out of memory): no one
                // else was told to compute, so this caller does; with no
                // placeholder, there is no turn to give back (memcached
                // matches no item to CAS 0).
                Reply::Meta {
                    status: Status::Miss, ..
                } => Ok(Claim {
                    item: None,
                    marks: Marks {
                        win: true,
                        ..Marks::default()
                    },
                    cas: 0,
                    ttl: -1,
                }),
                other => Err(unexpected(server, other)),
            },
        );
        match &result {
            Ok(claim) if claim.item.is_some() && !claim.marks.stale => self.stats.looked_up(1, 0),
            Ok(_) => self.stats.looked_up(0, 1),
            Err(error) => self.stats.failed(error),
        }
        result
    }

    /// A winner of `claim` that could not compute gives its turn back, so
    /// the next caller wins at once instead of after the lease: its
    /// placeholder is deleted, its stale item invalidated again, or its
    /// refreshing item stored again as it was (`turn`). Each only while
    /// the item is still the one claimed (`cas`); true if done.
    pub fn give_back(&self, key: &[u8], cas: u64, turn: Turn<'_>) -> Result<bool> {
        let result = self.single(
            key,
            |out, opaque| match turn {
                Turn::Placeholder => protocol::meta_delete_if_unchanged(out, key, cas, opaque),
                Turn::Stale => protocol::meta_invalidate(out, key, opaque, None, Some(cas)),
                Turn::Refresh { flags, value, ttl } => {
                    let mode = StoreMode::IfUnchanged(cas);
                    protocol::meta_set(out, key, value, flags, ttl_to_keep(ttl), mode, opaque)
                }
            },
            |_, server, reply| done_if_unchanged(server, reply),
        );
        self.stats.other(result)
    }

    /// Mark `key` stale (`md … I`): plain reads miss it from now on, while
    /// `claim` still serves it, with its win to one caller. With `ttl`, the
    /// stale item lives that long (memcached's TTL). True if it was there.
    pub fn invalidate(&self, key: &[u8], ttl: Option<i64>) -> Result<bool> {
        let result = self.single(
            key,
            |out, opaque| protocol::meta_invalidate(out, key, opaque, ttl, None),
            |_, server, reply| done_if_unchanged(server, reply),
        );
        self.stats.other(result)
    }

    /// Hand back the wins a batch read was given for stale items.
    fn hand_back_wins(&self, op: &GetMany<'_>) {
        let won = op.wins.take();
        for index in won {
            let key = op.keys[index];
            // Best effort: if it fails, the stale item's own TTL ends the
            // wait for a refresh.
            let _ = self.on_server(key, |server| self.exchange(server, |conn| hand_back(conn, server, key)));
        }
    }

    /// Empty every server. Every server is tried; the first error is
    /// returned.
    pub fn flush_all(&self) -> Result<()> {
        let mut first_error = None;
        for server in self.current().iter() {
            let result = self.exchange(server, |conn| {
                conn.out.extend_from_slice(b"flush_all\r\n");
                conn.send().map_err(server.io_error())?;
                let line = conn.read_line().map_err(server.io_error())?;
                if line == b"OK" {
                    Ok(())
                } else {
                    Err(unexpected(server, protocol::parse_reply(line)))
                }
            });
            if let Err(error) = result {
                self.stats.failed(&error);
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Close every idle pooled connection.
    pub fn close_idle(&self) {
        for server in self.current().iter() {
            server.pool.close_idle();
        }
    }

    /// The operation counters, and per server its `ServerPool`.
    pub fn stats(&self) -> (Snapshot, Vec<ServerPool>) {
        let servers = self.current().iter().map(Server::pool_stats).collect();
        (self.stats.snapshot(), servers)
    }

    /// Idle pooled connections, per server.
    pub fn idle_connections(&self) -> Vec<usize> {
        self.current().iter().map(|s| s.pool.idle()).collect()
    }

    /// Fetch many keys: one pipelined multi-get per server, all servers
    /// in parallel. Keys on a failed server are reported in the failures
    /// and read as misses.
    pub fn get_many(&self, keys: &[&[u8]]) -> Result<(Vec<Option<Item>>, Vec<BatchFailure>)> {
        check_keys(keys.iter().copied())?;
        let mut results = vec![None; keys.len()];
        let op = GetMany::new(keys);
        let failures = self.run_batch(keys, &mut results, &op)?;
        self.hand_back_wins(&op);
        let hits = results.iter().filter(|r| r.is_some()).count() as u64;
        self.stats.looked_up(hits, keys.len() as u64 - hits);
        Ok((results, failures))
    }

    /// Store many values with one pipeline per server.
    pub fn set_many(&self, entries: &[Entry<'_>], ttl: i64) -> Result<(Vec<StoreOutcome>, Vec<BatchFailure>)> {
        check_keys(entries.iter().map(|e| e.key))?;
        let keys: Vec<&[u8]> = entries.iter().map(|e| e.key).collect();
        let mut results = vec![StoreOutcome::Failed; entries.len()];
        let mut failures = self.run_batch(&keys, &mut results, &SetMany { entries, ttl })?;
        // A refused (too large) value must not leave the old one readable.
        let refused: Vec<&[u8]> = results
            .iter()
            .zip(&keys)
            .filter(|(outcome, _)| **outcome == StoreOutcome::TooLarge)
            .map(|(_, key)| *key)
            .collect();
        if !refused.is_empty() {
            let mut unused = vec![(); refused.len()];
            failures.extend(self.run_batch(&refused, &mut unused, &DeleteMany { keys: &refused })?);
        }
        let stored = results.iter().filter(|r| **r == StoreOutcome::Stored).count();
        self.stats.stored(stored as u64);
        Ok((results, failures))
    }

    /// Delete many keys with one pipeline per server.
    pub fn delete_many(&self, keys: &[&[u8]]) -> Result<Vec<BatchFailure>> {
        check_keys(keys.iter().copied())?;
        let mut results = vec![(); keys.len()];
        self.run_batch(keys, &mut results, &DeleteMany { keys })
    }

    /// Send `op` for `keys` to their servers: the first chunk to every
    /// server before reading any reply (servers work in parallel), then
    /// the rest chunk by chunk. A server that fails loses only its own
    /// keys.
    fn run_batch<Op: BatchOp>(&self, keys: &[&[u8]], results: &mut [Op::Out], op: &Op) -> Result<Vec<BatchFailure>> {
        let servers = self.current();
        let mut by_server: Vec<Vec<usize>> = vec![Vec::new(); servers.len()];
        for (index, key) in keys.iter().enumerate() {
            by_server[self.router.route(key)].push(index);
        }
        let mut failures = Vec::new();
        let mut started: Vec<(&Server, Lease<'_>, Vec<usize>, u32)> = Vec::new();
        for (server, indexes) in servers.iter().zip(by_server) {
            if indexes.is_empty() {
                continue;
            }
            match send_batch(server, op, &indexes) {
                Ok((lease, first_opaque)) => started.push((server, lease, indexes, first_opaque)),
                Err(error) => {
                    self.stats.failed(&error);
                    failures.push(BatchFailure { indexes, error });
                }
            }
        }
        for (server, lease, indexes, first_opaque) in started {
            if let Err((done, error)) = finish_batch(server, lease, op, &indexes, first_opaque, results) {
                self.stats.failed(&error);
                failures.push(BatchFailure {
                    indexes: indexes[done..].to_vec(),
                    error,
                });
            }
        }
        Ok(failures)
    }
}

/// Lease a connection to `server` and send the first chunk of a batch for
/// the keys at `indexes`; returns the lease and the chunk's first opaque.
fn send_batch<'p, Op: BatchOp>(server: &'p Server, op: &Op, indexes: &[usize]) -> Result<(Lease<'p>, u32)> {
    let mut lease = server.lease()?;
    let first_opaque = op.write(lease.conn(), &indexes[..indexes.len().min(CHUNK)]).first;
    match lease.conn().send().map_err(server.io_error()) {
        Ok(()) => Ok((lease, first_opaque)),
        Err(error) => {
            lease.discard(&error);
            Err(error)
        }
    }
}

/// Read a batch's replies, sending its later chunks in turn. The connection
/// goes back to the pool only if every reply was read; on failure, how
/// many keys were answered before it, and the error.
fn finish_batch<Op: BatchOp>(
    server: &Server,
    mut lease: Lease<'_>,
    op: &Op,
    indexes: &[usize],
    first_opaque: u32,
    results: &mut [Op::Out],
) -> std::result::Result<(), (usize, Error)> {
    let mut done = 0;
    for indexes in indexes.chunks(CHUNK) {
        let (chunk, step) = if done == 0 {
            let chunk = Chunk {
                indexes,
                first: first_opaque,
            };
            (chunk, Ok(()))
        } else {
            let chunk = op.write(lease.conn(), indexes);
            (chunk, lease.conn().send().map_err(server.io_error()))
        };
        if let Err(error) = step.and_then(|()| op.read(lease.conn(), server, chunk, results)) {
            // A pipeline's remaining replies are unread: never reuse.
            lease.discard(&error);
            return Err((done, error));
        }
        done += indexes.len();
    }
    lease.release();
    Ok(())
}

/// The round trip a combined get's leader runs.
struct CombinedGet<'a> {
    client: &'a Client,
    server: &'a Server,
}

impl RoundTrip for CombinedGet<'_> {
    type Request = Vec<u8>;
    type Reply = Option<Item>;
    type Error = Error;
    /// The keys: the whole trip runs in `receive`, since reading a get's
    /// reply may take another exchange on the connection (handing back a
    /// stale item's win, see `hand_back`).
    type Sent = Vec<Vec<u8>>;

    fn send(&self, keys: &[&Vec<u8>]) -> Vec<Vec<u8>> {
        keys.iter().map(|key| (*key).clone()).collect()
    }

    fn receive(&self, keys: Vec<Vec<u8>>) -> Vec<Result<Option<Item>>> {
        match &keys[..] {
            [key] => vec![self.client.get_alone(self.server, key)],
            _ => {
                let keys: Vec<&[u8]> = keys.iter().map(|key| key.as_slice()).collect();
                self.client.get_pipelined(self.server, &keys)
            }
        }
    }
}

/// Send one request built with a fresh opaque token and read its reply
/// line, which must carry that token.
fn request(conn: &mut Connection, server: &Server, build: impl FnOnce(&mut Vec<u8>, u32)) -> Result<Reply> {
    let opaque = conn.opaque();
    build(&mut conn.out, opaque);
    conn.send().map_err(server.io_error())?;
    read_reply(conn, server, Some(opaque))
}

/// A plain read that memcached handed the win for a stale item (the first
/// `mg` of one takes it) gives the win back by invalidating the item again,
/// while it is unchanged, so that a `get_or_set` caller refreshes it.
fn hand_back(conn: &mut Connection, server: &Server, key: &[u8]) -> Result<()> {
    match request(conn, server, |out, opaque| protocol::meta_standing(out, key, opaque))? {
        Reply::Meta {
            status: Status::Stored,
            cas: Some(cas),
            marks,
            ..
        } if marks.stale => {
            let reply = request(conn, server, |out, opaque| {
                protocol::meta_invalidate(out, key, opaque, None, Some(cas))
            })?;
            done_if_unchanged(server, reply).map(drop)
        }
        Reply::Meta {
            status: Status::Stored | Status::Miss,
            ..
        } => Ok(()),
        other => Err(unexpected(server, other)),
    }
}

/// How many times `add` retries storing over an item it found not current
/// while others keep changing it.
const ADD_ATTEMPTS: usize = 8;

/// `add` found the key taken. An invalidated item or a placeholder is not a
/// value (plain reads miss it), so the add stores over it, while it is
/// unchanged; a current value makes it `false`, as memcached's own add.
fn add_over_stale(conn: &mut Connection, server: &Server, key: &[u8], item: (u32, &[u8]), ttl: i64) -> Result<bool> {
    let (flags, value) = item;
    for _ in 0..ADD_ATTEMPTS {
        let mode = match request(conn, server, |out, opaque| protocol::meta_standing(out, key, opaque))? {
            Reply::Meta {
                status: Status::Stored,
                size,
                flags: held,
                cas: Some(cas),
                marks,
                ..
            } => {
                if !marks.not_current(size.unwrap_or(1), held) {
                    return Ok(false);
                }
                StoreMode::IfUnchanged(cas)
            }
            // Gone since: an ordinary add again.
            Reply::Meta {
                status: Status::Miss, ..
            } => StoreMode::Add,
            other => return Err(unexpected(server, other)),
        };
        match request(conn, server, |out, opaque| {
            protocol::meta_set(out, key, value, flags, ttl, mode, opaque)
        })? {
            Reply::Meta {
                status: Status::Stored, ..
            } => return Ok(true),
            Reply::Meta {
                status: Status::Exists | Status::NotFound | Status::NotStored,
                ..
            } => {}
            other => return Err(unexpected(server, other)),
        }
    }
    Ok(false)
}

/// An item read for a compare-and-swap: flags, value, CAS token, and the
/// TTL that keeps its expiry when it is stored again.
type Versioned = (u32, Vec<u8>, u64, i64);

/// `key` as read for a compare-and-swap; None if missing.
fn read_with_cas(conn: &mut Connection, server: &Server, key: &[u8]) -> Result<Option<Versioned>> {
    match request(conn, server, |out, opaque| {
        protocol::meta_get_with_cas(out, key, opaque)
    })? {
        Reply::Meta {
            status: Status::Value(size),
            flags,
            cas: Some(cas),
            ttl: Some(ttl),
            ..
        } => {
            let value = conn.read_value(size).map_err(server.io_error())?;
            Ok(Some((flags, value, cas, ttl_to_keep(ttl))))
        }
        Reply::Meta {
            status: Status::Miss, ..
        } => Ok(None),
        other => Err(unexpected(server, other)),
    }
}

/// The `T` that keeps an item's remaining TTL `left` (-1: none): 0 is
/// "never", at least 1 s otherwise, and beyond 30 days memcached reads
/// a TTL as a Unix time.
fn ttl_to_keep(left: i64) -> i64 {
    const MAX_RELATIVE: i64 = 60 * 60 * 24 * 30;
    match left {
        ..0 => 0,
        0 => 1,
        left if left > MAX_RELATIVE => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs() as i64);
            now + left
        }
        left => left,
    }
}

fn delete_on(conn: &mut Connection, server: &Server, key: &[u8]) -> Result<bool> {
    let reply = request(conn, server, |out, opaque| {
        protocol::meta_delete(out, key, opaque, false)
    })?;
    done_if_unchanged(server, reply)
}

/// Whether an `md` deleted: not when the key was missing, or (with a CAS
/// token) changed.
/// `HD` (done) as true; not found, or changed since its CAS token was
/// read, as false.
fn done_if_unchanged(server: &Server, reply: Reply) -> Result<bool> {
    match reply {
        Reply::Meta {
            status: Status::Stored, ..
        } => Ok(true),
        Reply::Meta {
            status: Status::NotFound | Status::Exists,
            ..
        } => Ok(false),
        other => Err(unexpected(server, other)),
    }
}

/// A multi-key operation as a pipeline: write the requests of a chunk,
/// then read all their replies.
trait BatchOp {
    type Out;
    /// Quiet requests are answered only on a hit or a failure, so the
    /// batch ends with a no-op whose reply marks the end.
    const QUIET: bool;

    /// Append the request for item `index`, tagged `opaque`.
    fn request(&self, out: &mut Vec<u8>, index: usize, opaque: u32);

    /// Append the requests for the items at `indexes` to `conn.out`.
    fn write<'c>(&self, conn: &mut Connection, indexes: &'c [usize]) -> Chunk<'c> {
        let chunk = Chunk {
            indexes,
            first: opaque_block(conn, indexes.len()),
        };
        for (index, opaque) in chunk.tagged() {
            self.request(&mut conn.out, index, opaque);
        }
        if Self::QUIET {
            protocol::meta_noop(&mut conn.out);
        }
        chunk
    }

    /// Read the replies to `chunk` into `out` (indexed like the items).
    fn read(&self, conn: &mut Connection, server: &Server, chunk: Chunk<'_>, out: &mut [Self::Out]) -> Result<()>;
}

/// The requests of one pipelined round trip: the items they are for, and
/// the opaque token of the first (the others follow consecutively).
#[derive(Clone, Copy)]
struct Chunk<'a> {
    indexes: &'a [usize],
    first: u32,
}

impl Chunk<'_> {
    /// Each item's index with its request's opaque token.
    fn tagged(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        let first = self.first;
        (self.indexes.iter().enumerate()).map(move |(pos, &index)| (index, first.wrapping_add(pos as u32)))
    }

    /// The index of the item whose reply is tagged `opaque`.
    fn item_of(&self, server: &Server, opaque: Option<u32>) -> Result<usize> {
        opaque
            .and_then(|o| self.indexes.get(o.wrapping_sub(self.first) as usize).copied())
            .ok_or_else(|| {
                Error::protocol(
                    server.name(),
                    format!("reply tagged {opaque:?} is not part of the batch"),
                )
            })
    }
}

/// Take consecutive opaque tokens for `n` requests.
fn opaque_block(conn: &mut Connection, n: usize) -> u32 {
    let first = conn.opaque();
    for _ in 1..n {
        conn.opaque();
    }
    first
}

struct GetMany<'a> {
    keys: &'a [&'a [u8]],
    /// Keys whose stale item this read was handed the win for (see
    /// `hand_back`).
    wins: std::cell::RefCell<Vec<usize>>,
}

impl<'a> GetMany<'a> {
    fn new(keys: &'a [&'a [u8]]) -> Self {
        GetMany {
            keys,
            wins: std::cell::RefCell::new(Vec::new()),
        }
    }
}

impl BatchOp for GetMany<'_> {
    type Out = Option<Item>;
    const QUIET: bool = true;

    fn request(&self, out: &mut Vec<u8>, index: usize, opaque: u32) {
        protocol::meta_get(out, self.keys[index], opaque, true, None, true);
    }

    fn read(&self, conn: &mut Connection, server: &Server, chunk: Chunk<'_>, out: &mut [Self::Out]) -> Result<()> {
        // Quiet gets answer hits only.
        until_noop(conn, server, |conn, reply| match reply {
            Reply::Meta {
                status: Status::Value(size),
                flags,
                opaque,
                marks,
                ..
            } => {
                let index = chunk.item_of(server, opaque)?;
                let value = conn.read_value(size).map_err(server.io_error())?;
                if !marks.not_current(size, flags) {
                    out[index] = Some(Item { value, flags });
                } else if marks.win {
                    self.wins.borrow_mut().push(index);
                }
                Ok(())
            }
            other => Err(unexpected(server, other)),
        })
    }
}

struct SetMany<'a> {
    entries: &'a [Entry<'a>],
    ttl: i64,
}

impl BatchOp for SetMany<'_> {
    type Out = StoreOutcome;
    const QUIET: bool = false;

    fn request(&self, out: &mut Vec<u8>, index: usize, opaque: u32) {
        let entry = &self.entries[index];
        protocol::meta_set(
            out,
            entry.key,
            entry.value,
            entry.flags,
            self.ttl,
            StoreMode::Set,
            opaque,
        );
    }

    fn read(&self, conn: &mut Connection, server: &Server, chunk: Chunk<'_>, out: &mut [Self::Out]) -> Result<()> {
        let last = chunk.indexes.len().saturating_sub(1);
        let mut nudges = 0;
        // Replies come in request order; error lines carry no token.
        for (position, (index, opaque)) in chunk.tagged().enumerate() {
            out[index] = match read_reply(conn, server, Some(opaque))? {
                Reply::Meta {
                    status: Status::Stored, ..
                } => StoreOutcome::Stored,
                Reply::ServerError(message) if message.contains("too large") => {
                    // Over TLS, memcached (1.6.18) skips a refused value and
                    // then waits for its socket, not for the requests behind
                    // it that it already decrypted: new bytes wake it.
                    if conn.is_tls() && position < last {
                        conn.send_no_op().map_err(server.io_error())?;
                        nudges += 1;
                    }
                    StoreOutcome::TooLarge
                }
                other => return Err(unexpected(server, other)),
            };
        }
        for _ in 0..nudges {
            match read_reply(conn, server, None)? {
                Reply::Meta {
                    status: Status::NoOp, ..
                } => {}
                other => return Err(unexpected(server, other)),
            }
        }
        Ok(())
    }
}

struct DeleteMany<'a> {
    keys: &'a [&'a [u8]],
}

impl BatchOp for DeleteMany<'_> {
    type Out = ();
    const QUIET: bool = true;

    fn request(&self, out: &mut Vec<u8>, index: usize, opaque: u32) {
        protocol::meta_delete(out, self.keys[index], opaque, true);
    }

    fn read(&self, conn: &mut Connection, server: &Server, chunk: Chunk<'_>, _: &mut [Self::Out]) -> Result<()> {
        // Quiet deletes stay silent on success; some servers still answer
        // NF for a missing key.
        until_noop(conn, server, |_, reply| match reply {
            Reply::Meta {
                status: Status::NotFound | Status::Stored,
                opaque,
                ..
            } => chunk.item_of(server, opaque).map(drop),
            other => Err(unexpected(server, other)),
        })
    }
}

/// Read the replies of a quiet pipeline up to its closing MN, handing each
/// other reply to `each`.
fn until_noop(
    conn: &mut Connection,
    server: &Server,
    mut each: impl FnMut(&mut Connection, Reply) -> Result<()>,
) -> Result<()> {
    loop {
        match read_reply(conn, server, None)? {
            Reply::Meta {
                status: Status::NoOp, ..
            } => return Ok(()),
            reply => each(conn, reply)?,
        }
    }
}
