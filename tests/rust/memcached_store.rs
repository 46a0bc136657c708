//! The memcached store against real memcached processes.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use racefree::memcached::{
    AuthProblem, Client, Config, Entry, Error, KeyProblem, Secret, StoreMode, StoreOutcome, TlsOptions, Turn,
};
use racefree::tls::Verify;
use support::{Memcached, Pki, Security};

fn client(servers: &[&Memcached], config: Config) -> Client {
    let locations: Vec<String> = servers.iter().map(|s| s.location()).collect();
    Client::new(&locations, config).expect("client")
}

/// The test's settings (Python's option reading owns the real defaults).
fn settings() -> Config {
    Config {
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(1),
        pool_size: 32,
        max_connections: None,
        idle_timeout: Duration::from_secs(60),
        spin_wait: Duration::from_micros(50),
        combine_gets: true,
        tls: None,
        username: None,
        password: None,
    }
}

fn quick() -> Config {
    Config {
        connect_timeout: Duration::from_millis(300),
        io_timeout: Duration::from_millis(200),
        ..settings()
    }
}

#[test]
fn single_key_operations() {
    let server = Memcached::start();
    let c = client(&[&server], settings());
    assert_eq!(c.get(b"k").unwrap(), None);
    assert!(c.store(b"k", b"v1", 16, 0, StoreMode::Set).unwrap());
    let item = c.get(b"k").unwrap().unwrap();
    assert_eq!((item.value.as_slice(), item.flags), (&b"v1"[..], 16));
    assert!(!c.store(b"k", b"v2", 0, 0, StoreMode::Add).unwrap());
    assert!(c.store(b"new", b"v", 0, 0, StoreMode::Add).unwrap());
    assert!(c.contains(b"k").unwrap());
    assert!(c.touch(b"k", 100).unwrap());
    assert!(!c.touch(b"absent", 100).unwrap());
    assert!(c.delete(b"k").unwrap());
    assert!(!c.delete(b"k").unwrap());
    assert!(!c.contains(b"k").unwrap());
    // Negative TTL: stored already expired.
    assert!(c.store(b"gone", b"v", 0, -1, StoreMode::Set).unwrap());
    assert_eq!(c.get(b"gone").unwrap(), None);
    // Empty values are values.
    assert!(c.store(b"empty", b"", 0, 0, StoreMode::Set).unwrap());
    assert_eq!(c.get(b"empty").unwrap().unwrap().value, b"");
    c.flush_all().unwrap();
    assert_eq!(c.get(b"new").unwrap(), None);
}

/// Compare-and-swap and compare-and-delete: a concurrent writer's value is
/// never overwritten or deleted.
#[test]
fn claims_give_one_caller_the_win() {
    let server = Memcached::start();
    let c = client(&[&server], settings());
    // A miss: the first claim wins a placeholder, the next is told to wait.
    let first = c.claim(b"k", 10, None).unwrap();
    assert!(first.item.is_none() && first.marks.win);
    let second = c.claim(b"k", 10, None).unwrap();
    assert!(second.item.is_none() && !second.marks.win && second.marks.taken);
    // Plain reads see no value in a placeholder.
    assert_eq!(c.get(b"k").unwrap(), None);
    assert!(!c.contains(b"k").unwrap());
    // The winner gives its turn back: the next claim wins at once.
    assert!(c.give_back(b"k", first.cas, Turn::Placeholder).unwrap());
    let third = c.claim(b"k", 10, None).unwrap();
    assert!(third.marks.win);
    assert!(c.store(b"k", b"v", 16, 100, StoreMode::Set).unwrap());
    let hit = c.claim(b"k", 10, None).unwrap();
    assert_eq!(hit.item.map(|i| (i.value, i.flags)), Some((b"v".to_vec(), 16)));
    assert!(!hit.marks.win && !hit.marks.taken);
    // Early refresh: one claim below the remaining TTL wins, with the value.
    let refresh = c.claim(b"k", 10, Some(1000)).unwrap();
    assert!(refresh.marks.win && refresh.item.is_some());
    let other = c.claim(b"k", 10, Some(1000)).unwrap();
    assert!(!other.marks.win && other.marks.taken && other.item.is_some());
    let turn = Turn::Refresh {
        flags: 16,
        value: b"v",
        ttl: refresh.ttl,
    };
    assert!(c.give_back(b"k", refresh.cas, turn).unwrap());
    assert!(c.claim(b"k", 10, Some(1000)).unwrap().marks.win);
}

