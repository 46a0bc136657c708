"""Real servers for tests, benchmarks and the demo.

Each server runs on loopback, on a free port (or a unix socket) in a temp
dir, and is stopped by PID. A missing binary is an error that says what to
install; nothing is skipped.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


class ServerMissing(RuntimeError):
    pass


#: Ports handed out in this process: never handed out twice, since the
#: backends share one store per LOCATION and OPTIONS in a process, and a
#: new server on an earlier one's port would meet that server's store
#: (its counts, its pooled connections).
_handed_out = set()


def free_port():
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _process_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class ServerProcess:
    """Process control shared by the servers started here: ``self.process``
    is the server's Popen, ``self.name`` its name in messages."""

    name = "server"
    process = None
    tempdir = None

    def _command(self):
        raise NotImplementedError

    def _answering_pid(self):
        """The PID of the process answering on the server's address, if any."""
        raise NotImplementedError

    def _new_ports(self):
        """Pick new free ports (another process took one first)."""
        raise NotImplementedError

    def start(self, keep_port=False):
        for _attempt in range(5):
            self.process = subprocess.Popen(
                self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                # Ready when the process answering is ours (not a stranger
                # that took the port first).
                if self._answering_pid() == self.process.pid:
                    return
                time.sleep(0.01)
            self.kill()
            if not keep_port:
                self._new_ports()
        raise RuntimeError(f"{self.name} did not start on {self.location}")

    def restart(self):
        self.kill()
        self.start(keep_port=True)

    def stop(self):
        self.kill()
        shutil.rmtree(self.tempdir, ignore_errors=True)

    def close(self):
        self.stop()

    def pause(self):
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        os.kill(self.process.pid, signal.SIGSTOP)
        self._wait_state(stopped=True)

    def resume(self):
        os.kill(self.process.pid, signal.SIGCONT)
        self._wait_state(stopped=False)

    def _wait_state(self, stopped):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if (_process_state(self.process.pid) == "T") == stopped:
                return
            time.sleep(0.001)
        raise RuntimeError(f"{self.name} did not change state")

    def kill(self):
        """SIGKILL and reap."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()


class Memcached(ServerProcess):
    """A memcached process; ``location`` is what goes into LOCATION.
    ``threads`` is its worker threads (``-t``): memcached's own default
    unless a benchmark asks for another.

    ``tls=(cert, key)`` makes its port TLS-only (``-Z``); ``ca_cert`` then
    also requires a client certificate issued under that CA. The harness
    reads ``stats`` on a second, plain-text port of its own
    (``admin_port``). ``authfile`` (lines ``user:password``) turns on
    memcached's login (``-Y``); the harness logs in as its first user."""

    name = "memcached"

    def __init__(self, unix_socket=False, memory_mb=64, extra_args=(), threads=4, tls=None, ca_cert=None,
                 authfile=None):
        binary = shutil.which("memcached")
        if binary is None:
            raise ServerMissing("memcached is not installed: run `make test` as root, or `apt-get install memcached`")
        if tls and unix_socket:
            raise ValueError("memcached speaks TLS on TCP ports only")
        self.binary = binary
        self.memory_mb = memory_mb
        self.extra_args = list(extra_args)
        self.threads = threads
        self.tls = tls
        self.ca_cert = ca_cert
        self.authfile = authfile
        self.tempdir = tempfile.mkdtemp(prefix="racefree-memcached-")
        self.socket_path = os.path.join(self.tempdir, "memcached.sock") if unix_socket else None
        self.port = None if unix_socket else free_port()
        self.admin_port = free_port() if tls else None
        self.process = None
        self.start()

    @property
    def location(self):
        if self.socket_path:
            return f"unix:{self.socket_path}"
        return f"127.0.0.1:{self.port}"

    def _command(self):
        command = [self.binary, "-U", "0", "-m", str(self.memory_mb), "-t", str(self.threads), "-c", "4096"]
        if self.socket_path:
            command += ["-s", self.socket_path, "-a", "0700"]
        elif self.tls:
            command += ["-l", f"127.0.0.1:{self.port}", "-l", f"notls:127.0.0.1:{self.admin_port}"]
        else:
            command += ["-l", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            cert, key = self.tls
            tls_options = f"ssl_chain_cert={cert},ssl_key={key}"
            if self.ca_cert:
                # 2: require a client certificate, checked against ssl_ca_cert.
                tls_options += f",ssl_ca_cert={self.ca_cert},ssl_verify_mode=2"
            command += ["-Z", "-o", tls_options]
        if self.authfile:
            command += ["-Y", self.authfile]
        if os.geteuid() == 0:
            command += ["-u", "root"]
        return command + self.extra_args

    def _connect(self):
        if self.socket_path:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(1)
            conn.connect(self.socket_path)
        else:
            conn = socket.create_connection(("127.0.0.1", self.admin_port or self.port), timeout=1)
        if self.authfile:
            with open(self.authfile) as users:
                user, _, password = users.readline().rstrip("\n").partition(":")
            login = f"{user} {password}".encode()
            conn.sendall(b"set login 0 0 %d\r\n%s\r\n" % (len(login), login))
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = conn.recv(100)
                if not chunk:
                    break
                reply += chunk
            if reply != b"STORED\r\n":
                conn.close()
                raise OSError(f"memcached refused the harness's login: {reply!r}")
        return conn

    def stats(self):
        """The server's ``stats``, as a dict of ints (and strings)."""
        with self._connect() as conn:
            conn.sendall(b"stats\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        stats = {}
        for line in data.decode().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "STAT":
                stats[parts[1]] = int(parts[2]) if parts[2].isdigit() else parts[2]
        return stats

    def _answering_pid(self):
        try:
            return self.stats().get("pid")
        except OSError:
            return None

    def _new_ports(self):
        if self.port:
            self.port = free_port()
            self.admin_port = self.admin_port and free_port()


class Redis(ServerProcess):
    """A redis-server process (Valkey speaks the same protocol): loopback, a
    free port, a temp dir, nothing persisted. ``replica_of`` (another
    Redis) makes it that server's replica; ``cluster`` starts it in cluster
    mode (see RedisCluster). ``password`` turns on ``requirepass`` (the
    harness's own redis-cli calls log in with it). ``location`` is a
    LOCATION URL."""

    name = "redis-server"

    def __init__(self, replica_of=None, cluster=False, extra_args=(), password=None):
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise ServerMissing("Redis is not installed: run `make test` as root, or "
                                "`apt-get install redis-server redis-tools`")
        self.binary = binary
        self.replica_of = replica_of
        self.cluster = cluster
        self.extra_args = list(extra_args)
        self.password = password
        self.tempdir = tempfile.mkdtemp(prefix="racefree-redis-")
        self.port = free_port()
        # The cluster bus's own port: by default it is the client port +
        # 10,000, which a free port above 55,535 cannot have.
        self.cluster_port = free_port() if cluster else None
        self.process = None
        self.start()

    @property
    def location(self):
        return f"redis://127.0.0.1:{self.port}"

    def _command(self):
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.tempdir,
                   "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no"]
        if self.cluster:
            # A node that lost its peers keeps serving the slots it has
            # (the tests kill one node and expect the others to answer).
            command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
                        "--cluster-port", str(self.cluster_port)]
        if self.replica_of is not None:
            command += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        if self.password is not None:
            command += ["--requirepass", self.password]
        return command + self.extra_args

    def cli(self, *args, check=True):
        """A redis-cli call against this server; its output, stripped."""
        login = ["--no-auth-warning", "-a", self.password] if self.password is not None else []
        done = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *login, *map(str, args)],
                              capture_output=True, text=True, timeout=10)
        if check and done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(map(str, args))}: {done.stderr.strip()}")
        return done.stdout.strip()

    def info(self, section="server", check=True):
        """``INFO section`` as a dict of strings."""
        lines = self.cli("info", section, check=check).splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))

    @property
    def version(self):
        """The Redis version it reports (Valkey reports the Redis version it matches)."""
        return tuple(int(part) for part in self.info()["redis_version"].split(".")[:2])

    def _answering_pid(self):
        pid = self.info(check=False).get("process_id")
        return int(pid) if pid else None

    def _new_ports(self):
        self.port = free_port()
        if self.cluster:
            self.cluster_port = free_port()


