//! Real servers for the Rust integration tests, started on loopback and
//! free ports and stopped by PID. A missing binary fails the test loudly.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The Redis tests' client settings (Python's option reading owns the
/// real defaults): one server, not a cluster.
/// The batch calls on 100 keys (each key its own value, TTL 60 s):
/// `set_many`, then `stored()` (the caller's look at the servers), then
/// `get_many` with one absent key, `delete_many` of half, and `set_many`
/// with TTL 0 of the other half, which deletes them: nothing is left.
#[allow(dead_code)] // not every test binary uses it
pub fn redis_batches(c: &racefree::redis::Client, stored: impl FnOnce()) {
    let keys: Vec<Vec<u8>> = (0..100).map(|i| format!("k{i}").into_bytes()).collect();
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_slice(), k.as_slice())).collect();
    assert!(c.set_many(&entries, Some(60)).unwrap().is_empty());
    stored();
    let mut wanted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    wanted.push(b"absent");
    let (found, failures) = c.get_many(&wanted).unwrap();
    assert!(failures.is_empty());
    assert_eq!(found.len(), 101);
    for (key, value) in wanted.iter().zip(&found).take(100) {
        assert_eq!(value.as_deref(), Some(*key));
    }
    assert_eq!(found[100], None);
    assert!(c.delete_many(&wanted[..50]).unwrap().is_empty());
    assert_eq!(c.get_many(&wanted[..50]).unwrap().0, vec![None; 50]);
    assert!(c.set_many(&entries[50..], Some(0)).unwrap().is_empty());
}

/// Expiry and key-space calls (`pttl`, `expire`, `scan`,
/// `delete_matching`) on a client over `primaries` primaries: every page
/// of every primary together finds each key, and concurrent deletions of
/// one pattern count each key once.
pub fn redis_key_space(c: &racefree::redis::Client, primaries: usize) {
    use racefree::redis::Expiry;
    assert_eq!(c.primaries().unwrap(), primaries);
    c.set(b"ks:t", b"v", Some(100)).unwrap();
    c.set(b"ks:p", b"v", None).unwrap();
    let ms = c.pttl(b"ks:t").unwrap();
    assert!((99_000..=100_000).contains(&ms), "{ms}");
    assert_eq!(c.pttl(b"ks:p").unwrap(), -1);
    assert_eq!(c.pttl(b"ks:absent").unwrap(), -2);
    assert!(c.expire(b"ks:p", Expiry::AfterMs(50_000)).unwrap());
    assert!((49_000..=50_000).contains(&c.pttl(b"ks:p").unwrap()));
    let in_a_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 60_000;
    assert!(c.expire(b"ks:p", Expiry::AtUnixMs(in_a_minute)).unwrap());
    assert!((58_000..=60_000).contains(&c.pttl(b"ks:p").unwrap()));
    // PERSIST's own answer: True only where there was an expiry to remove.
    assert!(c.expire(b"ks:p", Expiry::Never).unwrap());
    assert!(!c.expire(b"ks:p", Expiry::Never).unwrap());
    assert_eq!(c.pttl(b"ks:p").unwrap(), -1);
    assert!(!c.expire(b"ks:absent", Expiry::AfterMs(1_000)).unwrap());
    // A lifetime of 0 deletes, as in Redis.
    assert!(c.expire(b"ks:t", Expiry::AfterMs(0)).unwrap());
    assert_eq!(c.get(b"ks:t").unwrap(), None);

    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("ks:m:{i}").into_bytes()).collect();
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_slice(), &b"v"[..])).collect();
    assert!(c.set_many(&entries, None).unwrap().is_empty());
    c.set(b"ks:other", b"v", None).unwrap();
    let mut found = std::collections::BTreeSet::new();
    for node in 0..primaries {
        let mut cursor = 0;
        loop {
            let (next, page) = c.scan(node, cursor, b"ks:m:*", 7).unwrap();
            found.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    assert_eq!(found, keys.iter().cloned().collect());
    assert!(matches!(
        c.scan(primaries, 0, b"*", 10),
        Err(racefree::redis::Error::Config(_))
    ));
    // Four threads delete the same pattern: each key is counted once.
    let deleted: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| c.delete_matching(b"ks:m:*", 10).unwrap()))
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap()).sum()
    });
    assert_eq!(deleted, 300);
    assert_eq!(c.delete_matching(b"ks:m:*", 10).unwrap(), 0);
    assert_eq!(c.get(b"ks:other").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(c.delete_matching(b"ks:*", 1000).unwrap(), 2);
}

