//! The Redis store against real redis-server processes.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use racefree::redis::{Client, Config, Error, Secret};
use support::Redis;

fn settings() -> Config {
    support::redis_settings()
}

fn client(server: &Redis, config: Config) -> Client {
    Client::new(&[format!("127.0.0.1:{}", server.port)], config).expect("client")
}

/// Raw commands (one per line) on a connection of its own: the test's
/// view of the server. The last reply, which must be one line.
fn raw(server: &Redis, commands: &str) -> String {
    let mut socket = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    socket.write_all(format!("{commands}\r\n").as_bytes()).expect("write");
    let wanted = commands.lines().count();
    let mut replies = Vec::new();
    while replies.windows(2).filter(|w| w == b"\r\n").count() < wanted {
        let mut chunk = [0u8; 4096];
        let n = std::io::Read::read(&mut socket, &mut chunk).expect("read");
        assert!(n > 0, "the server closed the connection");
        replies.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&replies).into_owned();
    text.trim_end().lines().last().unwrap_or_default().to_owned()
}

#[test]
fn single_key_operations() {
    let server = Redis::start();
    let c = client(&server, settings());
    assert_eq!(c.get(b"k").unwrap(), None);
    c.set(b"k", b"v1", None).unwrap();
    assert_eq!(c.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert!(!c.add(b"k", b"v2", Some(60)).unwrap());
    assert!(c.add(b"new", b"v", Some(60)).unwrap());
    assert!(c.contains(b"k").unwrap());
    assert_eq!(raw(&server, "TTL k"), ":-1");
    assert!(c.touch(b"k", Some(100)).unwrap());
    assert_eq!(raw(&server, "TTL k"), ":100");
    // Back to no expiry: True although PERSIST alone would say so only once.
    assert!(c.touch(b"k", None).unwrap());
    assert!(c.touch(b"k", None).unwrap());
    assert!(!c.touch(b"absent", None).unwrap());
    assert!(!c.touch(b"absent", Some(5)).unwrap());
    assert!(c.delete(b"k").unwrap());
    assert!(!c.delete(b"k").unwrap());
    // A TTL of 0 stores nothing and removes what was there.
    c.set(b"gone", b"old", None).unwrap();
    c.set(b"gone", b"new", Some(0)).unwrap();
    assert_eq!(c.get(b"gone").unwrap(), None);
    assert!(c.add(b"never", b"v", Some(0)).unwrap());
    assert_eq!(c.get(b"never").unwrap(), None);
    c.set(b"there", b"v", None).unwrap();
    assert!(!c.add(b"there", b"v2", Some(0)).unwrap());
    // Binary values and keys pass whole.
    let binary: Vec<u8> = (0..=255).collect();
    c.set(&binary, &binary, Some(60)).unwrap();
    assert_eq!(c.get(&binary).unwrap(), Some(binary));
}

#[test]
fn expiry_key_space_and_commands() {
    let server = Redis::start();
    support::redis_key_space(&client(&server, settings()), 1);
    support::redis_commands(&client(&server, settings()), false);
}

#[test]
fn counters_are_atomic_and_never_recreated() {
    let server = Redis::start();
    let c = Arc::new(client(&server, settings()));
    assert_eq!(c.incr(b"n", 1).unwrap(), None, "a missing key is not created");
    assert_eq!(raw(&server, "EXISTS n"), ":0");
    c.set(b"n", b"0", Some(100)).unwrap();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let c = Arc::clone(&c);
            thread::spawn(move || {
                for _ in 0..500 {
                    c.incr(b"n", 1).unwrap().expect("present");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(c.get(b"n").unwrap().as_deref(), Some(&b"4000"[..]));
    assert_eq!(c.incr(b"n", -4001).unwrap(), Some(-1));
    let ttl: i64 = raw(&server, "TTL n")[1..].parse().unwrap();
    assert!(ttl > 90, "incr keeps the TTL, got {ttl}");
    c.set(b"text", b"abc", None).unwrap();
    assert!(matches!(c.incr(b"text", 1), Err(Error::NotAnInteger { .. })));
    // Exact past 2^53 (through Lua, whose numbers are doubles, it was not).
    c.set(b"large", (i64::MAX - 1).to_string().as_bytes(), None).unwrap();
    assert_eq!(c.incr(b"large", 1).unwrap(), Some(i64::MAX));
    // Either side of 2^53, where the script's reply turns from an integer
    // to digits, both ways.
    let edge = 1_i64 << 53;
    for sign in [1, -1] {
        c.set(b"edge", (sign * (edge - 2)).to_string().as_bytes(), None)
            .unwrap();
        assert_eq!(c.incr(b"edge", sign).unwrap(), Some(sign * (edge - 1)));
        assert_eq!(c.incr(b"edge", sign).unwrap(), Some(sign * edge));
        assert_eq!(c.incr(b"edge", sign).unwrap(), Some(sign * (edge + 1)));
        assert_eq!(c.incr(b"edge", -sign * 3).unwrap(), Some(sign * (edge - 2)));
    }
    c.set(b"big", i64::MAX.to_string().as_bytes(), None).unwrap();
    assert!(matches!(c.incr(b"big", 1), Err(Error::Overflow { .. })));
    // The connection stays in step after refusals.
    assert_eq!(c.get(b"n").unwrap().as_deref(), Some(&b"-1"[..]));
}

#[test]
fn scripts_are_loaded_again_after_a_flush() {
    let server = Redis::start();
    let c = client(&server, settings());
    c.set(b"n", b"1", None).unwrap();
    assert_eq!(c.incr(b"n", 1).unwrap(), Some(2));
    assert_eq!(raw(&server, "SCRIPT FLUSH"), "+OK");
    assert_eq!(c.incr(b"n", 1).unwrap(), Some(3));
}

#[test]
fn compare_and_delete_and_update() {
    let server = Redis::start();
    let c = client(&server, settings());
    c.set(b"lock", b"mine", Some(60)).unwrap();
    // Compare-and-touch (a lock's extension): only the exact value's TTL.
    assert!(!c.touch_if(b"lock", b"theirs", Some(100)).unwrap());
    assert!(!c.touch_if(b"absent", b"mine", Some(100)).unwrap());
    assert!(c.pttl(b"lock").unwrap() <= 60_000);
    assert!(c.touch_if(b"lock", b"mine", Some(100)).unwrap());
    assert!(c.pttl(b"lock").unwrap() > 90_000);
    assert!(matches!(
        c.touch_if(b"lock", b"mine", None),
        Err(racefree::redis::Error::Config(_))
    ));
    assert!(!c.delete_if(b"lock", b"theirs").unwrap());
    assert!(c.delete_if(b"lock", b"mine").unwrap());
    assert_eq!(c.get(b"lock").unwrap(), None);
    c.set(b"u", b"1", Some(100)).unwrap();
    let updated = c
        .update(b"u", |old| Ok::<_, ()>([old, b"1"].concat()))
        .unwrap()
        .unwrap();
    assert_eq!(updated.as_deref(), Some(&b"11"[..]));
    assert_eq!(c.get(b"u").unwrap().as_deref(), Some(&b"11"[..]));
    assert!(raw(&server, "TTL u")[1..].parse::<i64>().unwrap() > 90);
    assert_eq!(
        c.update(b"absent", |old| Ok::<_, ()>(old.to_vec())).unwrap().unwrap(),
        None
    );
    assert_eq!(
        c.update(b"u", |_| Err::<Vec<u8>, _>("refused")).unwrap(),
        Err("refused")
    );
    assert_eq!(c.get(b"u").unwrap().as_deref(), Some(&b"11"[..]));
}

#[test]
fn batches() {
    let server = Redis::start();
    let c = client(&server, settings());
    support::redis_batches(&c, || assert_eq!(raw(&server, "DBSIZE"), ":100"));
    assert_eq!(raw(&server, "DBSIZE"), ":0");
    c.set(b"a", b"1", None).unwrap();
    assert_eq!(raw(&server, "LPUSH list2 x"), ":1");
    let (found, failures) = c.get_many(&[b"a", b"list2"]).unwrap();
    assert_eq!(
        (found, failures.len()),
        (vec![Some(b"1".to_vec()), None], 0),
        "MGET reads nil"
    );
    // A server that is gone fails the whole batch, every key reported.
    let gone = Client::new(&[format!("127.0.0.1:{}", support::free_port())], settings()).unwrap();
    let (_, failures) = gone.get_many(&[b"a", b"b"]).unwrap();
    assert_eq!(failures[0].indexes, vec![0, 1]);
    let entries: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")];
    assert_eq!(gone.set_many(&entries, None).unwrap()[0].indexes, vec![0, 1, 2]);
    assert_eq!(gone.delete_many(&[b"a"]).unwrap()[0].indexes, vec![0]);
    c.clear().unwrap();
    assert_eq!(raw(&server, "DBSIZE"), ":0");
    c.set(b"x", b"1", None).unwrap();
    c.clear().unwrap();
    assert_eq!(raw(&server, "DBSIZE"), ":0");
}

#[test]
fn login_and_database() {
    let server = Redis::start_with(&["--requirepass", "s3cret"]);
    let anonymous = client(&server, settings());
    assert!(matches!(anonymous.get(b"k"), Err(Error::Auth { .. })));
    let wrong = client(
        &server,
        Config {
            password: Some(Secret("nope".into())),
            ..settings()
        },
    );
    assert!(matches!(wrong.get(b"k"), Err(Error::Auth { .. })));
    let right = client(
        &server,
        Config {
            password: Some(Secret("s3cret".into())),
            db: 3,
            client_name: Some("racefree-test".into()),
            ..settings()
        },
    );
    right.set(b"k", b"v", None).unwrap();
    assert_eq!(right.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(raw(&server, "AUTH s3cret\nSELECT 3\nEXISTS k"), ":1");
}

#[test]
fn a_frozen_server_times_out_and_the_connection_is_not_reused() {
    let server = Redis::start();
    let c = client(
        &server,
        Config {
            io_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(300),
            ..settings()
        },
    );
    c.set(b"k", b"before", None).unwrap();
    server.pause();
    let started = Instant::now();
    assert!(matches!(c.get(b"k"), Err(Error::Timeout { .. })));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // A new connection gets no reply either.
    assert!(c.set(b"k", b"during", None).is_err());
    server.resume();
    // The frozen server may still run the set it had received; the late
    // replies of the timed-out calls are never read as anyone's answer.
    thread::sleep(Duration::from_millis(100));
    let now = c.get(b"k").unwrap();
    assert!(matches!(now.as_deref(), Some(b"before" | b"during")), "{now:?}");
    for _ in 0..20 {
        assert_eq!(c.get(b"k").unwrap(), now);
    }
}

#[test]
fn combined_callers_of_a_frozen_server_all_fail_within_the_deadline() {
    // 8 threads' calls share round trips; when the server freezes, the
    // round trip under way times out and fails its riders and the callers
    // queued behind it at once, so no one waits a timeout per caller.
    let server = Redis::start();
    let timeout = Duration::from_millis(300);
    let c = Arc::new(client(
        &server,
        Config {
            io_timeout: timeout,
            connect_timeout: timeout,
            ..settings()
        },
    ));
    for t in 0..8u8 {
        c.set(&[b't', t], &[t], None).unwrap();
    }
    server.pause();
    let started = Instant::now();
    let outcomes: Vec<_> = (0..8u8)
        .map(|t| {
            let c = Arc::clone(&c);
            thread::spawn(move || c.get(&[b't', t]))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|worker| worker.join().unwrap())
        .collect();
    let waited = started.elapsed();
    server.resume();
    assert!(
        outcomes.iter().all(|o| matches!(o, Err(Error::Timeout { .. }))),
        "{outcomes:?}"
    );
    assert!(waited < timeout * 4, "{waited:?} for 8 callers");
    // Afterwards each caller reads its own value again, never a late reply.
    let workers: Vec<_> = (0..8u8)
        .map(|t| {
            let c = Arc::clone(&c);
            thread::spawn(move || {
                for _ in 0..200 {
                    assert_eq!(c.get(&[b't', t]).unwrap(), Some(vec![t]));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let (_, pools) = c.stats();
    assert!(pools[0].4 > 0, "calls shared round trips: {pools:?}");
}

#[test]
fn a_stopped_server_is_an_error_not_a_hang() {
    let server = Redis::start();
    let c = client(&server, settings());
    c.set(b"k", b"v", None).unwrap();
    let port = server.port;
    drop(server);
    let started = Instant::now();
    assert!(matches!(c.get(b"k"), Err(Error::Connect { .. } | Error::Io { .. })));
    assert!(started.elapsed() < Duration::from_secs(2));
    let nobody = Client::new(&[format!("127.0.0.1:{port}")], settings()).unwrap();
    assert!(matches!(nobody.get(b"k"), Err(Error::Connect { .. })));
}

#[test]
fn bad_locations_are_refused() {
    for bad in ["", "host", "127.0.0.1:x", "unix:"] {
        assert!(
            matches!(Client::new(&[bad], settings()), Err(Error::Config(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        Client::new(
            &["127.0.0.1:6379"],
            Config {
                username: Some("u".into()),
                ..settings()
            }
        ),
        Err(Error::Config(_))
    ));
}