#[test]
fn invalidated_items_are_served_only_to_claims() {
    let server = Memcached::start();
    let c = client(&[&server], settings());
    assert!(!c.invalidate(b"k", Some(30)).unwrap());
    assert!(c.store(b"k", b"old", 0, 100, StoreMode::Set).unwrap());
    assert!(c.invalidate(b"k", Some(30)).unwrap());
    // A plain get misses it, and passes on the win memcached gave it.
    assert_eq!(c.get(b"k").unwrap(), None);
    let (found, failures) = c.get_many(&[&b"k"[..]]).unwrap();
    assert!(found == vec![None] && failures.is_empty());
    let winner = c.claim(b"k", 10, None).unwrap();
    assert!(winner.marks.win && winner.marks.stale);
    assert_eq!(winner.item.as_ref().map(|i| i.value.as_slice()), Some(&b"old"[..]));
    let reader = c.claim(b"k", 10, None).unwrap();
    assert!(!reader.marks.win && reader.marks.stale && reader.item.is_some());
    // Given back: the next claim wins; an add stores over the stale item.
    assert!(c.give_back(b"k", winner.cas, Turn::Stale).unwrap());
    assert!(c.claim(b"k", 10, None).unwrap().marks.win);
    assert!(c.store(b"k", b"added", 0, 100, StoreMode::Add).unwrap());
    assert_eq!(c.get(b"k").unwrap().map(|i| i.value), Some(b"added".to_vec()));
    assert!(!c.store(b"k", b"again", 0, 100, StoreMode::Add).unwrap());
}

