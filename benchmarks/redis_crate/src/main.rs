//! The Redis store's own client against redis-rs 1.8 (the `redis` crate),
//! at the store level: Rust calling Rust, no Python, one redis-server in
//! its default configuration on loopback.
//!
//! 1. Deadlines: a server that stopped accepting (a Unix socket whose
//!    backlog is full), with a 0.5 s connect timeout on each client.
//! 2. Speed: GET of a 100-byte value from 1 and 8 threads, the clients
//!    taking turns round by round: racefree's store (one shared client),
//!    redis-rs's synchronous `Connection` (one per thread, the best a pool
//!    can do), and redis-rs's `MultiplexedConnection` (one, shared; each
//!    call waits on it with `block_on`, as a synchronous caller must).
//!
//! Run: `make bench-redis-crate`, or `cargo run --release -- ROUNDS SECONDS`
//! here with redis-server on PATH.

// The Rust tests' server harness: redis-server on a free loopback port.
#[path = "../../../tests/rust/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

const TIMEOUT: Duration = Duration::from_millis(500);
/// How long a client may take before it counts as hanging.
const PATIENCE: Duration = Duration::from_secs(5);

/// racefree's store with the 0.5 s deadlines; the rest as in its tests.
fn store_settings() -> racefree::redis::Config {
    racefree::redis::Config {
        connect_timeout: TIMEOUT,
        io_timeout: TIMEOUT,
        ..support::redis_settings()
    }
}

/// A listener at `path` that accepts nothing, its backlog filled with
/// connects of our own: a server that stopped accepting. Kept open while
/// the returned sockets live.
fn full_unix_listener(path: &Path) -> (std::os::unix::net::UnixListener, Vec<Socket>) {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
    let address = SockAddr::unix(path).expect("a socket address");
    let mut waiting = Vec::new();
    loop {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
        socket.set_nonblocking(true).expect("non-blocking");
        if socket.connect(&address).is_err() {
            return (listener, waiting);
        }
        waiting.push(socket);
    }
}

/// `call`'s outcome and how long it took, or that it was still blocked
/// after PATIENCE (its thread is left behind).
fn timed(call: impl FnOnce() -> String + Send + 'static) -> String {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let started = Instant::now();
        let outcome = call();
        let _ = sender.send(format!("{:.2} s, {outcome}", started.elapsed().as_secs_f64()));
    });
    receiver
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|_| format!("still blocked after {} s", PATIENCE.as_secs()))
}

fn outcome<T, E: std::fmt::Display>(result: Result<T, E>) -> String {
    match result {
        Ok(_) => "connected".into(),
        Err(error) => format!("error: {error}"),
    }
}

fn deadlines() {
    let dir = std::env::temp_dir().join(format!("redis-crate-comparison-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("full.sock");
    let _held = full_unix_listener(&path);
    let url = format!("unix://{}", path.display());
    println!("## A server that stopped accepting (Unix socket, backlog full), connect timeout 0.5 s\n");
    println!("| client | outcome |\n|---|---|");
    let sync_url = url.clone();
    let sync = timed(move || {
        outcome(redis::Client::open(sync_url.as_str()).and_then(|c| c.get_connection_with_timeout(TIMEOUT)))
    });
    println!("| redis-rs `get_connection_with_timeout` | {sync} |");
    let async_url = url.clone();
    let multiplexed = timed(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        outcome(runtime.block_on(async {
            let client = redis::Client::open(async_url.as_str())?;
            client.get_multiplexed_async_connection_with_config(&config).await
        }))
    });
    println!("| redis-rs multiplexed, `set_connection_timeout` | {multiplexed} |");
    let location = format!("unix:{}", path.display());
    let store = timed(
        move || match racefree::redis::Client::new(&[location], store_settings()) {
            Ok(client) => outcome(client.get(b"k")),
            Err(error) => format!("error: {error}"),
        },
    );
    println!("| racefree store, `get` | {store} |\n");
    let _ = std::fs::remove_dir_all(&dir);
}

type Call = Arc<dyn Fn(usize) + Send + Sync>;

/// Calls per second of `call` from `threads` threads for `seconds`.
fn rate(threads: usize, seconds: f64, call: &Call) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let (stop, done, call) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(call));
            thread::spawn(move || {
                let mut calls = 0;
                while !stop.load(Ordering::Relaxed) {
                    call(thread);
                    calls += 1;
                }
                done.fetch_add(calls, Ordering::Relaxed);
            })
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("a worker panicked");
    }
    done.load(Ordering::Relaxed) as f64 / seconds
}