/// Data-structure commands through `command`: replies as the server
/// sends them, a key of another kind as `WrongType`, keys sharing a hash
/// tag served together, and (in a cluster) keys of different slots refused
/// before anything is sent; concurrent `SADD`s and `ZINCRBY`s lose nothing.
pub fn redis_commands(c: &racefree::redis::Client, cluster: bool) {
    use racefree::redis::Error;
    use racefree::redis::resp::Value;
    let bulk = |data: &[u8]| Value::Bulk(Some(data.to_vec()));
    let set = b"cmd:{t}set";
    assert_eq!(
        c.command(&[set], &[b"SADD", set, b"a", b"b", b"a"], false).unwrap(),
        Value::Int(2)
    );
    assert_eq!(c.command(&[set], &[b"SCARD", set], true).unwrap(), Value::Int(2));
    let Value::Array(Some(mut members)) = c.command(&[set], &[b"SMEMBERS", set], false).unwrap() else {
        panic!("SMEMBERS is an array");
    };
    members.sort_by_key(|member| format!("{member:?}"));
    assert_eq!(members, vec![bulk(b"a"), bulk(b"b")]);
    assert_eq!(
        c.command(&[b"cmd:{t}none"], &[b"SPOP", b"cmd:{t}none"], false).unwrap(),
        Value::Bulk(None)
    );
    // Keys sharing a hash tag share a slot, so one node serves them.
    let other = b"cmd:{t}other";
    c.command(&[other], &[b"SADD", other, b"b", b"c"], false).unwrap();
    let inter = c.command(&[set, other], &[b"SINTER", set, other], false).unwrap();
    assert_eq!(inter, Value::Array(Some(vec![bulk(b"b")])));
    // A string where a set is expected, and the other way round.
    c.set(b"cmd:{t}string", b"v", None).unwrap();
    let string = b"cmd:{t}string";
    assert!(matches!(
        c.command(&[string], &[b"SADD", string, b"x"], false),
        Err(Error::WrongType { .. })
    ));
    assert!(matches!(c.get(set), Err(Error::WrongType { .. })));
    assert_eq!(
        c.get(string).unwrap().as_deref(),
        Some(&b"v"[..]),
        "the connection stays in step"
    );
    // Keys without a shared tag: refused in a cluster before anything is
    // sent, served by the one server otherwise.
    let spread: [&[u8]; 3] = [b"cmd:a", b"cmd:b", b"cmd:c"];
    let outcome = c.command(&spread, &[b"SUNIONSTORE", spread[0], spread[1], spread[2]], false);
    match cluster {
        true => assert!(
            matches!(&outcome, Err(Error::Config(message)) if message.contains("hash tag")),
            "{outcome:?}"
        ),
        false => assert_eq!(outcome.unwrap(), Value::Int(0)),
    }
    assert!(matches!(c.command(&[], &[b"PING"], false), Err(Error::Config(_))));
    assert!(matches!(c.command(&[set], &[], false), Err(Error::Config(_))));
    // Eight threads add 100 members each and raise one score 100 times.
    let zset = b"cmd:{t}zset";
    std::thread::scope(|scope| {
        for thread in 0..8 {
            scope.spawn(move || {
                for i in 0..100 {
                    let member = format!("{thread}:{i}");
                    c.command(&[set], &[b"SADD", set, member.as_bytes()], false).unwrap();
                    c.command(&[zset], &[b"ZINCRBY", zset, b"1.5", b"m"], false).unwrap();
                }
            });
        }
    });
    assert_eq!(c.command(&[set], &[b"SCARD", set], false).unwrap(), Value::Int(802));
    assert_eq!(
        c.command(&[zset], &[b"ZSCORE", zset, b"m"], false).unwrap(),
        bulk(b"1200")
    );
    let keys: [&[u8]; 4] = [set, other, string, zset];
    for key in keys {
        c.delete(key).unwrap();
    }
}

