"""racefree's memcached backend against real memcached processes:
interop with Django's PyMemcacheCache, races, faults, options, bad input."""

import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time

import pytest
from django.core.cache import CacheKeyWarning, InvalidCacheKey, caches
from django.core.cache.backends.memcached import PyMemcacheCache
from django.core.exceptions import ImproperlyConfigured
from django.http import JsonResponse
from django.test import override_settings
from support.load import load_threads, run_processes, run_threads
from support.proxy import full_unix_listener
from support.secure_memcached import SecureMemcached
from support.servers import Memcached

from racefree.backends.memcached import MemcachedCache
from racefree.exceptions import CacheError, ValueTooLargeError

STRESS_SECONDS = float(os.environ.get("RACEFREE_STRESS_SECONDS", "10"))

BACKEND = "racefree.backends.memcached.MemcachedCache"


def racefree(location, **options):
    return MemcachedCache(location, {"OPTIONS": options} if options else {})


def stock(location):
    return PyMemcacheCache(location, {})


# -- Interop with Django's PyMemcacheCache on the same cluster ---------------

INTEROP_VALUES = {
    "str": "Iñtërnâtiônàlizætiøn",
    "bytes": b"\x00\x01binary\xff",
    "int": 42,
    "big_int": 2**70,
    "negative": -7,
    "dict": {"a": [1, 2, (3, 4)], "b": None},
    "bool": True,
}


def test_stock_reads_what_racefree_wrote(memcached_cluster):
    location = [server.location for server in memcached_cluster]
    ours, theirs = racefree(location), stock(location)
    ours.clear()
    for i in range(60):
        for name, value in INTEROP_VALUES.items():
            ours.set(f"{name}:{i}", value)
    for i in range(60):
        for name, value in INTEROP_VALUES.items():
            assert theirs.get(f"{name}:{i}", "MISSING") == value
    keys = [f"{name}:{i}" for i in range(60) for name in INTEROP_VALUES]
    assert theirs.get_many(keys) == ours.get_many(keys)
    # Every server holds some of the keys: the mapping really is shared.
    assert all(server.stats()["curr_items"] > 0 for server in memcached_cluster)


def test_racefree_reads_what_stock_wrote(memcached_cluster):
    location = [server.location for server in memcached_cluster]
    ours, theirs = racefree(location), stock(location)
    theirs.clear()
    for i in range(60):
        theirs.set_many({f"{name}:{i}": value for name, value in INTEROP_VALUES.items()})
    for i in range(60):
        for name, value in INTEROP_VALUES.items():
            assert ours.get(f"{name}:{i}", "MISSING") == value


def test_incr_is_shared_with_stock(memcached_cluster):
    location = [server.location for server in memcached_cluster]
    ours, theirs = racefree(location), stock(location)
    for i in range(30):
        theirs.set(f"counter{i}", 10)
        assert ours.incr(f"counter{i}", 5) == 15
        assert theirs.incr(f"counter{i}") == 16
        assert ours.decr(f"counter{i}", 6) == 10
        assert theirs.get(f"counter{i}") == ours.get(f"counter{i}") == 10


def test_routing_matches_pymemcache_hashclient(memcached_cluster):
    from pymemcache.client.hash import HashClient

    location = [server.location for server in memcached_cluster]
    ours = racefree(location)
    hash_client = HashClient(location)
    names = ours._client.servers
    for i in range(300):
        key = f":1:key-{i}-ünï"
        expected = hash_client.hasher.get_node(key)
        assert names[ours._client.server_index(key)] == expected


# -- Races --------------------------------------------------------------------


@pytest.mark.cross_version
def test_one_shared_instance_never_returns_another_keys_value(memcached):
    """Seed 1: the cache middleware keeps one backend for every thread."""
    cache = racefree(memcached.location)
    response = JsonResponse({"cached": "response"})
    cache.set("views.decorators.cache.cache_page", response)
    mismatches, calls = [], [0] * 32
    deadline = time.monotonic() + STRESS_SECONDS

    def request_loop(index):
        n = 0
        while time.monotonic() < deadline:
            key = f"test-{index}-{n % 50}"
            value = cache.get(key)
            if value is None:
                cache.set(key, key)
            elif value != key:
                mismatches.append((key, value))
            if n % 10 == 0:
                cache.get("views.decorators.cache.cache_page")
            n += 1
        calls[index] = n

    errors = run_threads(32, request_loop)
    assert errors == []
    assert mismatches == []
    assert sum(calls) > 32 * 100


