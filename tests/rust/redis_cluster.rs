//! The Redis store in cluster mode, against a real three-node cluster:
//! routing by slot, redirects while slots move, batches over the nodes,
//! and a node that dies.

mod support;

use std::time::{Duration, Instant};

use racefree::redis::slot::slot;
use racefree::redis::{Client, Config, Error};
use support::{RedisCluster, redis_cli, slot_owner_port};

fn settings() -> Config {
    Config {
        cluster: true,
        ..support::redis_settings()
    }
}

/// A client given one seed only: it finds the other nodes itself.
fn client(cluster: &RedisCluster) -> Client {
    Client::new(&cluster.locations()[1..2], settings()).expect("client")
}

fn dbsize(port: u16) -> usize {
    redis_cli(port, &["dbsize"]).parse().expect("DBSIZE")
}

/// Which node serves a key, as the first node sees it now: the port of
/// its owner.
fn owners(cluster: &RedisCluster) -> impl Fn(&[u8]) -> u16 + use<> {
    let printed = redis_cli(cluster.nodes[0].port, &["cluster", "slots"]);
    move |key| slot_owner_port(&printed, slot(key)).expect("an owner")
}

/// A key (with `prefix`) whose slot is served by node `node` and holds no keys.
fn key_on(cluster: &RedisCluster, node: usize, prefix: &str) -> Vec<u8> {
    let printed = redis_cli(cluster.nodes[0].port, &["cluster", "slots"]);
    (0..)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .find(|key| {
            slot_owner_port(&printed, slot(key)) == Some(cluster.nodes[node].port)
                && redis_cli(
                    cluster.nodes[node].port,
                    &["cluster", "countkeysinslot", &slot(key).to_string()],
                ) == "0"
        })
        .expect("a key")
}

