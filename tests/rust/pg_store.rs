//! The PostgreSQL store against a real server the test starts.

mod support;

use std::str::FromStr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::NoTls;
use racefree::Limits;
use racefree::pgstore::{Error, Options, PgStore, Settings, Tls, expiry, moment};
use support::Postgres;

const ROOMY: Limits = Limits {
    max_entries: 1_000_000,
    cull_frequency: 3,
};

fn now() -> SystemTime {
    SystemTime::now()
}

fn in_secs(seconds: f64) -> SystemTime {
    moment(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() + seconds)
}

/// Django's createcachetable DDL for PostgreSQL.
fn create_table(server: &Postgres, table: &str) {
    let mut client = postgres::Client::connect(&server.dsn(), NoTls).unwrap();
    let quoted = racefree::pgstore::quote_table(table);
    client
        .batch_execute(&format!(
            "CREATE TABLE {quoted} (\"cache_key\" varchar(255) NOT NULL PRIMARY KEY, \
             \"value\" text NOT NULL, \"expires\" timestamp with time zone NOT NULL)"
        ))
        .unwrap();
}

fn options(connect_timeout: Duration, io_timeout: Duration) -> Options {
    Options {
        pool_size: 8,
        connect_timeout,
        io_timeout,
        statement_timeout: None,
        idle_timeout: Duration::from_secs(300),
    }
}

fn store(server: &Postgres, table: &str) -> PgStore {
    PgStore::new(Settings {
        config: tokio_postgres::Config::from_str(&server.dsn()).unwrap(),
        tls: Tls::disabled(),
        table: table.into(),
        options: options(Duration::from_secs(2), Duration::from_secs(10)),
    })
    .unwrap()
}

/// A server that accepts connections and never says a word: the startup
/// has a deadline of its own, not only the TCP connect.
#[test]
fn a_silent_server_fails_within_the_connect_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(2).collect();
        thread::sleep(Duration::from_secs(3));
        drop(held);
    });
    let config = tokio_postgres::Config::from_str(&format!("host=127.0.0.1 port={port} user=nobody")).unwrap();
    let store = PgStore::new(Settings {
        config,
        tls: Tls::disabled(),
        table: "cache".into(),
        options: options(Duration::from_millis(500), Duration::from_millis(500)),
    })
    .unwrap();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let outcome = store.get("k", now());
        let took = started.elapsed();
        assert!(matches!(outcome, Err(Error::Connect(_))), "{outcome:?}");
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    }
    accepted.join().unwrap();
}

fn incr(s: &PgStore, key: &str) -> Option<i64> {
    let outcome: Result<Option<Vec<u8>>, ()> = s
        .update(key, now(), |old| {
            let n: i64 = std::str::from_utf8(old).unwrap().parse().unwrap();
            Ok((n + 1).to_string().into_bytes())
        })
        .unwrap();
    outcome.unwrap().map(|v| String::from_utf8(v).unwrap().parse().unwrap())
}

#[test]
fn operations_on_django_s_table() {
    let server = Postgres::start();
    create_table(&server, "test cache table");
    let s = store(&server, "test cache table");
    assert_eq!(s.get("k", now()).unwrap(), None);
    s.set("k", b"value", expiry(0.0), now(), ROOMY).unwrap();
    assert_eq!(s.get("k", now()).unwrap(), Some(b"value".to_vec()));
    assert!(s.contains("k", now()).unwrap());
    assert!(!s.add("k", b"other", expiry(0.0), now(), ROOMY).unwrap());
    assert!(s.add("new", b"v", in_secs(100.0), now(), ROOMY).unwrap());
    // Compare-and-delete (a lock's release): only the exact value goes.
    s.set("lock", b"token-1", expiry(0.0), now(), ROOMY).unwrap();
    assert!(!s.delete_if("lock", b"token-2", now()).unwrap());
    assert!(s.delete_if("lock", b"token-1", now()).unwrap());
    assert!(!s.delete_if("lock", b"token-1", now()).unwrap());
    // Compare-and-touch (a lock's extension): only the exact value's expiry.
    s.set("lock", b"token-1", expiry(0.0), now(), ROOMY).unwrap();
    assert!(!s.touch_if("lock", b"token-2", in_secs(-1.0), now()).unwrap());
    assert!(!s.touch_if("absent", b"token-1", in_secs(100.0), now()).unwrap());
    assert_eq!(s.get("lock", now()).unwrap(), Some(b"token-1".to_vec()));
    assert!(s.touch_if("lock", b"token-1", in_secs(-1.0), now()).unwrap());
    assert_eq!(s.get("lock", now()).unwrap(), None);
    // add over an expired row succeeds.
    s.set("old", b"x", in_secs(-1.0), now(), ROOMY).unwrap();
    assert_eq!(s.get("old", now()).unwrap(), None);
    assert!(s.add("old", b"fresh", expiry(0.0), now(), ROOMY).unwrap());
    assert_eq!(s.get("old", now()).unwrap(), Some(b"fresh".to_vec()));
    assert!(s.touch("new", in_secs(-1.0), now()).unwrap());
    assert!(!s.contains("new", now()).unwrap());
    assert!(
        !s.touch("new", expiry(0.0), now()).unwrap(),
        "touch does not revive an expired row"
    );
    assert!(s.delete("k", now()).unwrap());
    assert!(!s.delete("k", now()).unwrap());
    s.set_many(&[("a", b"1"), ("b", b"2"), ("a", b"3")], expiry(0.0), now(), ROOMY)
        .unwrap();
    let mut found = s.get_many(&["a", "b", "c"], now()).unwrap();
    found.sort();
    assert_eq!(found, vec![("a".into(), b"3".to_vec()), ("b".into(), b"2".to_vec())]);
    s.delete_many(&["a", "b"]).unwrap();
    assert!(s.get_many(&["a", "b"], now()).unwrap().is_empty());
    s.clear().unwrap();
    assert_eq!(s.get("old", now()).unwrap(), None);
}