@pytest.mark.cross_version
def test_threaded_increments_are_exact(memcached):
    cache = racefree(memcached.location)
    cache.set("hits", 0)
    errors = run_threads(8, lambda _: [cache.incr("hits") for _ in range(1000)])
    assert errors == []
    assert cache.get("hits") == 8000


def _incr_in_process(location, count):
    cache = racefree(location)
    for _ in range(count):
        cache.incr("process-hits")


@pytest.mark.cross_version
def test_increments_from_several_processes_are_exact(memcached):
    cache = racefree(memcached.location)
    cache.set("process-hits", 0)
    assert run_processes(_incr_in_process, [(memcached.location, 500)] * 4) == [0] * 4
    assert cache.get("process-hits") == 2000


@pytest.mark.cross_version
def test_add_has_exactly_one_winner_per_key(memcached):
    cache = racefree(memcached.location)
    wins = []

    def contend(index):
        for key in range(200):
            if cache.add(f"claim-{key}", index):
                wins.append((key, index))

    assert run_threads(16, contend) == []
    assert sorted(key for key, _ in wins) == list(range(200))
    for key, winner in wins:
        assert cache.get(f"claim-{key}") == winner


@pytest.mark.cross_version
def test_a_timed_out_call_never_hands_its_reply_to_a_later_call(fresh_memcached):
    """The reply to a timed-out request arrives later on its socket; it
    must never be read as the answer to another request."""
    cache = racefree(fresh_memcached.location, IO_TIMEOUT=0.05, CONNECT_TIMEOUT=0.5)
    mismatches, failures, answers = [], [0], [0]

    def load(index, stop):
        n = 0
        while not stop.is_set():
            key = f"k{index}-{n % 20}"
            try:
                cache.set(key, key)
                value = cache.get(key)
                if value is not None and value != key:
                    mismatches.append((key, value))
                values = cache.get_many([key, f"k{index}-{(n + 1) % 20}"])
                for got_key, got in values.items():
                    if got != got_key:
                        mismatches.append((got_key, got))
                answers[0] += 1
            except CacheError:
                failures[0] += 1
            n += 1

    with load_threads(8, load):
        for _ in range(10):
            time.sleep(0.1)
            fresh_memcached.pause()
            time.sleep(0.15)
            fresh_memcached.resume()
    assert mismatches == []
    assert failures[0] > 0, "the server freezes must have caused timeouts"
    assert answers[0] > 0


def _child_uses_cache(queue):
    # Forked while the parent's threads used (and dialed, and over TLS
    # handshook) pooled connections: none of them may be reused here.
    cache = caches_for_child[0]
    bad = 0
    for i in range(300):
        key = f"child-{os.getpid()}-{i % 10}"
        cache.set(key, key)
        if cache.get(key) != key:
            bad += 1
    queue.put(bad)


caches_for_child = []


def test_forked_children_do_not_share_the_parents_connections(own_memcached):
    server, options = own_memcached
    cache = racefree(server.location, **options)
    caches_for_child[:] = [cache]
    for i in range(50):
        cache.set(f"parent-{i}", i)
    assert cache._client.idle_connections()[0] >= 1
    parent_bad = []

    def load(index, stop):
        n = 0
        while not stop.is_set():
            if n % 20 == 0:
                # New connections too: dials and handshakes while the children fork.
                cache._client.close_idle()
            key = f"parent-{n % 50}"
            if cache.get(key) != n % 50:
                parent_bad.append(key)
            n += 1

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with load_threads(4, load):
        children = [context.Process(target=_child_uses_cache, args=(queue,)) for _ in range(4)]
        for child in children:
            child.start()
        results = [queue.get(timeout=60) for _ in children]
        for child in children:
            child.join(60)
            assert child.exitcode == 0
    assert results == [0, 0, 0, 0]
    assert parent_bad == []