/// Wait until every node says `node` serves `slot`.
fn wait_for_owner(cluster: &RedisCluster, slot: u16, node: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = cluster.nodes[node].port;
    while !cluster
        .nodes
        .iter()
        .all(|n| slot_owner_port(&redis_cli(n.port, &["cluster", "slots"]), slot) == Some(port))
    {
        assert!(Instant::now() < deadline, "the nodes do not agree on slot {slot}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A field of `cmdstat_<command>` on a node (0 if never called).
fn stat(port: u16, command: &str, field: &str) -> u64 {
    let stats = redis_cli(port, &["info", "commandstats"]);
    let line = stats
        .lines()
        .find(|line| line.starts_with(&format!("cmdstat_{command}:")));
    let line = line.map(|line| line.split_once(':').map_or(line, |(_, fields)| fields));
    let value = line.and_then(|line| line.split(',').find_map(|f| f.strip_prefix(&format!("{field}="))));
    value.map_or(0, |n| n.trim().parse().expect("a count"))
}

/// Redirects a node answered `command` with (MOVED and ASK alike).
fn rejected(port: u16, command: &str) -> u64 {
    stat(port, command, "rejected_calls")
}

/// `CLUSTER SLOTS` asked of all nodes so far (the harness's own included).
fn map_requests(cluster: &RedisCluster) -> u64 {
    cluster
        .nodes
        .iter()
        .map(|node| stat(node.port, "cluster|slots", "calls"))
        .sum()
}

#[test]
fn a_thousand_keys_go_to_their_slots_owners() {
    let cluster = RedisCluster::start(3);
    let c = client(&cluster);
    let mut nodes = c.nodes().unwrap();
    nodes.sort();
    let mut expected_nodes = cluster.locations();
    expected_nodes.sort();
    assert_eq!(nodes, expected_nodes, "the map names every primary");
    let keys: Vec<Vec<u8>> = (0..1000).map(|i| format!(":1:key-{i}").into_bytes()).collect();
    for key in &keys {
        c.set(key, key, Some(300)).unwrap();
    }
    for key in &keys {
        assert_eq!(c.get(key).unwrap().as_deref(), Some(key.as_slice()));
    }
    // Each node holds exactly the keys of its slots.
    let owner_port = owners(&cluster);
    for node in &cluster.nodes {
        let wanted = keys.iter().filter(|key| owner_port(key) == node.port).count();
        assert!(wanted > 200, "keys spread over every node: {wanted}");
        assert_eq!(dbsize(node.port), wanted, "node {}", node.port);
    }
    let first = &keys[0];
    let count = redis_cli(
        owner_port(first),
        &["cluster", "countkeysinslot", &slot(first).to_string()],
    );
    assert_eq!(count, "1");
    // Every single-key call, scripts included, on keys of all three nodes.
    for node in &cluster.nodes {
        let key = keys.iter().find(|key| owner_port(key) == node.port).unwrap();
        c.set(key, b"1", Some(100)).unwrap();
        assert_eq!(c.incr(key, 41).unwrap(), Some(42));
        assert!(c.contains(key).unwrap());
        assert!(!c.add(key, b"x", Some(10)).unwrap());
        assert!(c.touch(key, None).unwrap());
        let updated = c.update(key, |old| Ok::<_, ()>([old, b"0"].concat())).unwrap().unwrap();
        assert_eq!(updated.as_deref(), Some(&b"420"[..]));
        assert!(!c.delete_if(key, b"other").unwrap());
        assert!(c.delete_if(key, b"420").unwrap());
        assert!(c.add(key, b"again", Some(10)).unwrap());
        assert!(c.delete(key).unwrap());
        assert_eq!(c.get(key).unwrap(), None);
    }
    c.clear().unwrap();
    for node in &cluster.nodes {
        assert_eq!(dbsize(node.port), 0);
    }
}

#[test]
fn a_moved_slot_is_followed_and_the_map_refreshed() {
    let cluster = RedisCluster::start(3);
    let c = client(&cluster);
    let key = key_on(&cluster, 0, "moving");
    c.set(&key, b"before", None).unwrap();
    assert!(c.delete(&key).unwrap());
    // Move the (now empty) slot from node 0 to node 1, on every node.
    let target = cluster.node_id(1);
    let moved = slot(&key).to_string();
    for node in [1, 0, 2] {
        assert_eq!(
            redis_cli(
                cluster.nodes[node].port,
                &["cluster", "setslot", &moved, "node", &target]
            ),
            "OK"
        );
    }
    wait_for_owner(&cluster, slot(&key), 1);
    let old_owner = cluster.nodes[0].port;
    assert_eq!(rejected(old_owner, "set"), 0);
    // The client's map still says node 0: MOVED, followed.
    c.set(&key, b"after", None).unwrap();
    assert_eq!(
        redis_cli(cluster.nodes[1].port, &["get", std::str::from_utf8(&key).unwrap()]),
        "after"
    );
    assert_eq!(rejected(old_owner, "set"), 1, "one redirect");
    // The map was refreshed: no more redirects.
    for _ in 0..10 {
        c.set(&key, b"again", None).unwrap();
        assert_eq!(c.get(&key).unwrap().as_deref(), Some(&b"again"[..]));
    }
    assert_eq!(rejected(old_owner, "set"), 1);
    assert_eq!(rejected(old_owner, "get"), 0);
}

#[test]
fn a_key_of_a_migrating_slot_is_asked_for_at_its_new_node() {
    let cluster = RedisCluster::start(3);
    let c = client(&cluster);
    // Two keys of one slot (a hash tag), on node 0.
    let tag = String::from_utf8(key_on(&cluster, 0, "tag")).unwrap();
    let (stays, goes, new) = (
        format!("{{{tag}}}stays"),
        format!("{{{tag}}}goes"),
        format!("{{{tag}}}new"),
    );
    c.set(stays.as_bytes(), b"1", None).unwrap();
    c.set(goes.as_bytes(), b"10", None).unwrap();
    let migrating = slot(stays.as_bytes()).to_string();
    let (source, target) = (cluster.node_id(0), cluster.node_id(1));
    let (source_port, target_port) = (cluster.nodes[0].port, cluster.nodes[1].port);
    let asked_before = map_requests(&cluster);
    assert_eq!(
        redis_cli(target_port, &["cluster", "setslot", &migrating, "importing", &source]),
        "OK"
    );
    assert_eq!(
        redis_cli(source_port, &["cluster", "setslot", &migrating, "migrating", &target]),
        "OK"
    );
    let port = target_port.to_string();
    assert_eq!(
        redis_cli(
            source_port,
            &["migrate", "127.0.0.1", &port, "", "0", "5000", "keys", &goes]
        ),
        "OK"
    );
    // Node 0 answers ASK for the migrated key (and for a new one): the
    // command goes to node 1 after ASKING; the other key stays served.
    assert_eq!(c.get(goes.as_bytes()).unwrap().as_deref(), Some(&b"10"[..]));
    assert_eq!(c.incr(goes.as_bytes(), 5).unwrap(), Some(15), "a script, after ASKING");
    assert_eq!(c.get(stays.as_bytes()).unwrap().as_deref(), Some(&b"1"[..]));
    c.set(new.as_bytes(), b"n", None).unwrap();
    assert_eq!(redis_cli(target_port, &["dbsize"]), "2", "the migrated and the new key");
    let (found, failures) = c
        .get_many(&[stays.as_bytes(), goes.as_bytes(), new.as_bytes()])
        .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        found,
        vec![Some(b"1".to_vec()), Some(b"15".to_vec()), Some(b"n".to_vec())]
    );
    // ASK changed no map: the slot is still node 0's until the migration ends.
    // Each key asked for once at node 0, then at node 1 (the batch's
    // redirected keys go straight there), and the map never asked again.
    assert_eq!(rejected(source_port, "get"), 3);
    assert_eq!(
        stat(target_port, "asking", "calls"),
        6,
        "GET, EVALSHA and EVAL, SET, 2 batch GETs"
    );
    assert_eq!(map_requests(&cluster), asked_before);
    assert_eq!(
        redis_cli(
            source_port,
            &["migrate", "127.0.0.1", &port, "", "0", "5000", "keys", &stays]
        ),
        "OK"
    );
    for node in [1, 0, 2] {
        assert_eq!(
            redis_cli(
                cluster.nodes[node].port,
                &["cluster", "setslot", &migrating, "node", &target]
            ),
            "OK"
        );
    }
    wait_for_owner(&cluster, slot(stays.as_bytes()), 1);
    assert_eq!(c.get(stays.as_bytes()).unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(redis_cli(target_port, &["dbsize"]), "3");
}

#[test]
fn batches_of_a_hundred_keys_over_three_nodes() {
    let cluster = RedisCluster::start(3);
    let c = client(&cluster);
    support::redis_batches(&c, || {
        let sizes: Vec<usize> = cluster.nodes.iter().map(|node| dbsize(node.port)).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.iter().all(|&n| n > 10), "{sizes:?}");
    });
    let sizes: Vec<usize> = cluster.nodes.iter().map(|node| dbsize(node.port)).collect();
    assert_eq!(sizes, vec![0, 0, 0]);
    let (snapshot, pools) = c.stats();
    assert_eq!(pools.len(), 3, "one pool per node: {pools:?}");
    let count = |name: &str| snapshot.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!((count("hits"), count("misses"), count("errors")), (100, 51, 0));
}

#[test]
fn expiry_key_space_and_commands_over_three_nodes() {
    let cluster = RedisCluster::start(3);
    support::redis_key_space(&client(&cluster), 3);
    support::redis_commands(&client(&cluster), true);
}

#[test]
fn a_dead_node_fails_its_own_keys_only() {
    let mut cluster = RedisCluster::start(3);
    let c = client(&cluster);
    let keys: Vec<Vec<u8>> = (0..60).map(|i| format!("d{i}").into_bytes()).collect();
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_slice(), k.as_slice())).collect();
    assert!(c.set_many(&entries, None).unwrap().is_empty());
    let dead_port = cluster.nodes[2].port;
    let owner_port = owners(&cluster);
    let on_dead: Vec<usize> = (0..keys.len()).filter(|&i| owner_port(&keys[i]) == dead_port).collect();
    assert!(!on_dead.is_empty());
    drop(cluster.nodes.remove(2));
    let wanted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let started = Instant::now();
    let (found, failures) = c.get_many(&wanted).unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        matches!(failures[0].error, Error::Connect { .. }),
        "{:?}",
        failures[0].error
    );
    assert_eq!(failures[0].indexes, on_dead);
    for (index, value) in found.iter().enumerate() {
        match on_dead.contains(&index) {
            true => assert_eq!(*value, None),
            false => assert_eq!(value.as_deref(), Some(wanted[index])),
        }
    }
    let failures = c.set_many(&entries, Some(60)).unwrap();
    let failed: Vec<usize> = failures.iter().flat_map(|f| f.indexes.iter().copied()).collect();
    assert_eq!(failed, on_dead);
    let failures = c.delete_many(&wanted).unwrap();
    let failed: Vec<usize> = failures.iter().flat_map(|f| f.indexes.iter().copied()).collect();
    assert_eq!(failed, on_dead);
    assert!(matches!(c.get(wanted[on_dead[0]]), Err(Error::Connect { .. })));
    let alive = (0..keys.len()).find(|i| !on_dead.contains(i)).unwrap();
    c.set(wanted[alive], b"still", None).unwrap();
    assert_eq!(c.get(wanted[alive]).unwrap().as_deref(), Some(&b"still"[..]));
    // clear flushes the live nodes and reports the dead one.
    assert!(matches!(c.clear(), Err(Error::Connect { .. })));
    assert_eq!(c.get(wanted[alive]).unwrap(), None);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[test]