fn speed(port: u16, rounds: usize, seconds: f64) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    let mut setup = client.get_connection().expect("connect");
    redis::cmd("SET")
        .arg("bench")
        .arg([b'x'; 100].as_slice())
        .exec(&mut setup)
        .expect("SET");
    let store =
        Arc::new(racefree::redis::Client::new(&[format!("127.0.0.1:{port}")], store_settings()).expect("store"));
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime"),
    );
    let multiplexed = runtime
        .block_on(client.get_multiplexed_async_connection())
        .expect("multiplexed connection");
    let hit = |value: Option<Vec<u8>>| assert_eq!(value.map(|v| v.len()), Some(100), "a miss");

    let mut cells: Vec<(usize, &str, Call)> = Vec::new();
    for threads in [1, 8] {
        let shared = Arc::clone(&store);
        cells.push((
            threads,
            "racefree store",
            Arc::new(move |_| hit(shared.get(b"bench").expect("get"))),
        ));
        let own: Vec<_> = (0..threads)
            .map(|_| Mutex::new(client.get_connection().expect("connect")))
            .collect();
        cells.push((
            threads,
            "redis-rs Connection per thread",
            Arc::new(move |thread| {
                let mut conn = own[thread].lock().expect("unpoisoned");
                hit(redis::cmd("GET").arg("bench").query(&mut *conn).expect("GET"));
            }),
        ));
        let (connection, runtime) = (multiplexed.clone(), Arc::clone(&runtime));
        cells.push((
            threads,
            "redis-rs MultiplexedConnection",
            Arc::new(move |_| {
                let mut connection = connection.clone();
                hit(runtime
                    .block_on(redis::cmd("GET").arg("bench").query_async(&mut connection))
                    .expect("GET"));
            }),
        ));
    }
    let mut rates = vec![Vec::new(); cells.len()];
    for _ in 0..rounds {
        for (cell, (threads, _, call)) in cells.iter().enumerate() {
            rates[cell].push(rate(*threads, seconds, call));
        }
    }
    println!("## GET of a 100-byte value: median of {rounds} rounds of {seconds} s, clients taking turns\n");
    println!("| threads | client | GETs/s | racefree store vs it |\n|---|---|---|---|");
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    for (cell, (threads, name, _)) in cells.iter().enumerate() {
        let ours = medians[cell - cell % 3];
        println!(
            "| {threads} | {name} | {:.0} | {:.2}x |",
            medians[cell],
            ours / medians[cell]
        );
    }
    // Every store call came through one shared client: its pools say how
    // many connections that took.
    let (_, servers) = store.stats();
    let dialed: u64 = servers.iter().map(|(_, _, _, connects, _)| connects).sum();
    println!(
        "\nConnections: racefree's store dialed {dialed} for all its calls at 1 and 8 threads; \
         redis-rs held 1 per thread (Connection) or 1 in all (MultiplexedConnection)."
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let seconds = args.next().and_then(|a| a.parse().ok()).unwrap_or(2.0);
    deadlines();
    let server = support::Redis::start();
    speed(server.port, rounds, seconds);
    drop(server);
    // A hanging client's thread is still blocked: leave without joining it.
    std::process::exit(0);
}