def test_children_forked_while_parent_threads_use_the_pool_never_hang(memcached):
    """A fork can land while a parent thread holds a pool's lock; the
    child must never wait on it (it builds pools of its own)."""
    cache = racefree(memcached.location)
    stop = threading.Event()

    def hammer(index):
        n = 0
        while not stop.is_set():
            cache.set(f"busy-{index}", n)
            cache.get_many([f"busy-{index}", "busy-x"])
            n += 1

    loaders = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for loader in loaders:
        loader.start()
    hung = []
    try:
        for i in range(60):
            pid = os.fork()
            if pid == 0:  # child: one exchange, then leave at once
                code = 1
                try:
                    key = f"forked-{os.getpid()}"
                    cache.set(key, key)
                    code = 0 if cache.get(key) == key else 3
                finally:
                    os._exit(code)
            deadline = time.monotonic() + 10
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert os.waitstatus_to_exitcode(status) == 0
                    break
                if time.monotonic() > deadline:
                    hung.append(i)
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
    finally:
        stop.set()
        for loader in loaders:
            loader.join()
    assert hung == []


# -- Faults ---------------------------------------------------------------------


def test_killed_server_fails_within_the_timeout_and_recovers(fresh_memcached):
    cache = racefree(fresh_memcached.location, CONNECT_TIMEOUT=0.5, IO_TIMEOUT=0.5)
    cache.set("k", "v")
    fresh_memcached.kill()
    for operation in (lambda: cache.get("k"), lambda: cache.set("k", 1), lambda: cache.incr("k")):
        started = time.monotonic()
        with pytest.raises(CacheError):
            operation()
        assert time.monotonic() - started < 1.0
    fresh_memcached.restart()
    started = time.monotonic()
    cache.set("k", "again")
    assert cache.get("k") == "again"
    assert time.monotonic() - started < 1.0


@pytest.fixture(params=["plain", "tls"])
def own_memcached(request):
    """A memcached of the test's own and the OPTIONS that reach it: plain
    text, or TLS with a login (certificate and name checked)."""
    if request.param == "plain":
        server = Memcached()
        yield server, {}
        server.close()
    else:
        secure = SecureMemcached()
        yield secure.server, secure.options()
        secure.close()


@pytest.mark.cross_version
def test_server_killed_during_load_fails_fast_then_recovers(own_memcached):
    fresh_memcached, options = own_memcached
    cache = racefree(fresh_memcached.location, **options, CONNECT_TIMEOUT=0.5, IO_TIMEOUT=0.5)
    restarted_at = []
    mismatches, failure_durations, recovered_after = [], [], []

    def load(index, stop):
        n = 0
        while not stop.is_set():
            key = f"k{index}-{n % 10}"
            n += 1
            for call in (lambda: cache.set(key, key), lambda: cache.get(key)):
                started = time.monotonic()
                try:
                    value = call()
                except CacheError:
                    failure_durations.append(time.monotonic() - started)
                    continue
                if value not in (None, key):
                    mismatches.append((key, value))
                if restarted_at and not recovered_after:
                    recovered_after.append(time.monotonic() - restarted_at[0])

    with load_threads(8, load):
        time.sleep(0.5)
        fresh_memcached.kill()
        time.sleep(1.0)
        fresh_memcached.restart()
        restarted_at.append(time.monotonic())
        time.sleep(1.5)
    slowest = max(failure_durations, default=0)
    print(f"\nmemcached kill -9: {len(failure_durations)} failed calls (slowest {slowest:.3f} s), "
          f"{len(mismatches)} mismatches, recovered {recovered_after[:1]} s after the restart")
    assert mismatches == []
    assert len(failure_durations) > 10, "calls during the outage must fail"
    assert max(failure_durations) < 1.0, "each failure within the timeout"
    assert recovered_after and recovered_after[0] < 1.0, "the same backend recovers after the restart"


def test_frozen_server_times_out(fresh_memcached):
    cache = racefree(fresh_memcached.location, IO_TIMEOUT=0.2)
    cache.set("k", "v")
    fresh_memcached.pause()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            cache.get("k")
        assert 0.15 < time.monotonic() - started < 1.0
    finally:
        fresh_memcached.resume()
    assert cache.get("k") == "v"