#[test]
fn update_and_delete_if_respect_other_writers() {
    let server = Memcached::start();
    let c = Arc::new(client(&[&server], settings()));
    assert!(c.store(b"n", b"0", 3, 300, StoreMode::Set).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let c = Arc::clone(&c);
            thread::spawn(move || {
                for _ in 0..100 {
                    let next = |flags: u32, value: &[u8]| {
                        let n: u64 = std::str::from_utf8(value).unwrap().parse().unwrap();
                        Ok::<_, ()>((flags, (n + 1).to_string().into_bytes()))
                    };
                    assert!(c.update(b"n", next).unwrap().unwrap().is_some());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let item = c.get(b"n").unwrap().unwrap();
    assert_eq!((item.value.as_slice(), item.flags), (&b"800"[..], 3));
    let same = |flags: u32, value: &[u8]| Ok::<_, ()>((flags, value.to_vec()));
    assert_eq!(c.update(b"missing", same).unwrap(), Ok(None));
    assert!(!c.delete_if(b"n", (3, b"799")).unwrap());
    assert!(!c.delete_if(b"n", (4, b"800")).unwrap());
    assert!(c.delete_if(b"n", (3, b"800")).unwrap());
    assert!(!c.delete_if(b"n", (3, b"800")).unwrap());
    // Compare-and-touch (a lock's extension); a TTL of -1 expires at once.
    assert!(c.store(b"n", b"800", 3, 300, StoreMode::Set).unwrap());
    assert!(!c.touch_if(b"n", (3, b"799"), -1).unwrap());
    assert!(!c.touch_if(b"missing", (3, b"800"), 300).unwrap());
    assert!(c.get(b"n").unwrap().is_some(), "another item keeps its expiry");
    assert!(c.touch_if(b"n", (3, b"800"), -1).unwrap());
    assert!(c.get(b"n").unwrap().is_none(), "the new expiry holds");
}

#[test]
fn arithmetic_is_memcached_native() {
    let server = Memcached::start();
    let c = client(&[&server], settings());
    assert_eq!(c.incr(b"n", 1).unwrap(), None, "missing key is not created");
    assert_eq!(c.get(b"n").unwrap(), None);
    c.store(b"n", b"41", 2, 0, StoreMode::Set).unwrap();
    assert_eq!(c.incr(b"n", 1).unwrap(), Some(42));
    assert_eq!(c.decr(b"n", 50).unwrap(), Some(0));
    let item = c.get(b"n").unwrap().unwrap();
    // memcached rewrites a shrinking number in place, padded with spaces.
    assert_eq!(
        (item.value.trim_ascii(), item.flags),
        (&b"0"[..], 2),
        "flags survive incr"
    );
    c.store(b"text", b"abc", 16, 0, StoreMode::Set).unwrap();
    assert!(matches!(c.incr(b"text", 1), Err(Error::NotANumber { .. })));
    // The connection is still in step after the refusal.
    assert_eq!(c.get(b"text").unwrap().unwrap().value, b"abc");
}

#[test]
fn invalid_keys_never_reach_the_wire() {
    let server = Memcached::start();
    let c = client(&[&server], settings());
    for (key, problem) in [
        (&b""[..], KeyProblem::Empty),
        (&[b'a'; 251][..], KeyProblem::TooLong),
        (b"with space", KeyProblem::BadCharacter),
        (b"crlf\r\nflush_all", KeyProblem::BadCharacter),
        (b"nul\0", KeyProblem::BadCharacter),
    ] {
        assert!(matches!(c.get(key), Err(Error::InvalidKey(p)) if p == problem));
        assert!(matches!(
            c.store(key, b"v", 0, 0, StoreMode::Set),
            Err(Error::InvalidKey(_))
        ));
        assert!(matches!(c.get_many(&[b"ok", key]), Err(Error::InvalidKey(_))));
    }
    // Nothing partial happened: the valid key of the refused batch was not touched.
    c.store(b"ok", b"v", 0, 0, StoreMode::Set).unwrap();
    let entries = [
        Entry {
            key: b"ok",
            value: b"changed",
            flags: 0,
        },
        Entry {
            key: b"bad key",
            value: b"x",
            flags: 0,
        },
    ];
    assert!(c.set_many(&entries, 0).is_err());
    assert_eq!(c.get(b"ok").unwrap().unwrap().value, b"v");
    assert_eq!(c.get(&[b'a'; 250]).unwrap(), None, "250 bytes is allowed");
}

#[test]
fn too_large_value_is_refused_and_old_value_removed() {
    let server = Memcached::start();
    let c = client(&[&server], settings());
    c.store(b"k", b"small", 0, 0, StoreMode::Set).unwrap();
    let big = vec![b'x'; 2 * 1024 * 1024];
    assert!(matches!(
        c.store(b"k", &big, 0, 0, StoreMode::Set),
        Err(Error::ValueTooLarge { .. })
    ));
    assert_eq!(c.get(b"k").unwrap(), None, "stale value must not survive a failed set");
    c.store(b"m", b"small", 0, 0, StoreMode::Set).unwrap();
    let entries = [
        Entry {
            key: b"m",
            value: &big,
            flags: 0,
        },
        Entry {
            key: b"n",
            value: b"fine",
            flags: 0,
        },
    ];
    let (outcomes, failures) = c.set_many(&entries, 0).unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(outcomes, vec![StoreOutcome::TooLarge, StoreOutcome::Stored]);
    assert_eq!(c.get(b"m").unwrap(), None);
    assert_eq!(c.get(b"n").unwrap().unwrap().value, b"fine");
}

#[test]
fn batches_across_three_servers() {
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let c = client(&servers.iter().collect::<Vec<_>>(), settings());
    let keys: Vec<Vec<u8>> = (0..1000).map(|i| format!("key:{i}").into_bytes()).collect();
    let values: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("value:{i}").repeat(i % 7 + 1).into_bytes())
        .collect();
    let entries: Vec<Entry> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| Entry {
            key: k,
            value: v,
            flags: 4,
        })
        .collect();
    let (outcomes, failures) = c.set_many(&entries, 0).unwrap();
    assert!(failures.is_empty());
    assert!(outcomes.iter().all(|o| *o == StoreOutcome::Stored));
    let mut per_server = [0; 3];
    for key in &keys {
        per_server[c.server_index(key)] += 1;
    }
    assert!(per_server.iter().all(|&n| n > 200), "keys spread: {per_server:?}");
    let mut wanted: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    wanted.push(b"missing");
    let (found, failures) = c.get_many(&wanted).unwrap();
    assert!(failures.is_empty());
    for (i, item) in found.iter().take(1000).enumerate() {
        let item = item.as_ref().expect("hit");
        assert_eq!((&item.value, item.flags), (&values[i], 4));
    }
    assert_eq!(found[1000], None);
    let doomed: Vec<&[u8]> = keys.iter().step_by(2).map(|k| k.as_slice()).collect();
    assert!(c.delete_many(&doomed).unwrap().is_empty());
    let (found, _) = c.get_many(&wanted[..1000]).unwrap();
    for (i, item) in found.iter().enumerate() {
        assert_eq!(item.is_some(), i % 2 == 1);
    }
}

#[test]
fn a_down_server_fails_fast_and_only_for_its_keys() {
    let up = Memcached::start();
    let mut down = Memcached::start();
    let c = client(&[&up, &down], quick());
    down.kill();
    let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("k{i}").into_bytes()).collect();
    for key in &keys {
        if c.server_index(key) == 0 {
            c.store(key, b"v", 0, 0, StoreMode::Set).unwrap();
        }
    }
    let started = Instant::now();
    let down_key = keys.iter().find(|k| c.server_index(k) == 1).unwrap();
    assert!(matches!(c.get(down_key), Err(Error::Connect { .. })));
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "refused connection must fail at once"
    );
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    let (found, failures) = c.get_many(&refs).unwrap();
    assert_eq!(failures.len(), 1);
    for (i, key) in keys.iter().enumerate() {
        let on_up = c.server_index(key) == 0;
        assert_eq!(found[i].is_some(), on_up);
        assert_eq!(failures[0].indexes.contains(&i), !on_up);
    }
}

