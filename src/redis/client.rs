//! The Redis client: one primary and optional read replicas, each with a
//! pool of connections; every cache operation as one command or one
//! server-side script, so none of them is a read-then-write race.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fork::{Built, PerProcess};
use crate::net::{Address, Connection, TlsTarget};
use crate::stats::{Counters, Snapshot};

use super::error::{Error, Result};
use super::resp::{self, Value};
use super::scripts::{self, Script};
use super::server::{Config, Login, Server};

/// An expiry as the commands take it: `None` keeps the value until it is
/// evicted, `Some(0)` expires it at once (Django: "don't cache"), else
/// whole seconds, as Django's RedisCache rounds them.
pub type Ttl = Option<u64>;

/// A server's name, idle and in-use connections, and connections dialed.
pub type ServerPool = (String, usize, usize, u64);

pub struct Client {
    stats: Counters,
    /// The primary first, then the replicas (a forked child builds its own).
    servers: PerProcess<Vec<Server>>,
    addresses: Vec<Address>,
    tls: Vec<Option<TlsTarget>>,
    login: Arc<Login>,
    config: Config,
}

fn io_error(server: &Server) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::from_io(server.name(), source)
}

/// The reply of one command: an error reply becomes the error (the
/// connection stays in step: the reply was read whole).
fn reply(conn: &mut Connection, server: &Server) -> Result<Value> {
    match resp::read(conn).map_err(io_error(server))? {
        Value::Error(message) => Err(Error::refused(server.name(), &message)),
        value => Ok(value),
    }
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

impl Client {
    /// A client for `servers` (`host:port`, `[v6]:port` or `unix:/path`;
    /// the first is the primary, the others read replicas). Nothing is
    /// dialed yet.
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
        let tls = match &config.tls {
            None => vec![None; addresses.len()],
            Some(options) => {
                let shared = crate::net::client_config(options).map_err(Error::Config)?;
                (addresses.iter())
                    .map(|address| {
                        let name = crate::net::server_name(address, options.server_name.as_deref(), "Redis")
                            .map_err(Error::Config)?;
                        Ok(Some(TlsTarget {
                            config: Arc::clone(&shared),
                            name,
                        }))
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let login = Arc::new(Login::new(&config)?);
        Ok(Client {
            stats: Counters::default(),
            servers: PerProcess::new(),
            addresses,
            tls,
            login,
            config,
        })
    }

    /// Display names of the servers, the primary first.
    pub fn servers(&self) -> Vec<String> {
        self.addresses.iter().map(ToString::to_string).collect()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This process's servers (a forked child builds its own).
    fn current(&self) -> Arc<Built<Vec<Server>>> {
        self.servers.get(|| {
            (self.addresses.iter().zip(&self.tls))
                .map(|(address, tls)| {
                    let tls = tls.as_ref().map(TlsTarget::for_this_process);
                    Server::new(address.clone(), tls, Arc::clone(&self.login), &self.config)
                })
                .collect()
        })
    }

    /// The server a read goes to: a random replica if there are any (and
    /// reads may go there), else the primary.
    fn reader<'s>(&self, servers: &'s [Server]) -> &'s Server {
        match servers.len() {
            n if n > 1 && self.config.read_from_replicas => &servers[1 + fastrand::usize(..n - 1)],
            _ => &servers[0],
        }
    }

    /// Run one request/reply exchange on a leased connection. It goes
    /// back to the pool only if the exchange left the stream in step.
    fn exchange<T>(&self, server: &Server, run: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut lease = server.lease()?;
        let result = run(lease.conn());
        match &result {
            Ok(_) => lease.release(),
            Err(error) if error.keeps_connection() => lease.release(),
            Err(error) => lease.discard(error),
        }
        result
    }

    /// One command, its reply.
    fn call(&self, server: &Server, args: &[&[u8]]) -> Result<Value> {
        self.exchange(server, |conn| {
            resp::command(&mut conn.out, args);
            conn.send().map_err(io_error(server))?;
            reply(conn, server)
        })
    }

    /// A script with one key: `EVALSHA`, and `EVAL` on the same
    /// connection if the server does not have it (restarted, flushed
    /// scripts, a replica promoted).
    fn eval(&self, server: &Server, script: &Script, key: &[u8], args: &[&[u8]]) -> Result<Value> {
        self.exchange(server, |conn| {
            script.invoke(&mut conn.out, false, key, args);
            conn.send().map_err(io_error(server))?;
            match reply(conn, server) {
                Err(Error::Server { message, .. }) if message.starts_with("NOSCRIPT") => {
                    script.invoke(&mut conn.out, true, key, args);
                    conn.send().map_err(io_error(server))?;
                    reply(conn, server)
                }
                other => other,
            }
        })
    }

    fn on_primary<T>(&self, run: impl FnOnce(&Server) -> Result<T>) -> Result<T> {
        run(&self.current()[0])
    }

    fn on_reader<T>(&self, run: impl FnOnce(&Server) -> Result<T>) -> Result<T> {
        let servers = self.current();
        run(self.reader(&servers))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let result = self.on_reader(|server| bulk(server, self.call(server, &[b"GET", key])?));
        self.stats.read(result)
    }

    /// Values of `keys`, in order (`None`: missing), one `MGET`.
    pub fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let result: Result<Vec<Option<Vec<u8>>>> = self.on_reader(|server| {
            let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
            args.push(b"MGET");
            args.extend_from_slice(keys);
            match self.call(server, &args)? {
                Value::Array(Some(values)) if values.len() == keys.len() => {
                    values.into_iter().map(|value| bulk(server, value)).collect()
                }
                other => Err(unexpected(server, "MGET", other)),
            }
        });
        match result {
            Ok(values) => {
                let hits = values.iter().filter(|value| value.is_some()).count() as u64;
                self.stats.looked_up(hits, keys.len() as u64 - hits);
                Ok(values)
            }
            Err(error) => {
                self.stats.failed(&error);
                Err(error)
            }
        }
    }

    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        let result = self.on_reader(|server| Ok(integer(server, self.call(server, &[b"EXISTS", key])?)? > 0));
        self.stats.other(result)
    }

    /// Store `value`; a TTL of 0 deletes the key instead (Django: a
    /// timeout of 0 or less means "don't cache", and no old value may
    /// stay readable).
    pub fn set(&self, key: &[u8], value: &[u8], ttl: Ttl) -> Result<()> {
        if ttl == Some(0) {
            return self.delete(key).map(drop);
        }
        let result = self.on_primary(|server| {
            self.exchange(server, |conn| {
                set_command(&mut conn.out, key, value, ttl, false);
                conn.send().map_err(io_error(server))?;
                stored(server, reply(conn, server)?).map(drop)
            })
        });
        self.stats.write(result)
    }

    /// Store only if the key is absent (`SET NX`, atomic); True if stored.
    /// With a TTL of 0 nothing is stored: True if the key was absent.
    pub fn add(&self, key: &[u8], value: &[u8], ttl: Ttl) -> Result<bool> {
        if ttl == Some(0) {
            let result = self.on_primary(|server| Ok(integer(server, self.call(server, &[b"EXISTS", key])?)? == 0));
            return self.stats.other(result);
        }
        let result = self.on_primary(|server| {
            self.exchange(server, |conn| {
                set_command(&mut conn.out, key, value, ttl, true);
                conn.send().map_err(io_error(server))?;
                stored(server, reply(conn, server)?)
            })
        });
        self.stats.stored_if(result)
    }

    /// A new expiry for an existing key; True if it existed. `None`
    /// removes the expiry (a script: `PERSIST` alone says False for a key
    /// that had none), 0 deletes the key.
    pub fn touch(&self, key: &[u8], ttl: Ttl) -> Result<bool> {
        let result = self.on_primary(|server| {
            let value = match ttl {
                None => self.eval(server, &scripts::PERSIST, key, &[])?,
                Some(0) => self.call(server, &[b"DEL", key])?,
                Some(ttl) => {
                    let ms = itoa::Buffer::new().format(lifetime_ms(ttl)).to_owned();
                    self.call(server, &[b"PEXPIRE", key, ms.as_bytes()])?
                }
            };
            Ok(integer(server, value)? > 0)
        });
        self.stats.other(result)
    }

    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        let result = self.on_primary(|server| Ok(integer(server, self.call(server, &[b"DEL", key])?)? > 0));
        self.stats.delete(result)
    }

    /// Delete only while the key holds exactly `value` (a lock's release).
    pub fn delete_if(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        let result = self.on_primary(|server| {
            Ok(integer(server, self.eval(server, &scripts::DELETE_IF_EQUAL, key, &[value])?)? > 0)
        });
        self.stats.delete(result)
    }

    /// Add `delta` to an integer value, keeping its expiry; `None` if the
    /// key is missing. One script, so a key that expires meanwhile is
    /// never re-created from 0 (Django's `EXISTS` then `INCRBY` can).
    pub fn incr(&self, key: &[u8], delta: i64) -> Result<Option<i64>> {
        let result = self.on_primary(|server| {
            let delta = itoa::Buffer::new().format(delta).to_owned();
            // The new value comes back as digits (see INCR_IF_EXISTS).
            match self.eval(server, &scripts::INCR_IF_EXISTS, key, &[delta.as_bytes()])? {
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

    /// Read-modify-write, keeping the TTL: `change(value)` gives the new
    /// value, stored only if the key still holds the value it was given
    /// (a compare-and-set script), else read and changed again. `None` if
    /// the key is missing. An error of `change` writes nothing.
    pub fn update<E>(
        &self,
        key: &[u8],
        mut change: impl FnMut(&[u8]) -> std::result::Result<Vec<u8>, E>,
    ) -> Result<std::result::Result<Option<Vec<u8>>, E>> {
        let result = self.on_primary(|server| {
            let deadline = Instant::now() + self.config.io_timeout * 4;
            let mut pause = Duration::from_micros(50);
            loop {
                let Some(old) = bulk(server, self.call(server, &[b"GET", key])?)? else {
                    return Ok(Ok(None));
                };
                let new = match change(&old) {
                    Ok(new) => new,
                    Err(error) => return Ok(Err(error)),
                };
                match self.eval(server, &scripts::REPLACE_IF_EQUAL, key, &[&old, &new])? {
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

    /// Store every `(key, value)`, pipelined in one round trip (no
    /// transaction: each `SET` is atomic on its own, as in a loop of
    /// `set`s). A TTL of 0 deletes the keys.
    pub fn set_many(&self, entries: &[(&[u8], &[u8])], ttl: Ttl) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if ttl == Some(0) {
            let keys: Vec<&[u8]> = entries.iter().map(|(key, _)| *key).collect();
            return self.delete_many(&keys);
        }
        let result = self.on_primary(|server| {
            self.exchange(server, |conn| {
                for (key, value) in entries {
                    set_command(&mut conn.out, key, value, ttl, false);
                }
                conn.send().map_err(io_error(server))?;
                // Every reply is read, even after a refusal, so the
                // connection stays in step.
                let mut first_error = None;
                for _ in entries {
                    if let Err(error) = reply(conn, server).and_then(|value| stored(server, value)) {
                        if !error.keeps_connection() {
                            return Err(error);
                        }
                        first_error.get_or_insert(error);
                    }
                }
                first_error.map_or(Ok(()), Err)
            })
        });
        match result {
            Ok(()) => {
                self.stats.stored(entries.len() as u64);
                Ok(())
            }
            Err(error) => {
                self.stats.failed(&error);
                Err(error)
            }
        }
    }

    /// Delete `keys` with one `DEL`.
    pub fn delete_many(&self, keys: &[&[u8]]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let result = self.on_primary(|server| {
            let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
            args.push(b"DEL");
            args.extend_from_slice(keys);
            integer(server, self.call(server, &args)?)
        });
        match result {
            Ok(deleted) => {
                self.stats.deleted(deleted.max(0) as u64);
                Ok(())
            }
            Err(error) => {
                self.stats.failed(&error);
                Err(error)
            }
        }
    }

    /// Empty the database (`FLUSHDB` on the primary; replicas follow it).
    pub fn clear(&self) -> Result<()> {
        let result = self.on_primary(|server| match self.call(server, &[b"FLUSHDB"])? {
            Value::Status(status) if status == "OK" => Ok(()),
            other => Err(unexpected(server, "FLUSHDB", other)),
        });
        self.stats.other(result)
    }

    /// Close every idle pooled connection.
    pub fn close_idle(&self) {
        for server in self.current().iter() {
            server.pool.close_idle();
        }
    }

    /// The operation counters, and per server: (name, idle, in use, dialed).
    pub fn stats(&self) -> (Snapshot, Vec<ServerPool>) {
        let servers = (self.current().iter())
            .map(|s| (s.name().to_owned(), s.pool.idle(), s.pool.in_use(), s.pool.connects()))
            .collect();
        (self.stats.snapshot(), servers)
    }

    /// Idle pooled connections, per server.
    pub fn idle_connections(&self) -> Vec<usize> {
        self.current().iter().map(|s| s.pool.idle()).collect()
    }
}

/// One server as Python hands it over: `host:port`, `[v6]:port`, or
/// `unix:/path` (Python reads Django's URLs and fills in the port).
fn parse_address(spec: &str) -> Result<Address> {
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