class FakeServer:
    """A listener on loopback that answers each connection's first request
    with ``reply(connection, header)`` (a real memcached cannot misbehave on
    cue); ``header(size)`` is the meta protocol's value line answering the
    request's first ``mg``, opaque token included."""

    def __init__(self, reply):
        import socket

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.location = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection):
        with connection:
            try:
                request = connection.recv(65536).split(b"\r\n")[0].split()
                opaque = next((token for token in request if token.startswith(b"O")), b"")
                self.reply(connection, lambda size: b"VA %d f0 %s\r\n" % (size, opaque))
            except OSError:
                pass

    def close(self):
        self.listener.close()


def test_a_trickling_server_cannot_stretch_a_call_past_io_timeout():
    """One byte every 0.2 s: each read gets data well within IO_TIMEOUT,
    but the whole reply may not take longer than IO_TIMEOUT."""

    def trickle(connection, header):
        connection.sendall(header(100))
        for _ in range(102):
            time.sleep(0.2)
            connection.sendall(b"x")

    server = FakeServer(trickle)
    try:
        cache = racefree(server.location, IO_TIMEOUT=1.0)
        for call in (lambda: cache.get("k"), lambda: cache.get_many(["k"])):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                call()
            took = time.monotonic() - started
            print(f"\ntrickled reply given up after {took:.2f} s")
            assert took < 1.5
    finally:
        server.close()


def test_an_announced_size_is_not_allocated_before_it_arrives(tmp_path):
    """A reply announcing a 1 GiB value, then closing: with 512 MiB of
    address space to spare the get fails cleanly instead of the allocation
    aborting the interpreter."""
    import subprocess
    import sys

    def huge(connection, header):
        connection.sendall(header(1 << 30) + b"x" * 1000)

    server = FakeServer(huge)
    child = f"""
import resource, sys
import django
from django.conf import settings
settings.configure()
django.setup()
from racefree.backends.memcached import MemcachedCache
cache = MemcachedCache({server.location!r}, {{}})
in_use = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (in_use + 512 * 1024 * 1024,) * 2)
try:
    cache.get("k")
except Exception as error:
    print(type(error).__name__)
"""
    try:
        result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "CacheConnectionError", result.stdout + result.stderr[-2000:]


# -- Combined gets ---------------------------------------------------------------


def combined_count(cache):
    (server,) = cache.stats()["servers"].values()
    return server["combined"]


def test_combined_gets_hand_every_caller_its_own_value(memcached):
    """16 threads share one instance; gets to one server that arrive
    together ride one pipelined round trip. Values from 0 B to 200 KB and
    misses interleave in those pipelines: each caller gets exactly its own
    key's value, and some gets did ride along."""
    cache = racefree(memcached.location, COMBINE_GETS=True)
    sizes = [0, 1, 100, 4_000, 70_000, 200_000]
    values = {f"combined-{n}": f"combined-{n}:" + "v" * sizes[n % len(sizes)] for n in range(60)}
    cache.set_many(values)
    before = combined_count(cache)
    mismatches, calls = [], [0] * 16
    deadline = time.monotonic() + 2.0

    def load(index):
        n = index
        while time.monotonic() < deadline:
            n += 7
            key = f"combined-{n % 70}"  # 60..69 were never set: misses
            got = cache.get(key)
            if got != values.get(key):
                mismatches.append((key, repr(got)[:40]))
            calls[index] += 1

    assert run_threads(16, load) == []
    assert mismatches == []
    ridden = combined_count(cache) - before
    assert 0 < ridden < sum(calls), (ridden, sum(calls))
    # Alone, nothing rides along.
    for key in list(values)[:20]:
        assert cache.get(key) == values[key]
    assert combined_count(cache) == before + ridden


def test_combining_is_off_unless_asked_for(memcached):
    for cache in (racefree(memcached.location), racefree(memcached.location, COMBINE_GETS=False)):
        cache.set("k", "v")
        assert run_threads(8, lambda index: [cache.get("k") for _ in range(300)]) == []
        assert combined_count(cache) == 0


