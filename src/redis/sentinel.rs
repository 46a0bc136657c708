//! Redis Sentinel: the primary of a named service, as the Sentinels say,
//! and a new one after a failover.
//!
//! Each process keeps its own view (see `Client`'s `PerProcess`). Calls go
//! to the primary the Sentinels named, and the first call after the check
//! interval (`SentinelConfig::check_interval`) asks them again: after a
//! failover the old primary keeps taking writes until the Sentinels demote
//! it (about 10 s on Redis 7), and those writes are lost. Every new
//! connection to it checks (`ROLE_CHECK`) that it is not a replica by
//! now; Sentinel closes a demoted
//! primary's client connections, so after a failover every connection is a
//! new one. A call whose connection could not be opened (the primary is
//! down, or a replica now), or whose write was refused with `READONLY`,
//! asks the Sentinels again and goes to the primary they name if it is
//! another one: the command did not run, so it runs once. A reply that was
//! lost (a timeout, a dropped connection) is never sent again; the
//! Sentinels are asked again for the calls that follow.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::net::{Address, Connection};
use crate::sync::locked;

use super::client::parse_address;
use super::error::{Error, Result};
use super::resp::{self, Value};
use super::server::{
    Config, FirstTry, KnownServers, ROLE_CHECK, Route, SentinelConfig, Server, exchange, not_primary, reply,
    says_replica,
};

/// The Sentinels are asked at most this often while the primary they
/// named fails: during a failover every call would otherwise ask.
const ASK_INTERVAL: Duration = Duration::from_millis(250);

pub(crate) struct Sentinel {
    /// The service's name, as the Sentinels monitor it.
    service: String,
    /// The Sentinels, in LOCATION's order, each with a pool of its own.
    sentinels: Vec<Server>,
    /// The primaries (and demoted ones) this process met.
    servers: KnownServers,
    /// The current primary (`None` until the first call asks).
    primary: ArcSwapOption<Server>,
    /// Held while the Sentinels are asked, so that one thread asks and the
    /// others take its answer; when they were last asked.
    asked: Mutex<Option<Instant>>,
    /// Before there is a primary: why asking last failed.
    first_try: FirstTry,
    /// One round trip to a Sentinel per interval and process.
    check_interval: Duration,
    config: Config,
}

impl Sentinel {
    pub(crate) fn new(
        settings: &SentinelConfig,
        sentinels: Vec<Server>,
        servers: KnownServers,
        config: Config,
    ) -> Self {
        Sentinel {
            service: settings.service.clone(),
            check_interval: settings.check_interval,
            sentinels,
            servers,
            primary: ArcSwapOption::const_empty(),
            asked: Mutex::new(None),
            first_try: FirstTry::new(),
            config,
        }
    }

    /// The current primary, asked for if there is none yet, and asked
    /// for again once per check interval by one caller, which waits for
    /// the answer (the others do not). A check that fails keeps the
    /// current primary.
    pub(crate) fn primary(&self) -> Result<Arc<Server>> {
        let Some(current) = self.primary.load_full() else {
            return self.ask_again(None);
        };
        let Ok(mut asked) = self.asked.try_lock() else {
            return Ok(current);
        };
        if asked.is_some_and(|at| at.elapsed() < self.check_interval) {
            return Ok(current);
        }
        *asked = Some(Instant::now());
        Ok(self.ask_sentinels(Some(&current)).unwrap_or(current))
    }

    /// The primaries met (for stats and closing idle connections).
    pub(crate) fn known_servers(&self) -> Vec<Arc<Server>> {
        self.servers.all()
    }

    pub(crate) fn sentinels(&self) -> &[Server] {
        &self.sentinels
    }