pub fn redis_settings() -> racefree::redis::Config {
    racefree::redis::Config {
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(1),
        pool_size: 8,
        max_connections: None,
        idle_timeout: Duration::from_secs(60),
        spin_wait: Duration::from_micros(50),
        tls: None,
        username: None,
        password: None,
        db: 0,
        client_name: None,
        read_from_replicas: true,
        combine_calls: true,
        cluster: false,
        sentinel: None,
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free loopback port")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub struct Memcached {
    pub port: u16,
    pub socket: Option<PathBuf>,
    child: Option<Child>,
    extra: Vec<String>,
    /// With TLS on `port`: a plain-text port for the harness's `stats`.
    admin_port: Option<u16>,
    /// With a login (`-Y`): the user and password the harness logs in as.
    login: Option<(String, String)>,
    /// Restarts keep their port.
    restarting: bool,
}

/// TLS and a login for a test server.
#[derive(Default)]
pub struct Security {
    /// Certificate and key: the port speaks TLS only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// An authfile (`user:password` lines) and the login the harness uses.
    pub login: Option<(PathBuf, String, String)>,
}

impl Memcached {
    pub fn start() -> Memcached {
        Memcached::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Memcached {
        Memcached::start_secure(Security::default(), extra)
    }

    pub fn start_secure(security: Security, extra: &[&str]) -> Memcached {
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some((cert, key)) = &security.tls {
            extra.extend(["-Z".into(), "-o".into()]);
            extra.push(format!("ssl_chain_cert={},ssl_key={}", cert.display(), key.display()));
        }
        let login = security.login.map(|(authfile, user, password)| {
            extra.extend(["-Y".into(), authfile.display().to_string()]);
            (user, password)
        });
        let mut server = Memcached {
            port: free_port(),
            socket: None,
            child: None,
            extra,
            admin_port: security.tls.map(|_| free_port()),
            login,
            restarting: false,
        };
        server.spawn();
        server
    }

    /// A server listening on a unix socket in a temp dir.
    pub fn start_unix() -> Memcached {
        let dir = std::env::temp_dir().join(format!("racefree-mc-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = Memcached {
            port: 0,
            socket: Some(dir.join("memcached.sock")),
            child: None,
            extra: Vec::new(),
            admin_port: None,
            login: None,
            restarting: false,
        };
        server.spawn();
        server
    }

    pub fn location(&self) -> String {
        match &self.socket {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    fn spawn(&mut self) {
        for _attempt in 0..5 {
            if self.try_spawn() {
                return;
            }
            // Another process took the port between our probe and the bind.
            if self.socket.is_none() && !self.restarting {
                self.port = free_port();
                self.admin_port = self.admin_port.map(|_| free_port());
            }
        }
        panic!("memcached did not start on {}", self.location());
    }

    fn try_spawn(&mut self) -> bool {
        let mut command = Command::new("memcached");
        match (&self.socket, self.admin_port) {
            (Some(path), _) => command.arg("-s").arg(path).arg("-a").arg("0700"),
            (None, Some(admin)) => command
                .arg("-l")
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("-l")
                .arg(format!("notls:127.0.0.1:{admin}")),
            (None, None) => command.args(["-l", "127.0.0.1", "-p", &self.port.to_string()]),
        };
        command.args(["-U", "0", "-m", "64", "-t", "2", "-c", "4096"]);
        command.args(&self.extra);
        if is_root() {
            command.args(["-u", "root"]);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start memcached: install it (apt-get install memcached)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            // Ready when the process answering is ours.
            if self.stats_pid() == Some(child.id()) {
                self.child = Some(child);
                return true;
            }
            sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn stats_pid(&self) -> Option<u32> {
        use std::io::{BufRead, BufReader, Write};
        let (mut writer, reader): (Box<dyn Write>, Box<dyn std::io::Read>) = match &self.socket {
            Some(path) => {
                let stream = std::os::unix::net::UnixStream::connect(path).ok()?;
                (Box::new(stream.try_clone().ok()?), Box::new(stream))
            }
            None => {
                let stream = TcpStream::connect(("127.0.0.1", self.admin_port.unwrap_or(self.port))).ok()?;
                (Box::new(stream.try_clone().ok()?), Box::new(stream))
            }
        };
        let mut lines = BufReader::new(reader).lines();
        if let Some((user, password)) = &self.login {
            let login = format!("{user} {password}");
            writer
                .write_all(format!("set login 0 0 {}\r\n{login}\r\n", login.len()).as_bytes())
                .ok()?;
            if lines.next()?.ok()? != "STORED" {
                return None;
            }
        }
        writer.write_all(b"stats\r\n").ok()?;
        for line in lines {
            let line = line.ok()?;
            if line == "END" {
                break;
            }
            if let Some(pid) = line.strip_prefix("STAT pid ") {
                return pid.trim().parse().ok();
            }
        }
        None
    }

    /// State letter of the process in /proc (R, S, T, ...).
    fn state(&self) -> Option<char> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after_name = &stat[stat.rfind(')')? + 1..];
        after_name.trim_start().chars().next()
    }

    fn wait_for_state(&self, stopped: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if (self.state() == Some('T')) == stopped {
                return;
            }
            sleep(Duration::from_millis(1));
        }
        panic!("memcached did not {}", if stopped { "stop" } else { "resume" });
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// Freeze the server: it keeps its sockets but answers nothing.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        self.wait_for_state(true);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
        self.wait_for_state(false);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port or socket.
    pub fn restart(&mut self) {
        self.kill();
        self.restarting = true;
        self.spawn();
        self.restarting = false;
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
        if let Some(path) = &self.socket
            && let Some(dir) = path.parent()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A throwaway CA and a server certificate for localhost and 127.0.0.1,
/// made with the `openssl` command in a temp dir (removed on drop).
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("racefree-pki-{}-{}-{name}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // Arguments split at spaces: only file names of this directory.
        let openssl = |args: &str, subject: &str| {
            let status = Command::new("openssl")
                .args(args.split_whitespace())
                .args(["-subj", subject])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("cannot run openssl: install it (apt-get install openssl)");
            assert!(status.success(), "openssl {args} failed");
        };
        let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        openssl(
            &format!(
                "req -x509 {new_key} -days 2 -keyout ca.key -out ca.pem \
                 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
            ),
            &format!("/CN={name} CA"),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("extensions file");
        openssl(
            &format!("req -new {new_key} -keyout server.key -out server.csr"),
            "/CN=localhost",
        );
        openssl(
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
             -extfile server.ext -out server.pem",
            "/CN=localhost",
        );
        Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Directory of PostgreSQL's server binaries (on PATH, from pg_config, or
/// Debian's /usr/lib/postgresql/<version>/bin).
fn postgres_bindir() -> PathBuf {
    if let Ok(output) = Command::new("sh").args(["-c", "command -v initdb"]).output() {
        let found = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !found.is_empty()
            && let Ok(real) = std::fs::canonicalize(&found)
        {
            return real.parent().expect("initdb has a directory").to_path_buf();
        }
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL server (initdb) not installed: apt-get install postgresql")
}

/// The user to run PostgreSQL as when we are root (initdb refuses root).
fn server_user() -> Option<(String, u32, u32)> {
    if !is_root() {
        return None;
    }
    for name in ["postgres", "nobody"] {
        let c_name = std::ffi::CString::new(name).ok()?;
        // SAFETY: getpwnam with a valid C string; fields copied at once.
        let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
        if !entry.is_null() {
            // SAFETY: non-null entry from getpwnam.
            let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
            return Some((name.to_string(), uid, gid));
        }
    }
    panic!("running as root without a postgres or nobody user to run PostgreSQL as");
}

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bindir: PathBuf,
    user: Option<(String, u32, u32)>,
    child: Option<Child>,
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!("racefree-pg-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let user = server_user();
        if let Some((_, uid, gid)) = &user {
            std::os::unix::fs::chown(&dir, Some(*uid), Some(*gid)).expect("chown temp dir");
        }
        let mut server = Postgres {
            port: free_port(),
            bindir: postgres_bindir(),
            dir,
            user,
            child: None,
        };
        let data = server.dir.join("data");
        let status = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        server.spawn();
        server
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        match &self.user {
            Some((name, _, _)) => {
                let mut command = Command::new("runuser");
                command.args(["-u", name, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        }
    }

    pub fn dsn(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    fn spawn(&mut self) {
        let socket_dir = self.dir.join("socket");
        let _ = std::fs::create_dir_all(&socket_dir);
        if let Some((_, uid, gid)) = &self.user {
            let _ = std::os::unix::fs::chown(&socket_dir, Some(*uid), Some(*gid));
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = Command::new(self.bindir.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        panic!("postgres did not start on port {}", self.port);
    }

    fn postmaster_pid(&self) -> Option<i32> {
        let pid_file = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// Stop: SIGINT (fast) or SIGQUIT (immediate, like a crash).
    pub fn stop(&mut self, immediate: bool) {
        if let Some(pid) = self.postmaster_pid() {
            let signal = if immediate { libc::SIGQUIT } else { libc::SIGINT };
            // SAFETY: signalling the server we started.
            unsafe { libc::kill(pid, signal) };
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.postmaster_pid().is_some() && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self, immediate: bool) {
        self.stop(immediate);
        self.spawn();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop(false);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server on a free loopback port, nothing persisted; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// A lone node in cluster mode (it answers CLUSTER KEYSLOT; no slots).
    pub fn start_cluster_node() -> Redis {
        Redis::start_cluster_node_with(&[])
    }

    /// A node in cluster mode, with `extra` arguments.
    pub fn start_cluster_node_with(extra: &[&str]) -> Redis {
        Redis::start_on_free_ports(extra, true)
    }

    pub fn start_with(extra: &[&str]) -> Redis {
        Redis::start_on_free_ports(extra, false)
    }

    /// A free port is only free when it was asked for: another server
    /// started meanwhile (another test's node, or its cluster bus) may
    /// take it, and this one then exits. So each try checks that the
    /// server answering is this child, and a child that exited is tried
    /// again on new ports.
    fn start_on_free_ports(extra: &[&str], cluster: bool) -> Redis {
        for _ in 0..5 {
            if let Some(redis) = Redis::try_start(extra, cluster) {
                return redis;
            }
        }
        panic!("redis-server exited at start on 5 pairs of free ports");
    }

    fn try_start(extra: &[&str], cluster: bool) -> Option<Redis> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("racefree-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // The bus's own port: by default it is the client port + 10,000,
        // which a free port above 55,535 cannot have.
        let bus = free_port().to_string();
        let cluster_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus,
        ];
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(if cluster { &cluster_args[..] } else { &[] })
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run `make test` as root, or apt-get install redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers_as(port, child.id()) {
            if let Ok(Some(_)) = child.try_wait() {
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            }
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            sleep(Duration::from_millis(10));
        }
        Some(Redis { port, child, dir })
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    pub fn pause(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGSTOP) };
    }

    pub fn resume(&self) {
        // SAFETY: as in pause.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
    }
}

/// Whether the server on `port` is process `pid` (`INFO server` says its
/// `process_id`; a server that asks for a password is taken at its word
/// once it answers, as no other test's server asks for one).
fn answers_as(port: u16, pid: u32) -> bool {
    let Ok(mut socket) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
    if socket.write_all(b"INFO server\r\n").is_err() {
        return false;
    }
    // A bulk string: `$<length>\r\n<text>\r\n`.
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = socket.read(&mut chunk) {
        reply.extend_from_slice(&chunk[..n]);
        if reply.starts_with(b"-NOAUTH") {
            return true;
        }
        let text = String::from_utf8_lossy(&reply);
        let Some((header, body)) = text.strip_prefix('$').and_then(|rest| rest.split_once("\r\n")) else {
            continue;
        };
        let Ok(length) = header.parse::<usize>() else {
            return false;
        };
        if body.len() >= length {
            return body.lines().any(|line| line.trim() == format!("process_id:{pid}"));
        }
    }
    false
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli` against the server on `port`: its output, trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is not installed: apt-get install redis-tools");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Primaries of one Redis Cluster (`redis-cli --cluster create`), each
/// owning a share of the 16,384 slots; stopped on drop. A node that loses
/// its peers keeps serving its own slots (full coverage not required).
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start(count: usize) -> RedisCluster {
        let nodes: Vec<Redis> = (0..count)
            .map(|_| {
                Redis::start_cluster_node_with(&[
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-require-full-coverage",
                    "no",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is not installed: apt-get install redis-tools");
        assert!(created.status.success(), "redis-cli --cluster create: {created:?}");
        let cluster = RedisCluster { nodes };
        // Ready when every node sees every slot served and every node known.
        let deadline = Instant::now() + Duration::from_secs(30);
        let known = format!("cluster_known_nodes:{count}");
        while !cluster.nodes.iter().all(|node| {
            let info = redis_cli(node.port, &["cluster", "info"]);
            info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384") && info.contains(&known)
        }) {
            assert!(Instant::now() < deadline, "the Redis cluster did not come up");
            sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The seeds as the client takes them.
    pub fn locations(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect()
    }

    pub fn node_id(&self, node: usize) -> String {
        redis_cli(self.nodes[node].port, &["cluster", "myid"])
    }

    /// The index in `nodes` of the node that serves `slot`, by its own word.
    pub fn owner_of(&self, slot: u16) -> usize {
        (0..self.nodes.len())
            .find(|&node| {
                let port = self.nodes[node].port;
                slot_owner_port(&redis_cli(port, &["cluster", "slots"]), slot) == Some(port)
            })
            .expect("no node serves the slot")
    }

    /// `redis-cli -c` (following redirects) against the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        redis_cli(self.nodes[0].port, &all)
    }
}

/// The port of `slot`'s owner in `CLUSTER SLOTS` as redis-cli prints it
/// (per range: first slot, last slot, then the primary's host, port, id).
pub fn slot_owner_port(printed: &str, slot: u16) -> Option<u16> {
    let lines: Vec<&str> = printed.lines().collect();
    (0..lines.len().saturating_sub(3)).find_map(|i| {
        let (first, last) = (lines[i].parse::<u16>().ok()?, lines[i + 1].parse::<u16>().ok()?);
        (first <= slot && slot <= last)
            .then(|| lines[i + 3].parse().ok())
            .flatten()
    })
}