def test_a_frozen_server_fails_every_queued_get_within_one_timeout(fresh_memcached):
    """Gets queued behind a round trip that times out fail with it instead
    of trying again one after another, so no get waits much longer than
    IO_TIMEOUT (without that, up to twice as long)."""
    timeout = 0.4
    cache = racefree(fresh_memcached.location, IO_TIMEOUT=timeout, COMBINE_GETS=True)
    cache.set("k", "v")
    durations, outcomes = [], []
    fresh_memcached.pause()
    try:
        def load(index):
            for _ in range(3):
                started = time.monotonic()
                try:
                    outcomes.append(cache.get("k"))
                except TimeoutError:
                    outcomes.append("timeout")
                durations.append(time.monotonic() - started)

        assert run_threads(8, load) == []
    finally:
        fresh_memcached.resume()
    assert outcomes == ["timeout"] * 24
    assert max(durations) < timeout * 1.75, sorted(durations)[-5:]
    assert cache.get("k") == "v"


def test_ignore_exceptions_reads_a_down_server_as_a_miss(fresh_memcached, caplog):
    cache = racefree(fresh_memcached.location, IGNORE_EXCEPTIONS=True, CONNECT_TIMEOUT=0.5)
    cache.set("k", "v")
    fresh_memcached.kill()
    with caplog.at_level(logging.WARNING, logger="racefree"):
        assert cache.get("k", "default") == "default"
        assert cache.get_many(["k", "j"]) == {}
        assert cache.set("k", "v") is None
        assert cache.add("k", "v") is False
        assert cache.has_key("k") is False
        assert cache.touch("k") is False
        assert cache.delete("k") is False
        assert cache.set_many({"a": 1, "b": 2}) == ["a", "b"]
        cache.delete_many(["a", "b"])
        cache.clear()
        with pytest.raises(ValueError):
            cache.incr("k")
    assert len([r for r in caplog.records if r.name == "racefree"]) >= 10
    # Bad input is never ignored.
    with pytest.raises(InvalidCacheKey):
        cache.get("a key")
    fresh_memcached.restart()
    cache.set("k", "back")
    assert cache.get("k") == "back"


def test_a_down_server_affects_only_its_own_keys(memcached_cluster):
    extra = [type(memcached_cluster[0])() for _ in range(2)]
    try:
        location = [server.location for server in extra] + [memcached_cluster[0].location]
        cache = racefree(location, IGNORE_EXCEPTIONS=True, CONNECT_TIMEOUT=0.5)
        keys = [f"spread{i}" for i in range(60)]
        cache.set_many({key: key for key in keys})
        extra[0].kill()
        owner = {key: cache._client.server_index(cache.make_key(key)) for key in keys}
        found = cache.get_many(keys)
        assert found == {key: key for key in keys if owner[key] != 0}
        assert 0 < len(found) < len(keys)
        strict = racefree(location, CONNECT_TIMEOUT=0.5)
        with pytest.raises(CacheError) as raised:
            strict.get_many(keys)
        assert sorted(raised.value.failed_keys) == sorted(strict.make_key(k) for k in keys if owner[k] == 0)
    finally:
        for server in extra:
            server.stop()


# -- Pools ------------------------------------------------------------------------


def test_every_instance_and_thread_shares_one_pool(memcached):
    params = {"BACKEND": BACKEND, "LOCATION": memcached.location}
    with override_settings(CACHES={"default": params, "other": {**params, "OPTIONS": {"IO_TIMEOUT": 2}}}):
        seen = []
        run_threads(4, lambda _: seen.append((caches["default"], caches["default"]._client)))
        assert len({id(backend) for backend, _ in seen}) == 4, "Django gives each thread its own backend"
        assert len({id(client) for _, client in seen}) == 1
        assert caches["other"]._client is not caches["default"]._client


