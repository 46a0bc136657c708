"""racefree's PostgreSQL cache under real threads and processes on a real
server: no IntegrityError, one add winner, exact increments, interop with
Django's DatabaseCache, a restarted server, settings and bad data."""

import asyncio
import logging
import multiprocessing
import threading
import time

import pytest
from django.core.cache import CacheKeyWarning, InvalidCacheKey
from django.core.cache.backends.db import DatabaseCache as StockDatabaseCache
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections
from django.test import override_settings
from support.certs import Authority
from support.load import load_threads, run_threads
from support.servers import Postgres

from racefree.backends.db import DatabaseCache, close_pools
from racefree.exceptions import CacheError

SPAWN = multiprocessing.get_context("spawn")


def dsn_of_test_db():
    settings = connections["default"].settings_dict
    return f"host={settings['HOST']} port={settings['PORT']} user={settings['USER']} dbname={settings['NAME']}"




def racefree(table, **options):
    return DatabaseCache(table, {"OPTIONS": {"MAX_ENTRIES": 1_000_000, **options}})


# -- Races across threads and processes ------------------------------------------------


def _set_and_add(dsn, table, name, keys, threads, results):
    cache = DatabaseCache(table, {"OPTIONS": {"DSN": dsn, "MAX_ENTRIES": 1_000_000}})
    wins, errors = [], []

    def work(index):
        for key in keys:
            try:
                cache.set(f"set-{key}", f"{name}-{index}")
                if cache.add(key, f"{name}-{index}"):
                    wins.append((key, f"{name}-{index}"))
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put((wins, errors))


