//! Redis Cluster: which node serves a key, learnt from `CLUSTER SLOTS`,
//! and the redirects nodes answer with while slots move between them.
//!
//! Each process keeps its own slot map and its own servers (pools), one
//! per node address, made on first use (see `Client`'s `PerProcess`). A
//! call goes to its key's slot owner; `MOVED` sends it to the new owner
//! and refreshes the map, `ASK` sends it once to a node importing the
//! slot, `TRYAGAIN`/`CLUSTERDOWN` retry it after short pauses. Every one
//! of those replies means the node did not run the command, so following
//! them never runs a command twice; a reply that was lost (a timeout, a
//! dropped connection) is never retried.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use rustls::ClientConfig;

use crate::net::{Address, Connection};
use crate::sync::locked;

use super::client::{BatchFailure, parse_address};
use super::error::{Error, Result};
use super::resp::{self, Value};
use super::server::{Config, FirstTry, KnownServers, Lease, Login, Route, Server, exchange, reply};
use super::slot::{SLOTS, slot};

/// Redirects one call follows (`MOVED`, `ASK`, or another owner after a
/// refused connection) before it gives up: a slot moves once at a time,
/// so more means the nodes disagree.
pub(crate) const MAX_REDIRECTS: usize = 5;

/// After a node refused a connection, or a refresh failed, the map is
/// asked for again at most this often: a node that is down would
/// otherwise cost every call a `CLUSTER SLOTS` round trip.
const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// The longest pause between tries while a node answers `TRYAGAIN` or
/// `CLUSTERDOWN` (a failover, a slot migration's last step).
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// `owners` value of a slot no node serves.
const NO_OWNER: u16 = u16::MAX;

/// What a node's error reply asks the client to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Redirect<'m> {
    /// The slot is served at this endpoint now: go there, refresh the map.
    Moved(&'m str),
    /// The slot is being migrated there and the key is not here: send this
    /// one command there, after `ASKING`; the map stays.
    Ask(&'m str),
    /// Try the same node again shortly (`TRYAGAIN`: a multi-key command
    /// during a migration; `CLUSTERDOWN`: a failover under way).
    Wait,
}

impl Redirect<'_> {
    /// `MOVED 3999 127.0.0.1:6381`, `ASK 3999 127.0.0.1:6381`, `TRYAGAIN ...`,
    /// `CLUSTERDOWN ...`; anything else is no redirect.
    pub(crate) fn parse(message: &str) -> Option<Redirect<'_>> {
        let mut words = message.split(' ');
        match words.next()? {
            kind @ ("MOVED" | "ASK") => {
                words.next()?.parse::<u16>().ok().filter(|slot| *slot < SLOTS)?;
                let endpoint = words.next()?;
                Some(if kind == "MOVED" {
                    Redirect::Moved(endpoint)
                } else {
                    Redirect::Ask(endpoint)
                })
            }
            "TRYAGAIN" | "CLUSTERDOWN" => Some(Redirect::Wait),
            _ => None,
        }
    }
}

/// A node's address from an endpoint a node reported (`host:port`, the
/// host possibly an IPv6 address without brackets). An empty host is the
/// host of the node that reported it (Redis 7 says so for a node that
/// does not know its own address).
fn node_address(endpoint: &str, reported_by: &Address) -> Result<Address> {
    // ":7002" has no host; "::1:7002" is IPv6's loopback.
    match endpoint.strip_prefix(':').filter(|port| !port.contains(':')) {
        Some(port) => {
            let Address::Tcp { host, .. } = reported_by else {
                return Err(Error::protocol(
                    &reported_by.to_string(),
                    format!("a cluster node at {endpoint:?} with no host"),
                ));
            };
            let port: u16 = port
                .parse()
                .map_err(|_| Error::protocol(&reported_by.to_string(), format!("bad node endpoint {endpoint:?}")))?;
            Ok(Address::Tcp {
                host: host.clone(),
                port,
            })
        }
        None if endpoint.starts_with("unix:") => Err(Error::protocol(
            &reported_by.to_string(),
            format!("bad node endpoint {endpoint:?}"),
        )),
        None => parse_address(endpoint)
            .map_err(|_| Error::protocol(&reported_by.to_string(), format!("bad node endpoint {endpoint:?}"))),
    }
}