def test_requests_reuse_connections(memcached):
    from django.core import signals

    params = {"BACKEND": BACKEND, "LOCATION": memcached.location}
    with override_settings(CACHES={"default": params}):
        caches["default"].set("warm", 1)
        before = memcached.stats()["total_connections"]

        def requests(index):
            for n in range(100):
                cache = caches["default"]
                cache.get("warm")
                cache.set(f"t{index}", n)
                signals.request_finished.send(sender=None)

        assert run_threads(4, requests) == []
        # At most one connection per thread, plus the stats connection.
        assert memcached.stats()["total_connections"] - before <= 5


def test_max_connections_caps_the_pool(memcached):
    cache = racefree(memcached.location, MAX_CONNECTIONS=2, POOL_SIZE=2)
    before = memcached.stats()["curr_connections"]
    errors = run_threads(8, lambda i: [cache.set(f"cap{i}", n) for n in range(200)])
    assert errors == []
    assert max(cache._client.idle_connections()) <= 2
    assert memcached.stats()["curr_connections"] - before <= 2 + 1


def test_unix_socket_location():
    from support.servers import Memcached

    server = Memcached(unix_socket=True)
    try:
        cache = racefree(server.location)
        cache.set("k", {"over": "unix"})
        assert cache.get("k") == {"over": "unix"}
        assert racefree(server.socket_path).get("k") == {"over": "unix"}
    finally:
        server.stop()


def test_a_unix_socket_that_accepts_nothing_fails_within_connect_timeout(tmp_path):
    """A listener whose backlog is full (a server that stopped accepting):
    a blocking connect would wait for ever."""
    with full_unix_listener(str(tmp_path / "full.sock")) as path:
        cache = racefree(f"unix:{path}", CONNECT_TIMEOUT=0.5)
        started = time.monotonic()
        with pytest.raises(CacheError):
            cache.get("k")
        took = time.monotonic() - started
        assert 0.4 < took < 1.5, took


@pytest.mark.parametrize("separator", [";", ","])
def test_location_lists(memcached_cluster, separator):
    locations = [server.location for server in memcached_cluster]
    cache = racefree(separator.join(locations))
    assert cache._servers == locations
    cache.set_many({f"k{i}": i for i in range(30)})
    assert racefree(locations).get_many([f"k{i}" for i in range(30)]) == {f"k{i}": i for i in range(30)}


# -- Options ------------------------------------------------------------------------


def test_options_are_checked_at_startup(memcached):
    location = memcached.location
    with pytest.raises(ImproperlyConfigured, match="unknown OPTIONS\\['SERVERS'\\]"):
        racefree(location, SERVERS=1)
    with pytest.raises(ImproperlyConfigured, match="MAX_ENTRIES.*not supported"):
        racefree(location, MAX_ENTRIES=10)
    for bad in ("1", 0, -1, float("nan"), float("inf"), 1e300, True):
        with pytest.raises(ImproperlyConfigured, match="IO_TIMEOUT.*number of seconds"):
            racefree(location, IO_TIMEOUT=bad)
    with pytest.raises(ImproperlyConfigured, match="SPIN_WAIT"):
        racefree(location, SPIN_WAIT=-1)
    with pytest.raises(ImproperlyConfigured, match="POOL_SIZE"):
        racefree(location, POOL_SIZE=-1)
    with pytest.raises(ImproperlyConfigured, match="IGNORE_EXCEPTIONS"):
        racefree(location, IGNORE_EXCEPTIONS="yes")
    with pytest.raises(ImproperlyConfigured, match="set the same option"):
        racefree(location, timeout=1, IO_TIMEOUT=1)
    with pytest.raises(ImproperlyConfigured, match="PICKLE_PROTOCOL"):
        racefree(location, PICKLE_PROTOCOL=99)
    with pytest.raises(ImproperlyConfigured, match="use_pooling"):
        racefree(location, use_pooling=False)
    with pytest.raises(ImproperlyConfigured, match="bad port"):
        racefree("127.0.0.1:notaport")
    with pytest.raises(ImproperlyConfigured, match="OPTIONS must be a dict"):
        MemcachedCache(location, {"OPTIONS": [1]})


def test_pymemcache_option_spellings_are_accepted(memcached):
    cache = racefree(
        memcached.location, connect_timeout=0.5, timeout=0.5, ignore_exc=True, max_pool_size=4, no_delay=True
    )
    assert cache._options["IO_TIMEOUT"] == 0.5
    assert cache._options["IGNORE_EXCEPTIONS"] is True
    cache.set("k", "v")
    assert cache.get("k") == "v"


