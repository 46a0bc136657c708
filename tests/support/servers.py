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


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _process_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class Memcached:
    """A memcached process; ``location`` is what goes into LOCATION."""

    def __init__(self, unix_socket=False, memory_mb=64, extra_args=()):
        binary = shutil.which("memcached")
        if binary is None:
            raise ServerMissing("memcached is not installed: run `make test` as root, or `apt-get install memcached`")
        self.binary = binary
        self.memory_mb = memory_mb
        self.extra_args = list(extra_args)
        self.tempdir = tempfile.mkdtemp(prefix="racefree-memcached-")
        self.socket_path = os.path.join(self.tempdir, "memcached.sock") if unix_socket else None
        self.port = None if unix_socket else free_port()
        self.process = None
        self.start()

    @property
    def location(self):
        if self.socket_path:
            return f"unix:{self.socket_path}"
        return f"127.0.0.1:{self.port}"

    def _command(self):
        command = [self.binary, "-U", "0", "-m", str(self.memory_mb), "-t", "2", "-c", "4096"]
        if self.socket_path:
            command += ["-s", self.socket_path, "-a", "0700"]
        else:
            command += ["-l", "127.0.0.1", "-p", str(self.port)]
        if os.geteuid() == 0:
            command += ["-u", "root"]
        return command + self.extra_args

    def _connect(self):
        if self.socket_path:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(1)
            conn.connect(self.socket_path)
            return conn
        return socket.create_connection(("127.0.0.1", self.port), timeout=1)

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

    def start(self, keep_port=False):
        for _attempt in range(5):
            self.process = subprocess.Popen(
                self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    # Ready when the process answering is ours (not a
                    # stranger that took the port first).
                    if self.stats().get("pid") == self.process.pid:
                        return
                except OSError:
                    pass
                time.sleep(0.01)
            self.kill()
            if self.port and not keep_port:
                self.port = free_port()
        raise RuntimeError(f"memcached did not start on {self.location}")

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
        raise RuntimeError("memcached did not change state")

    def kill(self):
        """SIGKILL and reap."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()

    def restart(self):
        self.kill()
        self.start(keep_port=True)

    def stop(self):
        self.kill()
        shutil.rmtree(self.tempdir, ignore_errors=True)