@pytest.mark.cross_version
def test_fresh_keys_set_and_added_by_threads_and_processes(table):
    """Seed 5: the stock backend's SELECT-then-INSERT raced into
    IntegrityError here; add must have exactly one winner per key."""
    keys = [f"fresh-{i}" for i in range(100)]
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_set_and_add, args=(dsn_of_test_db(), table, f"p{i}", keys, 4, results)) for i in range(4)
    ]
    for process in processes:
        process.start()
    # And 16 threads of this process at the same time.
    local = multiprocessing.Queue()
    _set_and_add(dsn_of_test_db(), table, "main", keys, 16, local)
    outcomes = [local.get()] + [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    errors = [error for _, errs in outcomes for error in errs]
    wins = [win for won, _ in outcomes for win in won]
    assert errors == []
    assert sorted(key for key, _ in wins) == sorted(keys), "exactly one add per key"
    cache = racefree(table)
    for key, winner in wins:
        assert cache.get(key) == winner
    assert len(cache.get_many([f"set-{key}" for key in keys])) == len(keys)


def _increment(dsn, table, threads, count, results):
    cache = DatabaseCache(table, {"OPTIONS": {"DSN": dsn}})
    errors = []

    def loop(_):
        for _ in range(count):
            cache.incr("counter")

    errors = run_threads(threads, loop)
    results.put([repr(error) for error in errors])


@pytest.mark.cross_version
def test_increments_from_processes_and_threads_are_exact(table):
    cache = racefree(table)
    cache.set("counter", 0, None)
    results = SPAWN.Queue()
    processes = [SPAWN.Process(target=_increment, args=(dsn_of_test_db(), table, 4, 250, results)) for _ in range(4)]
    for process in processes:
        process.start()
    errors = [error for _ in processes for error in results.get(timeout=300)]
    for process in processes:
        process.join(60)
    assert errors == []
    assert cache.get("counter") == 4000


@pytest.mark.cross_version
def test_incr_does_not_overwrite_a_concurrent_set(table):
    cache = racefree(table)
    cache.set("n", 0)
    stop = threading.Event()

    def setter():
        while not stop.is_set():
            cache.set("n", 1000)

    thread = threading.Thread(target=setter)
    thread.start()
    try:
        for _ in range(200):
            value = cache.incr("n")
            # Each incr starts from 0.., or from a fresh 1000: never from a
            # value computed before a set it then overwrote.
            assert value >= 1
    finally:
        stop.set()
        thread.join()
    final = cache.get("n")
    assert final == 1000 or final >= 1


# -- Interop with Django's DatabaseCache -------------------------------------------------


VALUES = {"str": "Iñtërnâtiônàlizætiøn", "bytes": b"\x00\xff", "int": 42, "dict": {"a": [1, (2, 3)]}, "none": None}


@pytest.mark.cross_version
def test_django_reads_what_racefree_wrote_and_back(table):
    ours = racefree(table)
    theirs = StockDatabaseCache(table, {})
    for name, value in VALUES.items():
        ours.set(f"ours-{name}", value)
        theirs.set(f"theirs-{name}", value)
    for name, value in VALUES.items():
        assert theirs.get(f"ours-{name}", "MISSING") == value
        assert ours.get(f"theirs-{name}", "MISSING") == value
    assert theirs.get_many([f"ours-{n}" for n in VALUES]) == {f"ours-{n}": v for n, v in VALUES.items()}
    theirs.set("counter", 10)
    assert ours.incr("counter", 5) == 15
    assert theirs.incr("counter") == 16
    ours.set("expiring", "soon", 1)
    theirs.set("expiring-stock", "soon", 1)
    assert theirs.get("expiring") == "soon" and ours.get("expiring-stock") == "soon"
    time.sleep(2.1)
    assert theirs.get("expiring") is None and ours.get("expiring-stock") is None
    ours.set("forever", "v", None)
    theirs.set("forever-stock", "v", None)
    assert theirs.get("forever") == "v" and ours.get("forever-stock") == "v"
    assert ours.has_key("forever-stock") and theirs.has_key("forever")


@override_settings(USE_TZ=True)
def test_interop_with_time_zones_on(table):
    ours = racefree(table)
    theirs = StockDatabaseCache(table, {})
    ours.set("a", 1, 100)
    theirs.set("b", 2, 100)
    assert theirs.get("a") == 1 and ours.get("b") == 2


# -- A restarted server ---------------------------------------------------------------------


@pytest.fixture(params=["plain", "tls"])
def restartable_postgres(request):
    """A server of the test's own and the DSN to reach it: over plain TCP,
    or over TLS only, the certificate and host name checked."""
    if request.param == "plain":
        server = Postgres()
        yield server, server.dsn
    else:
        authority = Authority()
        server = Postgres(tls=authority, tls_only=True)
        yield server, f"{server.dsn} sslmode=verify-full sslrootcert={authority.cert}"
        authority.close()
    server.close()


@pytest.mark.cross_version
def test_restarted_server_during_load(restartable_postgres):
    """Immediate shutdown mid-load, restart on the same port: broken pooled
    connections are discarded, every acknowledged write is there, and every
    increment in flight at the crash either committed or raised."""
    fresh_postgres, dsn = restartable_postgres
    fresh_postgres.create_cache_table()
    cache = DatabaseCache("cache", {"OPTIONS": {"DSN": dsn, "CONNECT_TIMEOUT": 1.0, "MAX_ENTRIES": 1_000_000}})
    cache.set("counter", 0)
    down = threading.Event()
    acknowledged, failures_while_up, failures_while_down = [], [], [0]
    increments = {"acknowledged": 0, "raised": 0}
    count_lock = threading.Lock()

    def load(index, stop):
        n = 0
        while not stop.is_set():
            key = f"k{index}-{n}"
            was_down = down.is_set()
            try:
                cache.set(key, n)
                acknowledged.append((key, n))
            except CacheError:
                if was_down or down.is_set():
                    failures_while_down[0] += 1
                else:
                    failures_while_up.append(key)
            try:
                cache.incr("counter")
                outcome = "acknowledged"
            except CacheError:
                outcome = "raised"
            with count_lock:
                increments[outcome] += 1
            n += 1

    with load_threads(4, load):
        time.sleep(0.5)
        down.set()
        fresh_postgres.stop("immediate")
        time.sleep(1.0)
        fresh_postgres.start(keep_port=True)
        time.sleep(0.3)
        down.clear()
        time.sleep(1.0)
    assert failures_while_down[0] > 0, "calls during the outage must fail"
    # A failure that started before `down` was cleared may still be
    # reported just after; none may happen once the server is back.
    assert len(failures_while_up) <= 4
    # Every acknowledged write is there, exactly as written.
    found = cache.get_many([key for key, _ in acknowledged])
    assert found == dict(acknowledged)
    # No acknowledged increment lost; one that raised may have committed
    # (its reply lost with the server) but was never applied twice.
    counter = cache.get("counter")
    print(f"\npostgres restart: {len(acknowledged)} sets acknowledged, {failures_while_down[0]} failed while down, "
          f"increments {increments}, counter {counter}")
    assert increments["raised"] > 0
    assert increments["acknowledged"] <= counter <= increments["acknowledged"] + increments["raised"]


# -- Settings, bad input, bad data ------------------------------------------------------------


def test_a_non_postgresql_database_is_refused():
    with pytest.raises(ImproperlyConfigured, match="needs PostgreSQL"):
        DatabaseCache("t", {"OPTIONS": {"DATABASE": "sqlite"}})
    with pytest.raises(ImproperlyConfigured, match="no 'missing' entry"):
        DatabaseCache("t", {"OPTIONS": {"DATABASE": "missing"}})


def test_options_are_checked():
    with pytest.raises(ImproperlyConfigured, match="unknown OPTIONS"):
        DatabaseCache("t", {"OPTIONS": {"POOL": 3}})
    with pytest.raises(ImproperlyConfigured, match="POOL_SIZE"):
        DatabaseCache("t", {"OPTIONS": {"POOL_SIZE": 0}})
    with pytest.raises(ImproperlyConfigured, match="invalid PostgreSQL connection settings"):
        DatabaseCache("t", {"OPTIONS": {"DSN": "host=x port=notaport"}})
    with pytest.raises(ImproperlyConfigured, match=r"IO_TIMEOUT'\] \(6.0 s\) must be longer than STATEMENT_TIMEOUT"):
        DatabaseCache("t", {"OPTIONS": {"STATEMENT_TIMEOUT": 30}})


def test_unreachable_server_is_a_clear_error_within_the_timeout(table):
    cache = DatabaseCache(table, {"OPTIONS": {"DSN": "host=127.0.0.1 port=1 user=x", "CONNECT_TIMEOUT": 0.5}})
    started = time.monotonic()
    with pytest.raises(CacheError, match="cannot connect"):
        cache.get("k")
    assert time.monotonic() - started < 3


def each_call_fails_within(cache, limit):
    """Run a sync and an async get, set, incr and get_many, each in a thread
    that must finish: every one raises CacheError within ``limit`` s."""
    calls = {
        "get": lambda: cache.get("k"),
        "set": lambda: cache.set("k", 1),
        "incr": lambda: cache.incr("n"),
        "get_many": lambda: cache.get_many(["k", "n"]),
        "aget": lambda: asyncio.run(cache.aget("k")),
        "aset": lambda: asyncio.run(cache.aset("k", 1)),
        "aincr": lambda: asyncio.run(cache.aincr("n")),
    }
    took = {}
    for name, call in calls.items():
        outcome = []

        def run(call=call, outcome=outcome):
            started = time.monotonic()
            try:
                call()
            except Exception as error:  # the assertions below name it
                outcome.append((time.monotonic() - started, error))
            else:
                outcome.append((time.monotonic() - started, None))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(limit + 10)
        assert outcome, f"{name} still blocked after {limit + 10} s"
        seconds, error = outcome[0]
        assert isinstance(error, CacheError), f"{name}: {error!r}"
        assert seconds < limit, f"{name} took {seconds:.2f} s: {error}"
        took[name] = round(seconds, 2)
    return took


def test_a_silent_server_fails_each_call_within_connect_timeout():
    """A listener that accepts and never answers (the startup exchange,
    not the TCP connect, is what hangs)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        port = listener.getsockname()[1]
        cache = DatabaseCache("t", {"OPTIONS": {
            "DSN": f"host=127.0.0.1 port={port} user=x", "CONNECT_TIMEOUT": 1.0, "STATEMENT_TIMEOUT": 1.0,
            "IO_TIMEOUT": 2.0}})
        took = each_call_fails_within(cache, 1.0 + 0.5)
        print(f"\nsilent server, seconds per call: {took}")
    finally:
        listener.close()


@pytest.mark.parametrize("pool", ["warm", "cold"])
def test_a_frozen_server_fails_each_call_within_its_timeouts(fresh_postgres, pool):
    """kill -STOP of the whole server: it cannot cancel anything itself.
    Warm: the pooled connections' statements get no reply (IO_TIMEOUT);
    cold: new connections get no startup reply (CONNECT_TIMEOUT). Then the
    server resumes and the cache works."""
    fresh_postgres.create_cache_table()
    cache = DatabaseCache("cache", {"OPTIONS": {
        "DSN": fresh_postgres.dsn, "CONNECT_TIMEOUT": 1.0, "STATEMENT_TIMEOUT": 1.0, "IO_TIMEOUT": 2.0,
        "POOL_SIZE": 2}})
    if pool == "warm":
        cache.set("n", 0)
        assert cache.get("n") == 0
    fresh_postgres.pause()
    try:
        # Warm: a statement waits IO_TIMEOUT (2 s), then its connection is
        # discarded, and a new one may wait CONNECT_TIMEOUT (1 s).
        took = each_call_fails_within(cache, 2.0 + 0.75)
        print(f"\nfrozen server, {pool} pool, seconds per call: {took}")
    finally:
        fresh_postgres.resume()
    cache.set("n", 5)
    assert cache.incr("n") == 6


@pytest.mark.parametrize("write", ["set", "set_many", "delete"])
def test_a_write_whose_reply_was_lost_is_never_sent_again(fresh_postgres, write):
    """A's write commits, its reply is lost, B writes a newer value, then
    A's connection breaks. Sending A's write again on a new connection
    would undo B's (or report A's delete as not done): A must get an error
    instead, and B's value stay."""
    from support.proxy import Proxy

    fresh_postgres.create_cache_table()
    proxy = Proxy(fresh_postgres.port)
    through_proxy = f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres"
    a = DatabaseCache("cache", {"OPTIONS": {"DSN": through_proxy, "MAX_ENTRIES": 1000}})
    b = DatabaseCache("cache", {"OPTIONS": {"DSN": fresh_postgres.dsn, "MAX_ENTRIES": 1000}})
    a.set("k", "old")
    outcome = []

    def a_writes():
        try:
            if write == "set":
                outcome.append(a.set("k", "from A"))
            elif write == "set_many":
                outcome.append(a.set_many({"k": "from A"}))
            else:
                outcome.append(a.delete("k"))
        except CacheError as error:
            outcome.append(error)

    proxy.swallow.set()
    writer = threading.Thread(target=a_writes)
    writer.start()
    try:
        deadline = time.monotonic() + 5
        while b.get("k", "gone") == "old" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.get("k", "gone") != "old", "A's write never reached the server"
        b.set("k", "from B, newer")
        proxy.swallow.clear()
        proxy.cut()
        writer.join(10)
    finally:
        proxy.close()
    assert not writer.is_alive()
    assert b.get("k") == "from B, newer", "A's write was sent again and undid B's"
    assert len(outcome) == 1 and isinstance(outcome[0], CacheError), outcome


