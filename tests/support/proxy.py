"""A TCP proxy between a client and a real server, for faults a real server
does not make on cue: replies that never arrive, connections cut after the
server acted; a Unix listener that accepts nothing."""

import contextlib
import socket
import threading


class Proxy:
    """Listens on a free loopback port and forwards to ``127.0.0.1:port``.
    While ``swallow`` is set, the server's bytes are dropped; ``cut()``
    closes every connection so far."""

    def __init__(self, port):
        self.upstream = port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.swallow = threading.Event()
        self._sockets = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source, target, replies):
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if replies and self.swallow.is_set():
                continue
            try:
                target.sendall(data)
            except OSError:
                break
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for end in sockets:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def close(self):
        self.listener.close()
        self.cut()


@contextlib.contextmanager
def full_unix_listener(path):
    """A Unix socket at ``path`` that listens but never accepts, its backlog
    filled: a server that stopped accepting. A blocking connect to it
    would wait for ever."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    waiting = []
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            client.connect(path)
        except BlockingIOError:
            client.close()
            break
        waiting.append(client)
    try:
        yield path
    finally:
        for client in waiting:
            client.close()
        listener.close()