    /// Run `run` on the primary; after a failure that shows a failover,
    /// the Sentinels are asked again, and a command that did not run is
    /// run on the new primary, once.
    pub(crate) fn route<T>(&self, mut run: impl FnMut(Route<'_>) -> Result<T>) -> Result<T> {
        let primary = self.primary()?;
        let error = match run(Route {
            server: &primary,
            asking: false,
        }) {
            Err(error) => error,
            done => return done,
        };
        if !shows_failover(&error) {
            return Err(error);
        }
        match self.ask_again(Some(&primary)) {
            Ok(fresh) if !Arc::ptr_eq(&fresh, &primary) && did_not_run(&error) => run(Route {
                server: &fresh,
                asking: false,
            }),
            _ => Err(error),
        }
    }

    /// After `error` on `server` (a call `route` did not make: a
    /// pipeline, a flush, a scan), the Sentinels are asked again if it
    /// shows a failover, for the calls that follow.
    pub(crate) fn noticed(&self, server: &Arc<Server>, error: &Error) {
        if shows_failover(error) {
            // The caller has its error; a later call meets any failure here.
            let _ = self.ask_again(Some(server));
        }
    }

    /// Ask the Sentinels for the primary (`ask_sentinels`), unless it
    /// changed since the caller saw `failed`, or the Sentinels were asked
    /// less than `ASK_INTERVAL` ago: then the current primary.
    fn ask_again(&self, failed: Option<&Arc<Server>>) -> Result<Arc<Server>> {
        let arrived = Instant::now();
        let mut asked = locked(&self.asked);
        match self.primary.load_full() {
            Some(current) => {
                let changed = failed.is_none_or(|failed| !Arc::ptr_eq(failed, &current));
                if changed || asked.is_some_and(|at| at.elapsed() < ASK_INTERVAL) {
                    return Ok(current);
                }
            }
            None => {
                if let Some(error) = self.first_try.failure(arrived, ASK_INTERVAL) {
                    return Err(error);
                }
            }
        }
        *asked = Some(Instant::now());
        let answer = self.ask_sentinels(None);
        if let Err(error) = &answer
            && self.primary.load().is_none()
        {
            self.first_try.failed(error);
        }
        answer
    }

    /// The Sentinels in turn until one names a primary, which becomes the
    /// current one. A server other than `trusted` must say it is the
    /// primary: a Sentinel may lag behind a failover. No new Sentinel is
    /// asked after the connect and I/O timeouts have passed. The caller
    /// holds `asked`.
    fn ask_sentinels(&self, trusted: Option<&Arc<Server>>) -> Result<Arc<Server>> {
        let give_up_at = Instant::now() + self.config.connect_timeout + self.config.io_timeout;
        let mut first_error = None;
        for sentinel in &self.sentinels {
            if first_error.is_some() && Instant::now() >= give_up_at {
                break;
            }
            match self.ask(sentinel, trusted) {
                Ok(primary) => {
                    self.primary.store(Some(Arc::clone(&primary)));
                    return Ok(primary);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| Error::Config("no Redis Sentinel to ask for the primary".into())))
    }

    /// The primary one Sentinel names, if it is `trusted` or does not say
    /// it is a replica.
    fn ask(&self, sentinel: &Server, trusted: Option<&Arc<Server>>) -> Result<Arc<Server>> {
        let service = self.service.as_bytes();
        let named = exchange(sentinel, |conn: &mut Connection| {
            resp::command(&mut conn.out, &[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", service]);
            conn.send().map_err(sentinel.io_error())?;
            reply(conn, sentinel)
        })?;
        let address = primary_address(sentinel.name(), &self.service, named)?;
        let primary = self.servers.get(&address)?;
        if trusted.is_some_and(|trusted| Arc::ptr_eq(trusted, &primary)) {
            return Ok(primary);
        }
        // A new connection's login checks the role already; a pooled one
        // may predate a demotion.
        let role = exchange(&primary, |conn: &mut Connection| {
            resp::command(&mut conn.out, ROLE_CHECK);
            conn.send().map_err(primary.io_error())?;
            reply(conn, &primary)
        });
        match role {
            Ok(role) if says_replica(&role) => Err(not_primary(primary.name())),
            // A server without HELLO cannot say: the Sentinel's word stands.
            Ok(_) | Err(Error::Server { .. }) => Ok(primary),
            Err(error) => Err(error),
        }
    }
}

/// The primary's address in a Sentinel's reply to
/// `SENTINEL GET-MASTER-ADDR-BY-NAME` (`[host, port]`, or nil for a
/// service it does not monitor).
fn primary_address(sentinel: &str, service: &str, named: Value) -> Result<Address> {
    let unexpected =
        |value: &Value| Error::protocol(sentinel, format!("unexpected reply {value:?} naming the primary"));
    let parts = match named {
        Value::Array(Some(parts)) => parts,
        Value::Array(None) | Value::Bulk(None) => {
            return Err(Error::Server {
                server: sentinel.to_owned(),
                message: format!("this Sentinel monitors no service named {service:?} (LOCATION's host)"),
            });
        }
        other => return Err(unexpected(&other)),
    };
    let [Value::Bulk(Some(host)), Value::Bulk(Some(port))] = parts.as_slice() else {
        return Err(unexpected(&Value::Array(Some(parts))));
    };
    let (host, port) = (String::from_utf8_lossy(host), String::from_utf8_lossy(port));
    let spec = match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    };
    parse_address(&spec).map_err(|_| Error::protocol(sentinel, format!("a primary at {spec:?}")))
}

/// Errors after which the primary may have changed: it could not be
/// reached, or it answered as a replica.
fn shows_failover(error: &Error) -> bool {
    match error {
        Error::Connect { .. } | Error::Timeout { .. } | Error::Io { .. } => true,
        Error::Server { message, .. } => message.starts_with("READONLY"),
        _ => false,
    }
}

/// Errors that say the command was not run: no connection was opened,
/// or a replica refused it.
fn did_not_run(error: &Error) -> bool {
    match error {
        Error::Connect { .. } => true,
        Error::Server { message, .. } => message.starts_with("READONLY"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::Bulk(Some(text.as_bytes().to_vec()))
    }

    #[test]
    fn the_primary_as_a_sentinel_names_it() {
        let named = |parts| primary_address("s:26379", "mymaster", Value::Array(Some(parts)));
        assert_eq!(
            named(vec![bulk("127.0.0.1"), bulk("6380")]).unwrap(),
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 6380
            }
        );
        assert_eq!(
            named(vec![bulk("::1"), bulk("6380")]).unwrap().to_string(),
            "[::1]:6380"
        );
        assert!(matches!(named(vec![bulk("127.0.0.1")]), Err(Error::Protocol { .. })));
        assert!(matches!(
            named(vec![bulk("h"), bulk("port")]),
            Err(Error::Protocol { .. })
        ));
        let unknown = primary_address("s:26379", "other", Value::Array(None)).unwrap_err();
        assert!(unknown.to_string().contains("no service named \"other\""), "{unknown}");
    }

    #[test]
    fn a_replica_is_told_by_its_reply_to_hello() {
        let hello = |role: &str| Value::Array(Some(vec![bulk("server"), bulk("redis"), bulk("role"), bulk(role)]));
        assert!(says_replica(&hello("replica")) && says_replica(&hello("slave")));
        assert!(!says_replica(&hello("master")) && !says_replica(&hello("primary")));
        // A server that cannot say is not taken for a replica.
        assert!(!says_replica(&Value::Error("ERR unknown command 'HELLO'".into())));
        assert!(!says_replica(&Value::Array(Some(vec![bulk("role")]))));
    }

    #[test]
    fn which_failures_show_a_failover_and_which_commands_did_not_run() {
        let server = || "p:6379".to_owned();
        let refused = Error::Connect {
            server: server(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        let readonly = Error::Server {
            server: server(),
            message: "READONLY You can't write against a read only replica.".into(),
        };
        let timeout = Error::Timeout { server: server() };
        let other = Error::Server {
            server: server(),
            message: "ERR unknown command".into(),
        };
        assert!(shows_failover(&refused) && did_not_run(&refused));
        assert!(shows_failover(&readonly) && did_not_run(&readonly));
        assert!(shows_failover(&timeout) && !did_not_run(&timeout));
        assert!(!shows_failover(&other) && !did_not_run(&other));
    }
}