/// `CLUSTER SLOTS` as `(first slot, last slot, primary's endpoint)`
/// ranges. An endpoint of `?` (unknown to the node asked) leaves its
/// slots without an owner; an empty or null one is the node asked.
fn slot_ranges(reply: Value, asked: &Address) -> Result<Vec<(u16, u16, Address)>> {
    let bad = |what: &str| Error::protocol(&asked.to_string(), format!("unexpected CLUSTER SLOTS reply: {what}"));
    let Value::Array(Some(ranges)) = reply else {
        return Err(bad("not an array"));
    };
    let mut parsed = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(Some(range)) = range else {
            return Err(bad("a range that is not an array"));
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(Some(primary)))) =
            (range.first(), range.get(1), range.get(2))
        else {
            return Err(bad("a range without its slots and primary"));
        };
        let (first, last) = match (u16::try_from(*first), u16::try_from(*last)) {
            (Ok(first), Ok(last)) if first <= last && last < SLOTS => (first, last),
            _ => return Err(bad("a slot out of range")),
        };
        let host = match primary.first() {
            Some(Value::Bulk(Some(host))) => String::from_utf8_lossy(host).into_owned(),
            Some(Value::Bulk(None)) => String::new(),
            _ => return Err(bad("a node without a host")),
        };
        let Some(&Value::Int(port)) = primary.get(1) else {
            return Err(bad("a node without a port"));
        };
        let port = u16::try_from(port).map_err(|_| bad("a port out of range"))?;
        if host == "?" {
            continue;
        }
        parsed.push((first, last, node_address(&format!("{host}:{port}"), asked)?));
    }
    Ok(parsed)
}

/// Which node serves each slot, as one node said at one moment.
pub(crate) struct SlotMap {
    /// Per slot, its owner's index in `nodes` (`NO_OWNER`: none).
    owners: Vec<u16>,
    /// The primaries, each once.
    pub(crate) nodes: Vec<Arc<Server>>,
    /// Counts refreshes: a caller that saw an older map knows it changed.
    epoch: u64,
}

impl SlotMap {
    fn owner_index(&self, slot: u16) -> Option<usize> {
        match self.owners.get(usize::from(slot)) {
            Some(&NO_OWNER) | None => None,
            Some(&index) => Some(usize::from(index)),
        }
    }

    fn owner(&self, slot: u16) -> Option<&Arc<Server>> {
        self.owner_index(slot).map(|index| &self.nodes[index])
    }
}