def test_connections_of_a_restarted_server_are_replaced_before_any_write(fresh_postgres):
    """Writes are not retried, so pooled connections a restart broke must
    be found at checkout: after a restart every write succeeds at once."""
    fresh_postgres.create_cache_table()
    cache = DatabaseCache("cache", {"OPTIONS": {"DSN": fresh_postgres.dsn, "POOL_SIZE": 4}})
    with load_threads(4, lambda index, stop: [cache.set(f"warm{index}", index) for _ in range(20)]):
        pass
    fresh_postgres.restart()
    for n in range(12):
        cache.set(f"k{n}", n)
    assert cache.get_many([f"k{n}" for n in range(12)]) == {f"k{n}": n for n in range(12)}


def test_ignore_exceptions_reads_a_down_server_as_a_miss(caplog):
    cache = DatabaseCache(
        "t", {"OPTIONS": {"DSN": "host=127.0.0.1 port=1 user=x", "CONNECT_TIMEOUT": 0.2, "IGNORE_EXCEPTIONS": True}}
    )
    with caplog.at_level(logging.WARNING, logger="racefree"):
        assert cache.get("k", "default") == "default"
        assert cache.add("k", 1) is False
        cache.set("k", 1)
    assert "IGNORE_EXCEPTIONS" in caplog.text