class RedisSentinel(Redis):
    """A Redis Sentinel (``redis-server <config> --sentinel``) watching
    ``primary`` (a Redis) as the service ``service``: loopback, a free
    port, a temp dir for the config file it rewrites. A failover needs
    ``quorum`` Sentinels to agree the primary is down, after
    ``down_after_ms`` without an answer. ``password`` is the Sentinel's
    own (``requirepass``, and what it tells other Sentinels);
    ``primary_password`` the one it logs in to the primary with;
    ``primary_port`` another port of the primary's (its TLS one), and
    ``config`` more lines of configuration (TLS)."""

    name = "redis-sentinel"

    def __init__(self, primary, service="racefree", quorum=1, down_after_ms=1000, password=None,
                 primary_password=None, primary_port=None, config=()):
        self.monitored = (primary_port or primary.port, service, quorum, down_after_ms, primary_password)
        self.more_config = list(config)
        super().__init__(password=password)

    def _command(self):
        port, service, quorum, down_after_ms, primary_password = self.monitored
        lines = [f"port {self.port}", "bind 127.0.0.1", "protected-mode no", f"dir {self.tempdir}",
                 f"sentinel monitor {service} 127.0.0.1 {port} {quorum}",
                 f"sentinel down-after-milliseconds {service} {down_after_ms}",
                 f"sentinel failover-timeout {service} 10000"]
        if primary_password is not None:
            lines.append(f"sentinel auth-pass {service} {primary_password}")
        if self.password is not None:
            lines += [f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}"]
        lines += self.more_config
        config = os.path.join(self.tempdir, "sentinel.conf")
        with open(config, "w") as file:
            file.write("\n".join(lines) + "\n")
        return [self.binary, config, "--sentinel"]

    @property
    def address(self):
        """As OPTIONS SENTINELS lists it."""
        return ("127.0.0.1", self.port)

    def primary_port(self):
        """The port of the primary this Sentinel names now."""
        _host, port = self.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.monitored[1]).split()
        return int(port)

    def knows(self, replicas, sentinels):
        """Whether it sees ``replicas`` replicas up and ``sentinels`` other Sentinels."""
        service = self.monitored[1]
        seen = self.cli("SENTINEL", "REPLICAS", service).split()
        # A replica that is up has the flags "slave" and no others.
        others = self.cli("SENTINEL", "SENTINELS", service).split()
        return seen.count("slave") >= replicas and others.count("name") >= sentinels