/// Why the map is asked for again.
#[derive(Clone, Copy)]
enum Trigger<'a> {
    /// A node answered `MOVED` to this node (asked first).
    Moved(&'a Arc<Server>),
    /// This node refused a connection (not asked; rate-limited).
    Refused(&'a Server),
    /// The map has no owner for a slot (rate-limited: a cluster may leave
    /// slots unserved on purpose).
    Unowned,
}

/// One key operation of a batch: its command for the key at an index, and
/// what its reply means.
pub(crate) trait BatchOp {
    type Out;
    /// Append the command for the key at `index`.
    fn write(&self, out: &mut Vec<u8>, index: usize);
    /// The outcome of its (non-error) reply.
    fn read(&self, server: &Server, value: Value) -> Result<Self::Out>;
}

/// A process's view of a cluster.
pub(crate) struct Cluster {
    /// LOCATION's nodes: where the first map comes from, and the last
    /// resort of a refresh.
    seeds: Vec<Address>,
    /// Every node this process talked to, each with its pool.
    servers: KnownServers,
    /// The current map (`None` until the first call asks for one).
    map: ArcSwapOption<SlotMap>,
    /// Held while the map is asked for, so that one thread asks and the
    /// others take its answer; when the last refresh failed, and when.
    refreshing: Mutex<Option<(Instant, bool)>>,
    /// Before there is a map: why asking for one last failed.
    first_try: FirstTry,
    config: Config,
}

impl Cluster {
    pub(crate) fn new(seeds: Vec<Address>, tls: Option<Arc<ClientConfig>>, login: Arc<Login>, config: Config) -> Self {
        Cluster {
            seeds,
            servers: KnownServers::new(tls, login, config.clone()),
            map: ArcSwapOption::const_empty(),
            refreshing: Mutex::new(None),
            first_try: FirstTry::new(),
            config,
        }
    }

    /// The server (pool) of the node at `address`, made on first use.
    pub(crate) fn server(&self, address: &Address) -> Result<Arc<Server>> {
        self.servers.get(address)
    }

    /// Every server this process made, by name.
    pub(crate) fn known_servers(&self) -> Vec<Arc<Server>> {
        self.servers.all()
    }

    /// The current map, asked for if there is none yet.
    pub(crate) fn map(&self) -> Result<Arc<SlotMap>> {
        match self.map.load_full() {
            Some(map) => Ok(map),
            None => self.refresh(0, None),
        }
    }

    /// Ask a node for the map, unless another thread did since the caller
    /// saw the map of epoch `seen` (then that one). One thread asks at a
    /// time. After a refused connection, or a refresh that failed, at most
    /// once per `REFRESH_INTERVAL` (then the current map). The nodes are
    /// tried in turn until one answers, starting no new one after the
    /// connect and I/O timeouts have passed: `MOVED`'s target first, then
    /// the map's nodes, then the seeds.
    fn refresh(&self, seen: u64, trigger: Option<Trigger<'_>>) -> Result<Arc<SlotMap>> {
        let arrived = Instant::now();
        let mut last = locked(&self.refreshing);
        let current = self.map.load_full();
        if current.is_none()
            && let Some(error) = self.first_try.failure(arrived, REFRESH_INTERVAL)
        {
            return Err(error);
        }
        if let Some(map) = &current {
            let recent = |&(at, _): &(Instant, bool)| at.elapsed() < REFRESH_INTERVAL;
            let failed_recently = last.as_ref().is_some_and(|entry| recent(entry) && !entry.1);
            let limited = matches!(trigger, Some(Trigger::Refused(_) | Trigger::Unowned));
            let refreshed_recently = limited && last.as_ref().is_some_and(recent);
            if map.epoch != seen || failed_recently || refreshed_recently {
                return Ok(Arc::clone(map));
            }
        }
        let (first, avoid) = match trigger {
            Some(Trigger::Moved(server)) => (Some(server), None),
            Some(Trigger::Refused(server)) => (None, Some(server.name())),
            Some(Trigger::Unowned) | None => (None, None),
        };
        let mut candidates: Vec<Arc<Server>> = Vec::new();
        let mut add = |server: Arc<Server>| {
            if Some(server.name()) != avoid && !candidates.iter().any(|c| c.name() == server.name()) {
                candidates.push(server);
            }
        };
        if let Some(server) = first {
            add(Arc::clone(server));
        }
        for server in current.iter().flat_map(|map| map.nodes.iter()) {
            add(Arc::clone(server));
        }
        for seed in &self.seeds {
            add(self.server(seed)?);
        }
        let give_up_at = Instant::now() + self.config.connect_timeout + self.config.io_timeout;
        let mut first_error = None;
        for server in candidates {
            if first_error.is_some() && Instant::now() >= give_up_at {
                break;
            }
            match self.ask_for_map(&server, current.as_ref().map_or(1, |map| map.epoch + 1)) {
                Ok(map) => {
                    let map = Arc::new(map);
                    self.map.store(Some(Arc::clone(&map)));
                    *last = Some((Instant::now(), true));
                    return Ok(map);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        *last = Some((Instant::now(), false));
        let error = first_error.unwrap_or_else(|| Error::Config("no Redis Cluster node to ask for its slots".into()));
        if current.is_none() {
            self.first_try.failed(&error);
        }
        Err(error)
    }

    /// `CLUSTER SLOTS` of one node, as a map of `epoch`.
    fn ask_for_map(&self, server: &Server, epoch: u64) -> Result<SlotMap> {
        let reply = exchange(server, |conn: &mut Connection| {
            resp::command(&mut conn.out, &[b"CLUSTER", b"SLOTS"]);
            conn.send().map_err(server.io_error())?;
            reply(conn, server)
        })?;
        let mut owners = vec![NO_OWNER; usize::from(SLOTS)];
        let mut nodes: Vec<Arc<Server>> = Vec::new();
        for (first, last, address) in slot_ranges(reply, server.address())? {
            let node = self.server(&address)?;
            let index = match nodes.iter().position(|known| Arc::ptr_eq(known, &node)) {
                Some(index) => index,
                None => {
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            // At most SLOTS ranges, so at most SLOTS nodes: an index fits.
            let index = u16::try_from(index).map_err(|_| Error::protocol(server.name(), "too many nodes"))?;
            owners[usize::from(first)..=usize::from(last)].fill(index);
        }
        Ok(SlotMap { owners, nodes, epoch })
    }

    /// Run `run` on the node serving `slot`, following the cluster's
    /// redirects (at most `MAX_REDIRECTS`) and waiting out `TRYAGAIN` and
    /// `CLUSTERDOWN` (at most the I/O timeout). After a refused
    /// connection the call goes to the slot's owner in a fresh map, if
    /// that is another node (a promoted replica); `run` was not sent then.
    pub(crate) fn route<T>(&self, slot: u16, run: impl FnMut(Route<'_>) -> Result<T>) -> Result<T> {
        self.route_from(slot, None, run)
    }

    /// `route`, starting at a node a redirect named (`Some((node, asking))`).
    fn route_from<T>(
        &self,
        slot: u16,
        mut redirected: Option<(Arc<Server>, bool)>,
        mut run: impl FnMut(Route<'_>) -> Result<T>,
    ) -> Result<T> {
        let waits_until = Instant::now() + self.config.io_timeout;
        let mut pause = Duration::from_millis(1);
        let mut redirects = usize::from(redirected.is_some());
        loop {
            let map = self.map()?;
            let (server, asking) = match redirected.take() {
                Some(target) => target,
                None => (self.owner(&map, slot)?, false),
            };
            let error = match run(Route {
                server: &server,
                asking,
            }) {
                Err(error) => error,
                done => return done,
            };
            let redirect = match &error {
                Error::Server { message, .. } => Redirect::parse(message),
                // Nothing was sent: the node is down, or gone from the cluster.
                Error::Connect { .. } => {
                    let fresh = self.refresh(map.epoch, Some(Trigger::Refused(&server)));
                    let elsewhere =
                        fresh.is_ok_and(|fresh| fresh.owner(slot).is_some_and(|o| !Arc::ptr_eq(o, &server)));
                    redirects += 1;
                    if elsewhere && redirects <= MAX_REDIRECTS {
                        continue;
                    }
                    return Err(error);
                }
                _ => None,
            };
            match redirect {
                None => return Err(error),
                Some(Redirect::Wait) => {
                    if Instant::now() + pause > waits_until {
                        return Err(error);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_PAUSE);
                    redirected = Some((server, asking));
                }
                Some(Redirect::Moved(endpoint) | Redirect::Ask(endpoint)) => {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(gave_up(error));
                    }
                    let asking = matches!(redirect, Some(Redirect::Ask(_)));
                    let target = self.server(&node_address(endpoint, server.address())?)?;
                    if !asking {
                        // The target is followed either way; a map that
                        // cannot be had now is asked for by a later call.
                        let _ = self.refresh(map.epoch, Some(Trigger::Moved(&target)));
                    }
                    redirected = Some((target, asking));
                }
            }
        }
    }

    /// The owner of `slot` (the map asked for again if it has none), or
    /// the error a node gives for a slot nobody serves.
    fn owner(&self, map: &Arc<SlotMap>, slot: u16) -> Result<Arc<Server>> {
        if let Some(owner) = map.owner(slot) {
            return Ok(Arc::clone(owner));
        }
        let fresh = self
            .refresh(map.epoch, Some(Trigger::Unowned))
            .unwrap_or_else(|_| Arc::clone(map));
        fresh.owner(slot).cloned().ok_or_else(|| Error::Server {
            server: self.seed_names(),
            message: format!("CLUSTERDOWN Hash slot not served (slot {slot}: no node serves it)"),
        })
    }

    fn seed_names(&self) -> String {
        let names: Vec<String> = self.seeds.iter().map(ToString::to_string).collect();
        format!("cluster {}", names.join(","))
    }

    /// Run `op` for every key: the keys of each node as one pipeline,
    /// every pipeline sent before any reply is read (the nodes work in
    /// parallel). A node that fails fails its own keys only; a key whose
    /// node redirects it (its slot moving) goes again on its own through
    /// `route`, as `single` says. Outcomes land in `results`, failures
    /// come back.
    pub(crate) fn batch<Op: BatchOp>(
        &self,
        keys: &[&[u8]],
        results: &mut [Op::Out],
        op: &Op,
        mut single: impl FnMut(Route<'_>, usize) -> Result<Op::Out>,
    ) -> Vec<BatchFailure> {
        let map = match self.map() {
            Ok(map) => map,
            Err(error) => {
                return vec![BatchFailure {
                    indexes: (0..keys.len()).collect(),
                    error,
                }];
            }
        };
        let mut by_node: Vec<Vec<usize>> = vec![Vec::new(); map.nodes.len()];
        // Keys of a slot without an owner go through `route`, which says why.
        let mut again = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            match map.owner_index(slot(key)) {
                Some(node) => by_node[node].push(index),
                None => again.push((index, None)),
            }
        }
        let mut failures = Vec::new();
        let mut started: Vec<(&Server, Lease<'_>, Vec<usize>)> = Vec::new();
        let mut refused: Option<&Server> = None;
        for (server, indexes) in map.nodes.iter().zip(by_node) {
            if indexes.is_empty() {
                continue;
            }
            match send_pipeline(server, op, &indexes) {
                Ok(lease) => started.push((&**server, lease, indexes)),
                Err(error) => {
                    if matches!(error, Error::Connect { .. }) {
                        refused.get_or_insert(server);
                    }
                    failures.push(BatchFailure { indexes, error });
                }
            }
        }
        let mut moved = false;
        for (server, mut lease, indexes) in started {
            let mut broken = None;
            for (done, &index) in indexes.iter().enumerate() {
                let outcome = match resp::read(lease.conn()).map_err(server.io_error()) {
                    Ok(Value::Error(message)) => match Redirect::parse(&message) {
                        Some(redirect) => {
                            moved |= matches!(redirect, Redirect::Moved(_));
                            again.push((index, self.redirect_target(&redirect, server)));
                            continue;
                        }
                        // Refused, but read whole: the pipeline stays in step.
                        None => Err(Error::refused(server.name(), &message)),
                    },
                    Ok(value) => op.read(server, value),
                    Err(error) => Err(error),
                };
                match outcome {
                    Ok(out) => results[index] = out,
                    Err(error) if error.keeps_connection() => failures.push(BatchFailure {
                        indexes: vec![index],
                        error,
                    }),
                    Err(error) => {
                        // The rest of the replies are unread (or garbled):
                        // their keys fail with it, and the connection goes.
                        broken = Some((done, error));
                        break;
                    }
                }
            }
            match broken {
                None => lease.release(),
                Some((done, error)) => {
                    lease.discard(&error);
                    failures.push(BatchFailure {
                        indexes: indexes[done..].to_vec(),
                        error,
                    });
                }
            }
        }
        // After every reply is read (the pipelines' deadlines run): a map
        // in which the redirected keys, or later calls for a node that is
        // down, find their owner.
        if moved {
            let _ = self.refresh(map.epoch, None);
        } else if let Some(server) = refused {
            let _ = self.refresh(map.epoch, Some(Trigger::Refused(server)));
        }
        for (index, target) in again {
            match self.route_from(slot(keys[index]), target, |route| single(route, index)) {
                Ok(out) => results[index] = out,
                Err(error) => failures.push(BatchFailure {
                    indexes: vec![index],
                    error,
                }),
            }
        }
        failures
    }
}

impl Cluster {
    /// Where a redirect of a batch's key sends it (`None`: where the map
    /// says, as for `TRYAGAIN`, or an endpoint that cannot be used).
    fn redirect_target(&self, redirect: &Redirect<'_>, from: &Server) -> Option<(Arc<Server>, bool)> {
        let (endpoint, asking) = match redirect {
            Redirect::Moved(endpoint) => (endpoint, false),
            Redirect::Ask(endpoint) => (endpoint, true),
            Redirect::Wait => return None,
        };
        let address = node_address(endpoint, from.address()).ok()?;
        Some((self.server(&address).ok()?, asking))
    }
}

/// Lease a connection and send one node's share of a batch.
fn send_pipeline<'s, Op: BatchOp>(server: &'s Server, op: &Op, indexes: &[usize]) -> Result<Lease<'s>> {
    let mut lease = server.lease()?;
    for &index in indexes {
        op.write(&mut lease.conn().out, index);
    }
    match lease.conn().send().map_err(server.io_error()) {
        Ok(()) => Ok(lease),
        Err(error) => {
            lease.discard(&error);
            Err(error)
        }
    }
}

/// The error of a call that met more redirects than it follows.
fn gave_up(error: Error) -> Error {
    match error {
        Error::Server { server, message } => Error::Server {
            server,
            message: format!("{message} (gave up after {MAX_REDIRECTS} redirects: the cluster's nodes disagree)"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Address {
        Address::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn redirects_are_read_from_error_replies() {
        assert_eq!(
            Redirect::parse("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved("127.0.0.1:6381"))
        );
        assert_eq!(Redirect::parse("ASK 0 ::1:7000"), Some(Redirect::Ask("::1:7000")));
        assert_eq!(
            Redirect::parse("TRYAGAIN Multiple keys request during rehashing of slot"),
            Some(Redirect::Wait)
        );
        assert_eq!(Redirect::parse("CLUSTERDOWN The cluster is down"), Some(Redirect::Wait));
        for other in [
            "ERR unknown command",
            "MOVED",
            "MOVED x 1.2.3.4:5",
            "MOVED 16384 h:1",
            "ASK 1",
            "",
        ] {
            assert_eq!(Redirect::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn node_addresses_as_nodes_report_them() {
        let asked = tcp("10.0.0.1", 7000);
        assert_eq!(node_address("10.0.0.2:7001", &asked).unwrap(), tcp("10.0.0.2", 7001));
        assert_eq!(node_address("::1:7001", &asked).unwrap(), tcp("::1", 7001));
        assert_eq!(node_address("[::1]:7001", &asked).unwrap(), tcp("::1", 7001));
        assert_eq!(node_address(":7002", &asked).unwrap(), tcp("10.0.0.1", 7002));
        for bad in ["", "host", "h:x", ":x", "unix:/tmp/s", "h:70000"] {
            assert!(node_address(bad, &asked).is_err(), "{bad:?}");
        }
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(Some(vec![
            Value::Bulk(Some(host.as_bytes().to_vec())),
            Value::Int(port),
            Value::Bulk(Some(b"0123abcd".to_vec())),
            Value::Array(Some(vec![])),
        ]))
    }

    fn range(first: i64, last: i64, nodes: Vec<Value>) -> Value {
        let mut items = vec![Value::Int(first), Value::Int(last)];
        items.extend(nodes);
        Value::Array(Some(items))
    }

    #[test]
    fn slot_ranges_from_cluster_slots() {
        let asked = tcp("127.0.0.1", 7000);
        let reply = Value::Array(Some(vec![
            range(0, 5460, vec![node("127.0.0.1", 7000), node("127.0.0.1", 7003)]),
            range(5461, 10922, vec![node("", 7001)]),
            range(10923, 16383, vec![node("?", 7002)]),
        ]));
        assert_eq!(
            slot_ranges(reply, &asked).unwrap(),
            vec![(0, 5460, tcp("127.0.0.1", 7000)), (5461, 10922, tcp("127.0.0.1", 7001))]
        );
        for bad in [
            Value::Int(1),
            Value::Array(Some(vec![Value::Int(1)])),
            Value::Array(Some(vec![range(0, 16384, vec![node("h", 1)])])),
            Value::Array(Some(vec![range(5, 4, vec![node("h", 1)])])),
            Value::Array(Some(vec![range(0, 1, vec![node("h", 70000)])])),
            Value::Array(Some(vec![range(0, 1, vec![])])),
            Value::Array(Some(vec![range(0, 1, vec![Value::Array(Some(vec![Value::Int(1)]))])])),
        ] {
            assert!(
                matches!(slot_ranges(bad.clone(), &asked), Err(Error::Protocol { .. })),
                "{bad:?}"
            );
        }
    }
}