fn a_seed_that_is_not_a_cluster_node_is_an_error() {
    let server = support::Redis::start();
    let c = Client::new(&[format!("127.0.0.1:{}", server.port)], settings()).unwrap();
    match c.get(b"k") {
        Err(Error::Server { message, .. }) => assert!(message.contains("cluster support disabled"), "{message}"),
        other => panic!("{other:?}"),
    }
    let nobody = Client::new(&[format!("127.0.0.1:{}", support::free_port())], settings()).unwrap();
    assert!(matches!(nobody.get(b"k"), Err(Error::Connect { .. })));
    let (_, failures) = nobody.get_many(&[b"a", b"b"]).unwrap();
    assert_eq!(failures[0].indexes, vec![0, 1]);
}

#[test]
fn cluster_settings_that_cannot_work_are_refused() {
    let db = Client::new(&["127.0.0.1:7000"], Config { db: 1, ..settings() });
    assert!(matches!(db, Err(Error::Config(message)) if message.contains("database 0")));
    let unix = Client::new(&["unix:/tmp/redis.sock"], settings());
    assert!(matches!(unix, Err(Error::Config(message)) if message.contains("TCP")));
}

#[test]
fn clusterdown_is_waited_out_within_the_io_timeout() {
    let cluster = RedisCluster::start(3);
    let c = Client::new(
        &cluster.locations()[..1],
        Config {
            io_timeout: Duration::from_millis(500),
            ..settings()
        },
    )
    .unwrap();
    let key = key_on(&cluster, 0, "down");
    c.set(&key, b"kept", None).unwrap();
    let unserved = slot(&key).to_string();
    let owner = cluster.nodes[0].port;
    // The owner stops serving the slot (its keys stay): CLUSTERDOWN.
    assert_eq!(redis_cli(owner, &["cluster", "delslots", &unserved]), "OK");
    let started = Instant::now();
    match c.get(&key) {
        Err(Error::Server { message, .. }) => assert!(message.starts_with("CLUSTERDOWN"), "{message}"),
        other => panic!("{other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    // Served again while a call waits: the call succeeds.
    let restore = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        redis_cli(owner, &["cluster", "addslots", &unserved])
    });
    assert_eq!(c.get(&key).unwrap().as_deref(), Some(&b"kept"[..]));
    assert_eq!(restore.join().unwrap(), "OK");
}