def test_keys_the_table_cannot_hold_are_refused(table):
    cache = racefree(table)
    with pytest.raises(InvalidCacheKey, match="255"), pytest.warns(CacheKeyWarning):
        cache.set("a" * 300, 1)
    with pytest.raises(InvalidCacheKey, match="NUL"), pytest.warns(CacheKeyWarning):
        cache.get("nul\0")


def test_damaged_rows_read_as_misses(table, caplog):
    cache = racefree(table)
    cache.set("good", 1)
    cache.set("bad-base64", 1)
    cache.set("bad-pickle", 1)
    quoted = connection.ops.quote_name(table)
    with connection.cursor() as cursor:
        cursor.execute(f'UPDATE {quoted} SET "value" = %s WHERE "cache_key" = %s', ["!!not base64!!", ":1:bad-base64"])
        cursor.execute(f'UPDATE {quoted} SET "value" = %s WHERE "cache_key" = %s', ["AAAA", ":1:bad-pickle"])
    with caplog.at_level(logging.WARNING, logger="racefree"):
        assert cache.get("bad-base64", "miss") == "miss"
        assert cache.get("bad-pickle", "miss") == "miss"
        assert cache.get_many(["good", "bad-base64", "bad-pickle"]) == {"good": 1}
    assert "cannot load" in caplog.text