class RedisCluster:
    """Three Redis primaries forming a cluster (``redis-cli --cluster
    create``), each owning a third of the 16,384 slots; with ``replicas``,
    that many replicas of each primary too (``nodes`` lists them all,
    ``replica_of(primary)`` finds one). With ``tls``
    (a server certificate and key, a client certificate and key for the
    nodes' connections to each other, and the CA file) each node also
    listens with TLS on its ``tls_ports`` entry, and the nodes talk to
    each other over TLS (clients connected with TLS are told the TLS
    ports)."""

    def __init__(self, nodes=3, tls=None, replicas=0):
        nodes *= 1 + replicas
        self.tls_ports = [free_port() for _ in range(nodes)] if tls else []
        self.nodes = []
        try:
            for index in range(nodes):
                extra = []
                if tls:
                    cert, key, client_cert, client_key, ca = tls
                    extra = ["--tls-port", str(self.tls_ports[index]), "--tls-cert-file", cert, "--tls-key-file", key,
                             "--tls-client-cert-file", client_cert, "--tls-client-key-file", client_key,
                             "--tls-ca-cert-file", ca, "--tls-auth-clients", "no", "--tls-cluster", "yes"]
                self.nodes.append(Redis(cluster=True, extra_args=extra))
            ports = self.tls_ports or [node.port for node in self.nodes]
            addresses = [f"127.0.0.1:{port}" for port in ports]
            over_tls = ["--tls", "--cacert", tls[-1]] if tls else []
            subprocess.run(["redis-cli", *over_tls, "--cluster", "create", *addresses, "--cluster-replicas",
                            str(replicas), "--cluster-yes"], check=True, capture_output=True, text=True, timeout=60)
            deadline = time.monotonic() + 30
            while not all(node.info("cluster").get("cluster_enabled") == "1" and
                          "cluster_state:ok" in node.cli("cluster", "info") and
                          node.info("replication").get("master_link_status", "up") == "up" for node in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis cluster did not come up")
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    @property
    def locations(self):
        return [node.location for node in self.nodes]

    def replica_of(self, primary):
        """A node replicating ``primary``, now."""
        for node in self.nodes:
            if node.info("replication").get("master_port") == str(primary.port):
                return node
        raise LookupError(f"no replica of the node on port {primary.port}")

    def node_for(self, key):
        """The node that owns ``key``'s slot (by the cluster's own word)."""
        slot = int(self.nodes[0].cli("cluster", "keyslot", key))
        for node in self.nodes:
            # CLUSTER SLOTS as redis-cli prints it: per range, its first and
            # last slot, then the owner's host, port and id.
            lines = node.cli("cluster", "slots").splitlines()
            for index in range(len(lines) - 3):
                if not (lines[index].isdigit() and lines[index + 1].isdigit()):
                    continue
                first, last = int(lines[index]), int(lines[index + 1])
                if first <= slot <= last and lines[index + 3] == str(node.port):
                    return node
        raise LookupError(f"no node owns slot {slot}")

    def close(self):
        for node in self.nodes:
            node.close()


def postgres_bindir():
    """Directory of initdb/postgres: on PATH, from pg_config, or Debian's
    /usr/lib/postgresql/<version>/bin (installed but not on PATH)."""
    found = shutil.which("initdb")
    if found:
        # Often a symlink into the versioned bin directory holding the rest.
        return os.path.dirname(os.path.realpath(found))
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    candidates = sorted(
        (path for path in _glob("/usr/lib/postgresql/*/bin/initdb")), key=lambda p: int(p.split("/")[4])
    )
    if candidates:
        return os.path.dirname(candidates[-1])
    raise ServerMissing(
        "the PostgreSQL server (initdb) is not installed: run `make test` as root, "
        "or `apt-get install postgresql`"
    )


def _glob(pattern):
    import glob

    return [path for path in glob.glob(pattern) if path.split("/")[4].isdigit()]


def _unprivileged_user():
    """initdb refuses to run as root: run the server as this user then."""
    import pwd

    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, but there is no postgres or nobody user to run PostgreSQL as")


class Postgres:
    """A throwaway PostgreSQL cluster in a temp dir on 127.0.0.1 and a free
    port. For tests, fsync is off (the data is throwaway and the OS does
    not crash in tests), but commits stay synchronous so that a killed
    server loses nothing it acknowledged; ``as_shipped=True`` (benchmarks)
    keeps PostgreSQL's default durability instead, fsync and full-page
    writes on, as a real server runs. Either way it takes 400
    connections. ``settings()`` is a DATABASES entry.

    ``tls``: a ``tests.support.certs.Authority`` turns TLS on, with a
    certificate for localhost and 127.0.0.1 issued by it. With ``tls_only``
    the server refuses plain TCP connections (``hostnossl ... reject``),
    and the user ``certuser`` connects only with a client certificate of
    that CA (``clientcert=verify-full``)."""

    #: The user that must present a client certificate on a TLS server.
    CERT_USER = "certuser"

    def __init__(self, tls=None, tls_only=False, as_shipped=False):
        self.bindir = postgres_bindir()
        # Room for a benchmark's 200 tasks or 64 threads with a connection each.
        self._tuning = ["-c", "max_connections=400"]
        if not as_shipped:
            self._tuning += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        self.tempdir = tempfile.mkdtemp(prefix="racefree-postgres-")
        self.datadir = os.path.join(self.tempdir, "data")
        self.socketdir = os.path.join(self.tempdir, "socket")
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = _unprivileged_user()
            os.chown(self.tempdir, self.user.pw_uid, self.user.pw_gid)
        self._run([os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", "postgres", "-A", "trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"])
        os.makedirs(self.socketdir, exist_ok=True)
        if self.user:
            os.chown(self.socketdir, self.user.pw_uid, self.user.pw_gid)
        self.tls = tls
        self._tls_args = []
        if tls is not None:
            self._configure_tls(tls, tls_only)
        self.process = None
        self.start()
        if tls is not None:
            self._run([os.path.join(self.bindir, "psql"), "-h", self.socketdir, "-p", str(self.port), "-U",
                       "postgres", "-d", "postgres", "-qc", f"CREATE ROLE {self.CERT_USER} LOGIN SUPERUSER"])

    def _configure_tls(self, authority, tls_only):
        cert, key = authority.server("postgres-server")
        if self.user:
            authority.chown(self.user)
        self._tls_args = ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}",
                          "-c", f"ssl_ca_file={authority.cert}"]
        if not tls_only:
            return
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w") as hba:
            hba.write(
                "local all all trust\n"
                "hostnossl all all 127.0.0.1/32 reject\n"
                f"hostssl all {self.CERT_USER} 127.0.0.1/32 trust clientcert=verify-full\n"
                "hostssl all all 127.0.0.1/32 trust\n"
            )

    def _as_server_user(self, command):
        if self.user is None:
            return command
        return ["runuser", "-u", self.user.pw_name, "--", *command]

    def _run(self, command):
        result = subprocess.run(self._as_server_user(command), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")

    @property
    def dsn(self):
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def create_cache_table(self, name="cache"):
        """The table Django's ``createcachetable`` makes, in the default database."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as admin:
            admin.execute(
                f'CREATE TABLE "{name}" ("cache_key" varchar(255) NOT NULL PRIMARY KEY, "value" text NOT NULL, '
                '"expires" timestamp with time zone NOT NULL)'
            )

    def settings(self, name="postgres"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
        }

    def start(self, keep_port=False):
        for _attempt in range(5):
            command = [
                os.path.join(self.bindir, "postgres"), "-D", self.datadir, "-p", str(self.port),
                "-k", self.socketdir, "-c", "listen_addresses=127.0.0.1", *self._tuning, *self._tls_args,
            ]
            self.log = open(os.path.join(self.tempdir, "server.log"), "ab")
            self.process = subprocess.Popen(
                self._as_server_user(command), stdout=self.log, stderr=self.log, start_new_session=True
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.process.poll() is None:
                ready = subprocess.run(
                    [os.path.join(self.bindir, "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                )
                if ready.returncode == 0:
                    return
                time.sleep(0.05)
            self.kill()
            if not keep_port:
                self.port = free_port()
        with open(os.path.join(self.tempdir, "server.log")) as log:
            tail = log.read()[-2000:]
        raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{tail}")

    def _signal(self, signum):
        """Signal the postmaster (runuser's child when running as root)."""
        if self.process is None or self.process.poll() is not None:
            return
        pid_file = os.path.join(self.datadir, "postmaster.pid")
        try:
            with open(pid_file) as pids:
                os.kill(int(pids.readline()), signum)
        except (OSError, ValueError):
            os.kill(self.process.pid, signum)

    def _cluster(self):
        """The postmaster's pid and its children's (the sessions')."""
        with open(os.path.join(self.datadir, "postmaster.pid")) as pids:
            postmaster = int(pids.readline())
        children = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    # The field after the parenthesised name: state, then ppid.
                    if int(stat.read().rpartition(")")[2].split()[1]) == postmaster:
                        children.append(int(entry))
            except (OSError, ValueError):
                continue
        return [postmaster, *children]

    def pause(self):
        """SIGSTOP to every process of the server: connections stay open,
        new ones are accepted by the kernel, nothing is ever answered."""
        # The postmaster first, so that it forks no new session afterwards;
        # then its children, listed again once it is stopped. A child may
        # exit between the listing and its signal (a finished session or
        # autovacuum worker): nothing to stop then.
        postmaster, *_ = self._cluster()
        os.kill(postmaster, signal.SIGSTOP)
        for pid in self._cluster()[1:]:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass

    def resume(self):
        # runuser (when running as root) stops itself when its child stops,
        # and must be woken too.
        for pid in [*self._cluster(), self.process.pid]:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def stop(self, mode="fast"):
        """Stop the server: "fast" (SIGINT) or "immediate" (SIGQUIT, a crash)."""
        if self.process is None or self.process.poll() is not None:
            return
        self._signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGKILL)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, mode="fast"):
        self.stop(mode)
        self.start(keep_port=True)

    def close(self):
        self.stop()
        shutil.rmtree(self.tempdir, ignore_errors=True)