#[test]
fn a_frozen_server_times_out_and_no_late_reply_is_ever_read() {
    let server = Memcached::start();
    let c = client(&[&server], quick());
    for i in 0..50 {
        let key = format!("key{i}");
        c.store(key.as_bytes(), key.as_bytes(), 0, 0, StoreMode::Set).unwrap();
    }
    for round in 0..5 {
        server.pause();
        let started = Instant::now();
        let result = c.get(format!("key{round}").as_bytes());
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
        assert!(started.elapsed() < Duration::from_millis(1000));
        server.resume();
        // The timed-out request's reply now arrives on the old socket; it
        // must never be taken as the answer to these.
        for i in 0..50 {
            let key = format!("key{i}");
            let item = c.get(key.as_bytes()).unwrap().unwrap();
            assert_eq!(item.value, key.as_bytes(), "round {round}");
        }
    }
}

#[test]
fn recovers_after_restart_without_a_new_client() {
    let mut server = Memcached::start();
    let c = client(&[&server], quick());
    c.store(b"k", b"v", 0, 0, StoreMode::Set).unwrap();
    server.kill();
    assert!(c.get(b"k").is_err());
    server.restart();
    // Pooled connections to the dead process are detected and replaced.
    assert_eq!(c.get(b"k").unwrap(), None);
    assert!(c.store(b"k", b"v2", 0, 0, StoreMode::Set).unwrap());
    assert_eq!(c.get(b"k").unwrap().unwrap().value, b"v2");
}

#[test]
fn unix_socket_server() {
    let server = Memcached::start_unix();
    let c = client(&[&server], settings());
    c.store(b"k", b"over a unix socket", 0, 0, StoreMode::Set).unwrap();
    assert_eq!(c.get(b"k").unwrap().unwrap().value, b"over a unix socket");
}