def test_pools_close_and_reopen(table):
    cache = racefree(table)
    cache.set("k", 1)
    assert cache._store.connections >= 1
    close_pools()
    assert cache._store.connections == 0
    assert cache.get("k") == 1


def test_idle_connections_older_than_idle_timeout_are_not_reused(table):
    cache = racefree(table, IDLE_TIMEOUT=0.3)
    cache.set("k", 1)
    assert cache.get("k") == 1
    assert cache.stats()["connects"] == 1, "one connection serves calls in a row"
    time.sleep(0.5)
    assert cache.get("k") == 1
    assert cache.stats()["connects"] == 2, "the idle connection was too old"
    fresh = racefree(table, IDLE_TIMEOUT=60.0)
    fresh.get("k")
    time.sleep(0.5)
    fresh.get("k")
    assert fresh.stats()["connects"] == 1


def test_incr_keeps_the_expiry_and_raises_like_django(table):
    cache = racefree(table)
    with pytest.raises(ValueError, match="not found"):
        cache.incr("absent")
    cache.set("n", 1, 1)
    assert cache.incr("n", 10) == 11
    assert cache.decr("n", 20) == -9
    time.sleep(1.2)
    assert cache.get("n") is None, "incr kept the 1 s expiry"
    cache.set("text", "abc")
    with pytest.raises(TypeError):
        cache.incr("text")
    assert cache.get("text") == "abc"
    cache.set("float", 1.5)
    assert cache.incr("float") == 2.5, "anything with + works, as in Django"


def _use_inherited(cache, results):
    try:
        for i in range(200):
            cache.set(f"child-{i}", i)
            assert cache.get(f"child-{i}") == i
        results.put("ok")
    except BaseException as exc:  # noqa: BLE001
        results.put(repr(exc))


def test_a_forked_child_does_not_reuse_the_parents_connections(table):
    cache = racefree(table)
    for i in range(20):
        cache.set(f"parent-{i}", i)
    assert cache._store.connections >= 1
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    stop = threading.Event()
    bad = []

    def parent_load():
        while not stop.is_set():
            for i in range(20):
                if cache.get(f"parent-{i}") != i:
                    bad.append(i)

    loader = threading.Thread(target=parent_load)
    loader.start()
    try:
        children = [context.Process(target=_use_inherited, args=(cache, results)) for _ in range(3)]
        for child in children:
            child.start()
        outcomes = [results.get(timeout=60) for _ in children]
        for child in children:
            child.join(30)
    finally:
        stop.set()
        loader.join()
    assert outcomes == ["ok"] * 3
    assert bad == []
