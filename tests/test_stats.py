"""cache.stats() on every backend: exact counts of hits, misses, sets,
deletes and errors (also from many threads at once), and the pools'
idle and in-use connections, on the real servers."""

import threading
import time
import uuid

import pytest

from racefree.backends.db import DatabaseCache
from racefree.backends.filebased import FileBasedCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache
from racefree.exceptions import CacheError

COUNTERS = ("hits", "misses", "sets", "deletes", "errors")


@pytest.fixture(params=["memcached", "redis", "file", "database"])
def cache(request, memcached, redis_server, tmp_path):
    if request.param == "memcached":
        # Its own OPTIONS, so its own shared client and counters.
        return MemcachedCache(memcached.location, {"OPTIONS": {"POOL_SIZE": 7}, "KEY_PREFIX": uuid.uuid4().hex[:8]})
    if request.param == "redis":
        # Its own client name, so its own shared client and counters.
        return RedisCache(redis_server.location, {"OPTIONS": {"POOL_SIZE": 7, "CLIENT_NAME": uuid.uuid4().hex},
                                                  "KEY_PREFIX": uuid.uuid4().hex[:8]})
    if request.param == "file":
        return FileBasedCache(str(tmp_path), {})
    return DatabaseCache(request.getfixturevalue("table"), {})


def changes(cache, action):
    before = cache.stats()
    action()
    after = cache.stats()
    return {name: after[name] - before[name] for name in COUNTERS}


def test_each_operation_is_counted_once(cache):
    assert changes(cache, lambda: cache.get("absent")) == dict.fromkeys(COUNTERS, 0) | {"misses": 1}
    assert changes(cache, lambda: cache.set("k", "v")) == dict.fromkeys(COUNTERS, 0) | {"sets": 1}
    assert changes(cache, lambda: cache.get("k")) == dict.fromkeys(COUNTERS, 0) | {"hits": 1}
    assert changes(cache, lambda: cache.add("k", "other")) == dict.fromkeys(COUNTERS, 0)
    assert changes(cache, lambda: cache.get_many(["k", "absent"])) == dict.fromkeys(COUNTERS, 0) | {
        "hits": 1,
        "misses": 1,
    }
    assert changes(cache, lambda: cache.set_many({"a": 1, "b": 2})) == dict.fromkeys(COUNTERS, 0) | {"sets": 2}
    assert changes(cache, lambda: cache.delete("k")) == dict.fromkeys(COUNTERS, 0) | {"deletes": 1}
    assert changes(cache, lambda: cache.delete("k")) == dict.fromkeys(COUNTERS, 0)


def test_counts_from_many_threads_are_exact(cache):
    cache.set("shared", 1)

    def work():
        for _ in range(250):
            cache.get("shared")
            cache.get("absent")

    def run():
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    delta = changes(cache, run)
    assert delta["hits"] == delta["misses"] == 8 * 250
    assert delta["errors"] == 0


def test_pools_are_reported(cache):
    cache.set("k", 1)
    stats = cache.stats()
    if isinstance(cache, (MemcachedCache, RedisCache)):
        assert stats["pool_size"] == 7
        (server,) = stats["servers"].values()
        assert server["in_use"] == 0 and server["idle"] >= 1
    elif isinstance(cache, DatabaseCache):
        assert stats["in_use"] == 0 and stats["connections"] == stats["idle"] >= 1
        assert stats["pool_size"] >= 1 and stats["round_trips"] >= 1
    else:
        assert stats["entries"] == 1


@pytest.fixture(params=["memcached", "redis"])
def server_and_class(request):
    """(a server of the test's own it may kill, the racefree backend for it)."""
    if request.param == "memcached":
        return request.getfixturevalue("fresh_memcached"), MemcachedCache
    return request.getfixturevalue("fresh_redis"), RedisCache


def test_in_use_counts_connections_checked_out_now(server_and_class):
    server, backend = server_and_class
    cache = backend(server.location, {"OPTIONS": {"POOL_SIZE": 5}})
    seen = []
    started = threading.Event()
    release = threading.Event()

    def busy():
        started.set()
        while not release.is_set():
            cache.get_many([f"k{i}" for i in range(50)])

    worker = threading.Thread(target=busy)
    worker.start()
    started.wait()
    deadline = time.monotonic() + 10
    while 1 not in seen and time.monotonic() < deadline:
        seen.append(next(iter(cache.stats()["servers"].values()))["in_use"])
        time.sleep(0.0001)  # lets the worker run between samples
    release.set()
    worker.join()
    assert max(seen) == 1, "the worker's connection shows while it is checked out"
    assert next(iter(cache.stats()["servers"].values()))["in_use"] == 0


def test_server_failures_count_as_errors_and_refused_input_does_not(server_and_class):
    server, backend = server_and_class
    cache = backend(server.location, {"OPTIONS": {"IO_TIMEOUT": 0.5, "CONNECT_TIMEOUT": 0.5}})
    from django.core.cache import InvalidCacheKey

    # Counted from here: the store is shared per LOCATION and OPTIONS in
    # the process, and a fresh server may get a port an earlier test's
    # killed server had (with its errors counted).
    errors_before = cache.stats()["errors"]

    if backend is MemcachedCache:
        with pytest.raises(InvalidCacheKey):
            cache.get("bad key")
    else:
        # Redis takes any key (Django only warns): refused input is a value
        # that cannot be pickled, refused before the wire.
        with pytest.raises(TypeError):
            cache.set("k", threading.Lock())
    assert cache.stats()["errors"] == errors_before
    server.kill()
    with pytest.raises(CacheError):
        cache.get("k")
    with pytest.raises(CacheError):
        cache.set("k", 1)
    assert cache.stats()["errors"] == errors_before + 2


def test_a_reconnect_after_a_server_restart_shows_in_connects(server_and_class):
    server, backend = server_and_class
    cache = backend(server.location, {"OPTIONS": {"IO_TIMEOUT": 0.5, "CONNECT_TIMEOUT": 0.5}})

    def connects():
        (server,) = cache.stats()["servers"].values()
        return server["connects"]

    cache.set("k", 1)
    assert cache.get("k") == 1
    assert connects() == 1, "the second call reused the pooled connection"
    server.kill()
    server.restart()
    cache.set("k", 2)
    assert cache.get("k") == 2
    assert connects() == 2, "the dead pooled connection was replaced once"


def test_database_connects_are_counted(table):
    cache = DatabaseCache(table, {})
    cache.set("k", 1)
    stats = cache.stats()
    assert stats["connects"] >= 1 and stats["connects"] >= stats["connections"]