#[test]
fn shared_client_under_threads_never_mixes_replies() {
    let server = Memcached::start();
    let c = Arc::new(client(&[&server], settings()));
    let mismatches = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let c = Arc::clone(&c);
            let mismatches = Arc::clone(&mismatches);
            thread::spawn(move || {
                for i in 0..500 {
                    let key = format!("t{t}:k{}", i % 37);
                    c.store(key.as_bytes(), key.as_bytes(), 0, 0, StoreMode::Set).unwrap();
                    let got = c.get(key.as_bytes()).unwrap().map(|item| item.value);
                    if got.as_deref() != Some(key.as_bytes()) {
                        mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(mismatches.load(Ordering::Relaxed), 0);
}

#[test]
fn concurrent_increments_are_exact() {
    let server = Memcached::start();
    let c = Arc::new(client(&[&server], settings()));
    c.store(b"counter", b"0", 2, 0, StoreMode::Set).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let c = Arc::clone(&c);
            thread::spawn(move || {
                for _ in 0..1000 {
                    c.incr(b"counter", 1).unwrap().unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(c.get(b"counter").unwrap().unwrap().value, b"8000");
}

#[test]
fn max_connections_caps_and_queues() {
    let server = Memcached::start();
    let config = Config {
        max_connections: Some(2),
        pool_size: 2,
        ..settings()
    };
    let c = Arc::new(client(&[&server], config));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let c = Arc::clone(&c);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let key = format!("k{t}");
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 300 {
                    c.store(key.as_bytes(), b"v", 0, 0, StoreMode::Set).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(total, 8 * 300);
    assert!(c.idle_connections()[0] <= 2);
    assert!(server_stats(&server)["curr_connections"] <= 2 + 1 + 1);
}

/// `stats` from the server through a raw socket.
fn server_stats(server: &Memcached) -> HashMap<String, u64> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.write_all(b"stats\r\n").unwrap();
    let mut stats = HashMap::new();
    for line in BufReader::new(stream).lines() {
        let line = line.unwrap();
        if line == "END" {
            break;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [_, name, value] = parts[..]
            && let Ok(value) = value.parse()
        {
            stats.insert(name.to_string(), value);
        }
    }
    stats
}

#[test]
fn connections_are_reused() {
    let server = Memcached::start();
    let c = client(&[&server], settings());
    let before = server_stats(&server)["total_connections"];
    for i in 0..500 {
        c.store(format!("k{i}").as_bytes(), b"v", 0, 0, StoreMode::Set).unwrap();
        c.get(format!("k{i}").as_bytes()).unwrap();
    }
    // One pooled connection for all 1000 calls, plus this stats connection.
    assert_eq!(server_stats(&server)["total_connections"] - before, 2);
}

#[test]
fn bad_configuration_is_refused() {
    assert!(matches!(Client::new::<&str>(&[], settings()), Err(Error::Config(_))));
    assert!(matches!(
        Client::new(&["a:1", "a:1"], settings()),
        Err(Error::Config(_))
    ));
    assert!(matches!(Client::new(&["a:x"], settings()), Err(Error::Config(_))));
    let zero = Config {
        io_timeout: Duration::ZERO,
        ..settings()
    };
    assert!(matches!(Client::new(&["a:1"], zero), Err(Error::Config(_))));
}

// -- TLS and memcached's login ---------------------------------------------------

fn tls_to(ca: &std::path::Path) -> TlsOptions {
    TlsOptions {
        verify: Verify::Full,
        ca_file: Some(ca.to_path_buf()),
        ca_certs: None,
        cert_file: None,
        key_file: None,
        key_password: None,
        server_name: None,
    }
}

fn secure_server(pki: &Pki) -> Memcached {
    let authfile = pki.dir.join("authfile");
    std::fs::write(&authfile, "alice:s3cret\n").unwrap();
    let security = Security {
        tls: Some((pki.cert.clone(), pki.key.clone())),
        login: Some((authfile, "alice".into(), "s3cret".into())),
    };
    Memcached::start_secure(security, &[])
}

fn logged_in(pki: &Pki, password: &str) -> Config {
    Config {
        tls: Some(tls_to(&pki.ca)),
        username: Some("alice".into()),
        password: Some(Secret(password.into())),
        ..settings()
    }
}

fn connects(c: &Client) -> u64 {
    c.stats().1[0].3
}

#[test]
fn tls_with_login_round_trips_and_pools() {
    let pki = Pki::new("round-trip");
    let server = secure_server(&pki);
    let c = client(&[&server], logged_in(&pki, "s3cret"));
    let big = vec![7u8; 300_000];
    c.store(b"big", &big, 0, 0, StoreMode::Set).unwrap();
    assert_eq!(c.get(b"big").unwrap().unwrap().value, big);
    let entries: Vec<Entry<'_>> = (0..200)
        .map(|i| Entry {
            key: b"many",
            value: b"x",
            flags: i,
        })
        .collect();
    c.set_many(&entries[..1], 0).unwrap();
    assert_eq!(c.incr(b"missing", 1).unwrap(), None);
    for _ in 0..100 {
        assert!(c.get(b"many").unwrap().is_some());
    }
    assert_eq!(connects(&c), 1, "every call on the one pooled TLS connection");
}

#[test]
fn tls_refusals_say_why_and_are_remembered() {
    let pki = Pki::new("refusals");
    let server = secure_server(&pki);
    let wrong = client(&[&server], logged_in(&pki, "wrong"));
    for _ in 0..50 {
        match wrong.get(b"k") {
            Err(Error::Auth {
                problem: AuthProblem::Rejected { username },
                ..
            }) => assert_eq!(username, "alice"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(connects(&wrong), 0, "no dial succeeded");
    let anonymous = client(
        &[&server],
        Config {
            tls: Some(tls_to(&pki.ca)),
            ..settings()
        },
    );
    assert!(matches!(
        anonymous.get(b"k"),
        Err(Error::Auth {
            problem: AuthProblem::Required,
            ..
        })
    ));
    let other = Pki::new("other");
    let wrong_ca = client(
        &[&server],
        Config {
            tls: Some(tls_to(&other.ca)),
            ..logged_in(&pki, "s3cret")
        },
    );
    match wrong_ca.get(b"k") {
        Err(error @ Error::Tls { .. }) => assert!(error.to_string().contains("UnknownIssuer"), "{error}"),
        other => panic!("{other:?}"),
    }
    let plain = client(&[&server], settings());
    match plain.get(b"k") {
        Err(error @ Error::Io { .. }) => assert!(error.to_string().contains("TLS"), "{error}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tls_set_many_with_a_refused_value_in_the_middle() {
    let pki = Pki::new("too-large");
    let server = secure_server(&pki);
    let c = client(&[&server], logged_in(&pki, "s3cret"));
    let big = vec![1u8; 2 << 20];
    let entries = [
        Entry {
            key: b"a",
            value: b"1",
            flags: 0,
        },
        Entry {
            key: b"big1",
            value: &big,
            flags: 0,
        },
        Entry {
            key: b"b",
            value: b"2",
            flags: 0,
        },
        Entry {
            key: b"big2",
            value: &big,
            flags: 0,
        },
        Entry {
            key: b"c",
            value: b"3",
            flags: 0,
        },
    ];
    let started = Instant::now();
    let (outcomes, failures) = c.set_many(&entries, 0).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(failures.is_empty(), "{failures:?}");
    use StoreOutcome::{Stored, TooLarge};
    assert_eq!(outcomes, [Stored, TooLarge, Stored, TooLarge, Stored]);
    assert_eq!(c.get(b"c").unwrap().unwrap().value, b"3");
    assert_eq!(connects(&c), 1);
}

/// A TLS server (rustls) that answers `version` and `mg` (a miss). After
/// its first reply, while the client's connection sits idle in the pool,
/// it sends a TLS 1.3 key update: a record that carries no data, as the
/// session tickets a server may send at any time (records must arrive in
/// order, so tickets, sent at the handshake's end, cannot be held back for
/// this). After its second reply, it sends a stray reply line. Counts its
/// connections.
fn fake_tls_server(pki: &Pki) -> (String, Arc<AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};

    let certs = vec![CertificateDer::from_pem_file(&pki.cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let location = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(socket) = socket else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let config = Arc::clone(&config);
            thread::spawn(move || {
                let tls = rustls::ServerConnection::new(config).unwrap();
                let mut stream = rustls::StreamOwned::new(tls, socket);
                let (mut lines, mut replies) = (String::new(), 0);
                loop {
                    let mut buf = [0u8; 4096];
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => lines.push_str(&String::from_utf8_lossy(&buf[..n])),
                    }
                    while let Some(end) = lines.find("\r\n") {
                        let line: String = lines.drain(..end + 2).collect();
                        let reply = if line.starts_with("version") {
                            "VERSION 1.6.18\r\n".to_string()
                        } else {
                            let opaque = line.split_whitespace().find(|t| t.starts_with('O')).unwrap_or("");
                            format!("EN {opaque}\r\n")
                        };
                        stream.write_all(reply.as_bytes()).unwrap();
                        stream.flush().unwrap();
                        if !line.starts_with("mg") {
                            continue;
                        }
                        replies += 1;
                        thread::sleep(Duration::from_millis(50));
                        if replies == 1 {
                            stream.conn.refresh_traffic_keys().unwrap();
                        } else if replies == 2 {
                            stream.write_all(b"VA 5 f0 O1\r\nstray\r\n").unwrap();
                        }
                        stream.flush().unwrap();
                    }
                }
            });
        }
    });
    (location, connections)
}

#[test]
fn an_idle_tls_connection_survives_a_key_update_but_not_stray_data() {
    let pki = Pki::new("fake");
    let (location, connections) = fake_tls_server(&pki);
    let config = Config {
        tls: Some(tls_to(&pki.ca)),
        ..settings()
    };
    let c = Client::new(&[location], config).unwrap();
    assert!(c.get(b"k").unwrap().is_none());
    // The key update arrives while the connection is idle: still reusable.
    thread::sleep(Duration::from_millis(200));
    assert!(c.get(b"k").unwrap().is_none());
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    // A stray reply arrives while it is idle: closed, and a new one used.
    thread::sleep(Duration::from_millis(200));
    assert!(c.get(b"k").unwrap().is_none());
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}