#[test]
fn batches_are_one_round_trip_each() {
    let server = Postgres::start();
    create_table(&server, "rt");
    let s = store(&server, "rt");
    s.set("warm", b"1", expiry(0.0), now(), ROOMY).unwrap(); // counts the table once
    let before = s.round_trips();
    let items: Vec<(String, Vec<u8>)> = (0..100).map(|i| (format!("k{i}"), vec![b'v'; 10])).collect();
    let refs: Vec<(&str, &[u8])> = items.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    s.set_many(&refs, expiry(0.0), now(), ROOMY).unwrap();
    assert_eq!(s.round_trips() - before, 1);
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    let before = s.round_trips();
    assert_eq!(s.get_many(&keys, now()).unwrap().len(), 100);
    s.delete_many(&keys).unwrap();
    assert_eq!(s.round_trips() - before, 2);
    let before = s.round_trips();
    s.set("one", b"1", expiry(0.0), now(), ROOMY).unwrap();
    s.touch("one", expiry(0.0), now()).unwrap();
    s.get("one", now()).unwrap();
    assert_eq!(s.round_trips() - before, 3, "no count on every write");
}

#[test]
fn concurrent_updates_are_exact_and_adds_win_once() {
    let server = Postgres::start();
    create_table(&server, "race");
    let s = Arc::new(store(&server, "race"));
    s.set("n", b"0", expiry(0.0), now(), ROOMY).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                let mut won = 0;
                for i in 0..50 {
                    incr(&s, "n").unwrap();
                    if s.add(&format!("claim{i}"), b"x", expiry(0.0), now(), ROOMY).unwrap() {
                        won += 1;
                    }
                }
                won
            })
        })
        .collect();
    let won: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(s.get("n", now()).unwrap(), Some(b"400".to_vec()));
    assert_eq!(won, 50);
}

#[test]
fn update_of_a_missing_key_and_a_failing_change() {
    let server = Postgres::start();
    create_table(&server, "upd");
    let s = store(&server, "upd");
    assert_eq!(incr(&s, "missing"), None);
    s.set("k", b"5", expiry(0.0), now(), ROOMY).unwrap();
    let refused: Result<Option<Vec<u8>>, &str> = s.update("k", now(), |_| Err("not a number")).unwrap();
    assert_eq!(refused, Err("not a number"));
    assert_eq!(s.get("k", now()).unwrap(), Some(b"5".to_vec()), "nothing written");
    assert_eq!(incr(&s, "k"), Some(6));
}

#[test]
fn culling_follows_django_s_database_cache() {
    // Django's DBCacheTests: 49 sets into MAX_ENTRIES=30 leave 29
    // (CULL_FREQUENCY=3) or 18 (CULL_FREQUENCY=0).
    let server = Postgres::start();
    for (frequency, expected) in [(3, 29), (0, 18)] {
        let table = format!("cull{frequency}");
        create_table(&server, &table);
        let s = store(&server, &table);
        let limits = Limits {
            max_entries: 30,
            cull_frequency: frequency,
        };
        for i in 1..50 {
            s.set(&format!("cull{i}"), b"value", in_secs(1000.0), now(), limits)
                .unwrap();
        }
        let left = (1..50)
            .filter(|i| s.contains(&format!("cull{i}"), now()).unwrap())
            .count();
        assert_eq!(left, expected, "CULL_FREQUENCY={frequency}");
    }
}

#[test]
fn invalid_keys_are_refused_before_sending() {
    let server = Postgres::start();
    create_table(&server, "keys");
    let s = store(&server, "keys");
    let before = s.round_trips();
    assert!(matches!(s.get(&"a".repeat(256), now()), Err(Error::InvalidKey(_))));
    assert!(matches!(
        s.set("nul\0", b"v", expiry(0.0), now(), ROOMY),
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(s.get_many(&["ok", "nul\0"], now()), Err(Error::InvalidKey(_))));
    assert_eq!(s.round_trips(), before);
}

#[test]
fn a_restarted_server_is_survived() {
    let mut server = Postgres::start();
    create_table(&server, "restart");
    let s = store(&server, "restart");
    for i in 0..8 {
        s.set(&format!("k{i}"), b"v", expiry(0.0), now(), ROOMY).unwrap();
    }
    server.stop(true);
    assert!(s.get("k0", now()).is_err(), "errors while the server is down");
    server.restart(false);
    // Pooled connections to the old server are discarded; calls succeed.
    for i in 0..8 {
        assert_eq!(s.get(&format!("k{i}"), now()).unwrap(), Some(b"v".to_vec()));
    }
    s.set("n", b"1", expiry(0.0), now(), ROOMY).unwrap();
    assert_eq!(incr(&s, "n"), Some(2));
}

#[test]
fn a_missing_table_is_a_clear_error() {
    let server = Postgres::start();
    let s = store(&server, "no such table");
    match s.get("k", now()) {
        Err(Error::Database { code, message }) => {
            assert_eq!(code, "42P01");
            assert!(message.contains("no such table"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
