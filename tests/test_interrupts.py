"""A thread interrupted inside a cache call (KeyboardInterrupt, SystemExit)
never leaves a pooled connection checked out or a lock held: with pools
of one connection, the next call still works at once."""

import ctypes
import signal
import threading
import time
import uuid

import pytest
from support.servers import Redis

from racefree.backends.db import DatabaseCache
from racefree.backends.filebased import FileBasedCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache


def raise_in_thread(thread, exception):
    """Deliver ``exception`` asynchronously to ``thread`` (raised when it
    next runs Python, e.g. when a Rust call returns to it)."""
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exception))
    assert changed == 1


@pytest.fixture(params=["memcached", "redis"])
def server(request):
    """A memcached or Redis server of the test's own, which it freezes."""
    return request.getfixturevalue(f"fresh_{request.param}")


def single_connection_cache(server):
    backend = RedisCache if isinstance(server, Redis) else MemcachedCache
    return backend(server.location, {
        "KEY_PREFIX": uuid.uuid4().hex[:8],
        "OPTIONS": {"POOL_SIZE": 1, "MAX_CONNECTIONS": 1, "IO_TIMEOUT": 2.0, "CONNECT_TIMEOUT": 0.5},
    })


def test_keyboard_interrupt_during_a_server_call_returns_its_connection(server):
    cache = single_connection_cache(server)
    cache.set("k", "before")
    server.pause()  # the next call waits for a reply

    def interrupt_then_resume():
        time.sleep(0.3)
        signal.raise_signal(signal.SIGINT)  # Python raises it in the main thread
        time.sleep(0.2)
        server.resume()

    helper = threading.Thread(target=interrupt_then_resume)
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            cache.get("k")
            time.sleep(5)  # (only if the call itself returned before the signal)
    finally:
        helper.join()
        server.resume()
    started = time.monotonic()
    cache.set("k", "after")  # would wait for the only connection, then fail
    assert cache.get("k") == "after"
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("exception", [SystemExit, KeyboardInterrupt])
def test_async_exception_in_a_thread_inside_a_server_call(server, exception):
    cache = single_connection_cache(server)
    cache.set("k", 1)
    server.pause()
    caught = []

    def worker():
        try:
            cache.incr("k")
            time.sleep(5)
        except BaseException as error:  # noqa: BLE001 - what we check
            caught.append(type(error))

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.3)
    raise_in_thread(thread, exception)
    time.sleep(0.2)
    server.resume()
    thread.join(10)
    assert caught == [exception]
    started = time.monotonic()
    value = cache.incr("k")
    assert value in (2, 3)  # the interrupted incr either happened or not
    assert time.monotonic() - started < 0.5


@pytest.fixture(params=["memcached", "redis", "postgres"])
def frozen_store(request):
    """(a server of the test's own, which it freezes, and a racefree cache on it)."""
    server = request.getfixturevalue(f"fresh_{request.param}")
    if request.param == "postgres":
        server.create_cache_table()
        return server, DatabaseCache("cache", {"OPTIONS": {
            "DSN": server.dsn, "IO_TIMEOUT": 6.0, "STATEMENT_TIMEOUT": 5.0, "MAX_ENTRIES": 1_000_000}})
    backend = RedisCache if isinstance(server, Redis) else MemcachedCache
    return server, backend(server.location, {"KEY_PREFIX": uuid.uuid4().hex[:8], "OPTIONS": {"IO_TIMEOUT": 5.0}})


def test_signals_during_calls_waiting_for_replies_fail_nothing(frozen_store, caplog):
    # A caught signal cuts short a blocking wait on a socket that has a
    # timeout, even with SA_RESTART (signal(7)); a Python handler that
    # returns (a reload, a log rotation, a profiler's tick) must not fail
    # the calls that were waiting, nor count as the server failing. Four
    # threads wait on a frozen server for 0.6 s while each is signalled
    # every 10 ms; another four keep calling on the live server meanwhile.
    server, cache = frozen_store
    for n in range(8):
        cache.set(f"k{n}", n)
    errors_before = cache.stats()["errors"]
    caught = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: caught.append(number))
    read, failed = [], []

    def reader(n, rounds):
        try:
            for _ in range(rounds):
                read.append((n, cache.get(f"k{n}")))
        except Exception as error:  # noqa: BLE001 - what we check
            failed.append(error)

    try:
        server.pause()
        waiting = [threading.Thread(target=reader, args=(n, 1)) for n in range(4)]
        for thread in waiting:
            thread.start()
        time.sleep(0.05)
        started = time.monotonic()
        while time.monotonic() - started < 0.6:
            for thread in waiting:
                signal.pthread_kill(thread.ident, signal.SIGUSR1)
            time.sleep(0.01)
        server.resume()
        busy = [threading.Thread(target=reader, args=(n, 300)) for n in range(4, 8)]
        for thread in busy:
            thread.start()
        while any(thread.is_alive() for thread in busy):
            for thread in busy:
                if thread.is_alive():
                    signal.pthread_kill(thread.ident, signal.SIGUSR1)
            time.sleep(0.001)
        for thread in waiting + busy:
            thread.join(10)
    finally:
        server.resume()
        signal.signal(signal.SIGUSR1, previous)
    assert failed == []
    assert sorted(set(read)) == [(n, n) for n in range(8)] and len(read) == 4 + 4 * 300
    assert len(caught) > 100, "the signals were delivered"
    assert cache.stats()["errors"] == errors_before
    assert not [r for r in caplog.records if r.name == "racefree"], "no server failure logged"


def test_interrupt_inside_a_pg_transaction_rolls_back_and_frees_the_connection(table):
    cache = DatabaseCache(table, {"OPTIONS": {"POOL_SIZE": 1, "CONNECT_TIMEOUT": 1, "MAX_ENTRIES": 1_000_000}})
    cache.set("n", 10)
    key = cache._key("n", None)

    def interrupted(data):
        raise KeyboardInterrupt  # Python code run inside the incr transaction

    with pytest.raises(KeyboardInterrupt):
        cache._store.update(key, interrupted)
    started = time.monotonic()
    assert cache.incr("n") == 11  # row and advisory locks were released
    assert time.monotonic() - started < 0.5


def test_async_exception_in_a_thread_incrementing_files_leaves_no_lock(tmp_path):
    cache = FileBasedCache(str(tmp_path), {"OPTIONS": {"LOCK_TIMEOUT": 5.0}})
    cache.set("n", 0)
    caught = []
    stop = threading.Event()
    counted = [0] * 4

    def worker(index):
        try:
            while not stop.is_set():
                cache.incr("n")
                counted[index] += 1
        except BaseException as error:  # noqa: BLE001
            caught.append(type(error))

    busy = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in busy:
        thread.start()
    time.sleep(0.1)
    raise_in_thread(busy[0], SystemExit)
    time.sleep(0.1)
    stop.set()
    for thread in busy:
        thread.join(60)
    assert caught == [SystemExit]
    # Exact but for the interrupted thread's last increment, which may have
    # been applied before the exception stopped it from being counted.
    assert sum(counted) <= cache.get("n") <= sum(counted) + 1
    # Every lock was released: a round of increments completes at once.
    started = time.monotonic()
    before = cache.get("n")
    for _ in range(100):
        cache.incr("n")
    assert cache.get("n") == before + 100
    assert time.monotonic() - started < 2