def test_pickle_protocol_option(memcached):
    cache = racefree(memcached.location, PICKLE_PROTOCOL=2)
    cache.set("k", {"a": 1})
    item = cache._client.get(cache.make_key("k"))
    assert item[1][:2] == b"\x80\x02"


# -- Bad input ------------------------------------------------------------------------


BAD_KEYS = {
    "empty": "",
    "251-bytes": "a" * 251,
    "space": "with space",
    "crlf": "crlf\r\nflush_all",
    "nul": "nul\0",
    "tab": "tab\t",
    "del": "del\x7f",
    "200-chars-400-bytes": "é" * 200,
}


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_invalid_keys_raise_and_never_reach_the_server(memcached, key):
    cache = MemcachedCache(memcached.location, {"KEY_FUNCTION": lambda key, prefix, version: key})
    stock_like = stock(memcached.location)
    before = memcached.stats()
    operations = [
        ("get", (key,)), ("set", (key, 1)), ("add", (key, 1)), ("delete", (key,)), ("touch", (key,)),
        ("incr", (key,)), ("has_key", (key,)), ("get_many", ([key, "ok"],)),
        ("set_many", ({key: 1, "ok": 2},)), ("delete_many", ([key, "ok"],)),
    ]
    for name, args in operations:
        with pytest.raises(InvalidCacheKey):
            getattr(cache, name)(*args)
    after = memcached.stats()
    for stat in ("cmd_get", "cmd_set", "cmd_touch", "delete_misses", "delete_hits", "incr_misses", "total_items"):
        assert after[stat] == before[stat], stat
    # The message is the one Django's own memcached backends give.
    try:
        stock_like.validate_key(key)
    except InvalidCacheKey as exc:
        with pytest.raises(InvalidCacheKey, match=None) as ours:
            cache.get(key)
        assert str(ours.value) == str(exc)


def test_other_backends_only_warn_where_ours_raises(memcached):
    # Sanity check of the contract: Django's non-memcached backends warn.
    from django.core.cache.backends.locmem import LocMemCache

    with pytest.warns(CacheKeyWarning):
        LocMemCache("x", {}).set("with space", 1)
    with pytest.raises(InvalidCacheKey):
        racefree(memcached.location).set("with space", 1)


def test_unpicklable_value_raises_and_stores_nothing(memcached):
    cache = racefree(memcached.location)
    cache.set("k", "old")
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        cache.set("k", lambda: None)
    assert cache.get("k") == "old"


def test_too_large_value_raises_and_old_value_is_gone(memcached):
    cache = racefree(memcached.location)
    cache.set("k", "old")
    with pytest.raises(ValueTooLargeError, match="larger than the item size limit"):
        cache.set("k", b"x" * (2 * 1024 * 1024))
    assert cache.get("k") is None
    with pytest.raises(ValueTooLargeError):
        cache.add("k", b"x" * (2 * 1024 * 1024))


class _LoadsBadly:
    def __reduce__(self):
        return (_raise_on_load, ())


def _raise_on_load():
    raise RuntimeError("cannot load")


def test_value_that_fails_to_load_reads_as_a_miss(memcached, caplog):
    cache = racefree(memcached.location)
    cache.set("poisoned", _LoadsBadly())
    with caplog.at_level(logging.WARNING, logger="racefree"):
        assert cache.get("poisoned", "default") == "default"
        assert cache.get_many(["poisoned"]) == {}
    assert "cannot load" in caplog.text


def test_incr_semantics(memcached):
    cache = racefree(memcached.location)
    with pytest.raises(ValueError, match="not found"):
        cache.incr("absent")
    assert cache.get("absent") is None, "incr must not create a missing key"
    cache.set("n", 5)
    assert cache.incr("n", -3) == 2
    assert cache.decr("n", 5) == 0, "memcached stops decrementing at 0"
    cache.set("text", "abc")
    with pytest.raises(TypeError):
        cache.incr("text")
    with pytest.raises(TypeError):
        cache.incr("n", 1.5)
