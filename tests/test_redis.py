"""racefree's Redis backend against real redis-server processes: interop
with Django's RedisCache on one server, races (threads, processes, tasks),
a key expiring during incr, timeout semantics, read replicas, faults, fork
safety, connection use, OPTIONS and LOCATION forms, stats and checks, and
locks."""

import asyncio
import os
import threading
import time
import traceback
import uuid

import django
import pytest
import test_stampede as stampede
from django.core import checks, signals
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache as StockRedisCache
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from support.load import load_threads, run_processes, run_threads, wait_until
from support.proxy import full_unix_listener
from support.servers import Redis, free_port

from racefree.backends.redis import RedisCache
from racefree.checks import check_caches
from racefree.exceptions import (
    CacheAuthenticationError,
    CacheConnectionError,
    CacheError,
    CacheTimeoutError,
)

BACKEND = "racefree.backends.redis.RedisCache"
MISSING = object()


def racefree(location, prefix=None, **options):
    params = {"OPTIONS": options}
    if prefix is not None:
        params["KEY_PREFIX"] = prefix
    return RedisCache(location, params)


def stock(location, prefix):
    return StockRedisCache(location, {"KEY_PREFIX": prefix})


@pytest.fixture
def prefix():
    """A key prefix of the test's own on the shared server."""
    return uuid.uuid4().hex[:8]


def client_lines(server):
    """The server's client connections but the redis-cli one asking."""
    return [line for line in server.cli("CLIENT", "LIST").splitlines() if "cmd=client|list" not in line]


# -- Interop with Django's RedisCache on the same server and prefix ------------

INTEROP_VALUES = {
    "int": 42,
    "negative": -7,
    "bool": True,
    "none": None,
    "str": "Iñtërnâtiônàlizætiøn",
    "bytes": b"\x00\x01binary\xff",
    "float": 1.5,
    "dict": {"a": [1, 2, (3, 4)], "b": None},
    "tuples": [(1, "one"), (2, "two")],
}


def assert_same(got, expected, name):
    # True == 1 and 1.0 == 1: the type must survive too.
    assert got == expected and type(got) is type(expected), (name, got, expected)


@pytest.mark.cross_version
def test_racefree_reads_what_stock_wrote(redis_server, prefix):
    ours, theirs = racefree(redis_server.location, prefix), stock(redis_server.location, prefix)
    for name, value in INTEROP_VALUES.items():
        theirs.set(name, value)
    for name, value in INTEROP_VALUES.items():
        assert_same(ours.get(name, MISSING), value, name)
    theirs.set_many({f"many-{name}": value for name, value in INTEROP_VALUES.items()})
    found = ours.get_many([f"many-{name}" for name in INTEROP_VALUES] + ["many-absent"])
    assert sorted(found) == sorted(f"many-{name}" for name in INTEROP_VALUES)
    for name, value in INTEROP_VALUES.items():
        assert_same(found[f"many-{name}"], value, name)


@pytest.mark.cross_version
def test_stock_reads_what_racefree_wrote(redis_server, prefix):
    ours, theirs = racefree(redis_server.location, prefix), stock(redis_server.location, prefix)
    for name, value in INTEROP_VALUES.items():
        ours.set(name, value)
    for name, value in INTEROP_VALUES.items():
        assert_same(theirs.get(name, MISSING), value, name)
    # Integers are digits on the server, as Django writes them.
    assert redis_server.cli("GET", ours.make_key("int")) == "42"
    assert redis_server.cli("GET", ours.make_key("negative")) == "-7"
    assert ours.set_many({f"many-{name}": value for name, value in INTEROP_VALUES.items()}) == []
    found = theirs.get_many([f"many-{name}" for name in INTEROP_VALUES] + ["many-absent"])
    assert sorted(found) == sorted(f"many-{name}" for name in INTEROP_VALUES)
    for name, value in INTEROP_VALUES.items():
        assert_same(found[f"many-{name}"], value, name)


def test_incr_counts_on_what_the_other_backend_wrote(redis_server, prefix):
    ours, theirs = racefree(redis_server.location, prefix), stock(redis_server.location, prefix)
    theirs.set("theirs", 10)
    assert ours.incr("theirs", 5) == 15
    assert theirs.incr("theirs") == 16
    assert ours.decr("theirs", 20) == -4
    assert theirs.get("theirs") == ours.get("theirs") == -4
    ours.set("ours", -7)
    assert theirs.incr("ours", 3) == -4
    assert ours.incr("ours") == -3
    assert theirs.get("ours") == -3


def test_keys_and_versions_are_djangos(redis_server, prefix):
    ours, theirs = racefree(redis_server.location, prefix), stock(redis_server.location, prefix)
    assert ours.make_key("k") == theirs.make_key("k") == f"{prefix}:1:k"
    assert ours.make_key("k", version=2) == theirs.make_key("k", version=2) == f"{prefix}:2:k"
    theirs.set("theirs", "v2", version=2)
    assert ours.get("theirs") is None
    assert ours.get("theirs", version=2) == "v2"
    ours.set("ours", "v2", version=2)
    assert redis_server.cli("EXISTS", f"{prefix}:2:ours") == "1"
    assert redis_server.cli("EXISTS", f"{prefix}:1:ours") == "0"
    assert theirs.get("ours") is None and theirs.get("ours", version=2) == "v2"
    assert ours.incr_version("theirs", version=2) == 3
    assert theirs.get("theirs", version=3) == "v2" and theirs.get("theirs", version=2) is None


# -- Races ------------------------------------------------------------------------


@pytest.mark.cross_version
@pytest.mark.parametrize("combine", [True, False], ids=["combined", "own-round-trips"])
def test_thirty_two_threads_on_one_instance_each_read_their_own_values(redis_server, prefix, combine):
    cache = racefree(redis_server.location, prefix, COMBINE_CALLS=combine)
    rounds, keys = 60, 8
    mismatches, calls = [], [0] * 32
    start = threading.Barrier(32, timeout=30)

    def work(index):
        start.wait()
        for n in range(rounds):
            key = f"t{index}-{n % keys}"
            value = (index, n, key)
            cache.set(key, value)
            got = cache.get(key)
            if got != value:
                mismatches.append((value, got))
            calls[index] += 2
            if n % 10 == 9:
                mine = [f"t{index}-{k}" for k in range(keys)]
                for got_key, got in cache.get_many(mine).items():
                    if got[0] != index or got[2] != got_key:
                        mismatches.append((got_key, got))
                calls[index] += 1

    assert run_threads(32, work) == []
    assert mismatches == []
    assert sum(calls) == 32 * (2 * rounds + rounds // 10)
    (pool,) = cache.stats()["servers"].values()
    # Combined: calls rode in others' round trips; else none did.
    assert (pool["combined"] > 0) is combine, pool


@pytest.mark.cross_version
def test_combined_calls_of_every_kind_each_get_their_own_reply(redis_server, prefix, caplog):
    # Gets, sets, adds, scripts (incr, delete_if), batches and refused
    # commands share round trips: each caller gets its own reply, a refused
    # command fails only its caller, and the scripts that SCRIPT FLUSH
    # drops meanwhile (NOSCRIPT) are sent again, not taken for an outage.
    # (A client name of its own: a store of its own, whose connections
    # this test counts.)
    cache = racefree(redis_server.location, prefix, CLIENT_NAME=f"combined-{prefix}")
    cache.set("counter", 0)
    cache.set("text", "not a number")
    rounds, problems = 150, []

    def work(index):
        for n in range(rounds):
            mine = f"w{index}-{n % 5}"
            cache.set(mine, (index, n))
            if cache.get(mine) != (index, n):
                problems.append(("get", index, n))
            cache.incr("counter")
            if n % 7 == 0:
                try:
                    cache.incr("text")
                    problems.append(("incr of text", index, n))
                except TypeError:
                    pass
            if n % 10 == 0:
                batch = {f"b{index}-{k}": (index, n, k) for k in range(5)}
                cache.set_many(batch)
                if cache.get_many(list(batch)) != batch:
                    problems.append(("get_many", index, n))
                if cache.add(f"b{index}-0", "taken") is not False:
                    problems.append(("add", index, n))
                cache.delete_many(list(batch))
            if index == 0 and n % 25 == 0:
                redis_server.cli("SCRIPT", "FLUSH")

    with caplog.at_level("INFO", logger="racefree"):
        assert run_threads(8, work) == []
    assert problems == []
    assert cache.get("counter") == 8 * rounds
    assert cache.stats()["errors"] == 0
    assert [r.getMessage() for r in caplog.records if r.name.startswith("racefree")] == []
    (pool,) = cache.stats()["servers"].values()
    assert pool["combined"] > 0 and pool["connects"] == 1, pool


@pytest.mark.cross_version
def test_eight_threads_of_a_thousand_increments_count_exactly(redis_server, prefix):
    cache = racefree(redis_server.location, prefix)
    cache.set("hits", 0)
    assert run_threads(8, lambda _: [cache.incr("hits") for _ in range(1000)]) == []
    assert cache.get("hits") == 8000


def _incr_in_process(location, prefix, count):
    cache = racefree(location, prefix)
    for _ in range(count):
        cache.incr("process-hits")


@pytest.mark.cross_version
def test_increments_from_four_processes_count_exactly(redis_server, prefix):
    cache = racefree(redis_server.location, prefix)
    cache.set("process-hits", 0)
    assert run_processes(_incr_in_process, [(redis_server.location, prefix, 500)] * 4) == [0] * 4
    assert cache.get("process-hits") == 2000


async def _concurrent_aincr(cache, key, tasks=200, each=10):
    await cache.aset(key, 0)

    async def task():
        for _ in range(each):
            await cache.aincr(key)

    await asyncio.gather(*(task() for _ in range(tasks)))
    return await cache.aget(key)


@pytest.mark.cross_version
def test_two_hundred_tasks_aincr_exactly_where_djangos_backend_loses_increments(redis_server, prefix):
    ours, theirs = racefree(redis_server.location, prefix), stock(redis_server.location, prefix)
    assert asyncio.run(_concurrent_aincr(ours, "async-hits")) == 2000
    theirs_total = asyncio.run(_concurrent_aincr(theirs, "stock-async-hits"))
    print(f"\nDjango {django.get_version()} RedisCache.aincr: {theirs_total} of 2000 increments kept")
    if django.VERSION < (6, 1):
        # BaseCache.aincr is aget, then aset: tasks read the same value and
        # each writes it back plus one. This is the bug racefree fixes.
        assert theirs_total < 2000
    else:
        # Django 6.1 runs the sync incr (EXISTS then INCRBY) in a thread:
        # nothing to show lost here, only that it cannot count more.
        assert theirs_total <= 2000


# -- incr ---------------------------------------------------------------------------


def test_a_key_expiring_during_incr_raises_and_is_never_recreated(redis_server, prefix):
    cache = racefree(redis_server.location, prefix)
    cache.set("expiring", 0)
    key = cache.make_key("expiring")
    assert redis_server.cli("PEXPIRE", key, 50) == "1"
    counted = 0
    deadline = time.monotonic() + 5
    with pytest.raises(ValueError, match="not found"):
        while True:
            assert time.monotonic() < deadline, "the key never expired"
            cache.incr("expiring")
            counted += 1
    assert counted > 0, "incr worked while the key was there"
    for _ in range(20):
        with pytest.raises(ValueError):
            cache.incr("expiring")
    assert redis_server.cli("EXISTS", key) == "0"
    assert cache.get("expiring") is None


def test_incr_semantics(redis_server, prefix):
    cache = racefree(redis_server.location, prefix)
    with pytest.raises(ValueError, match="not found"):
        cache.incr("absent")
    assert redis_server.cli("EXISTS", cache.make_key("absent")) == "0", "incr must not create a missing key"
    cache.set("text", "abc")
    with pytest.raises(TypeError):
        cache.incr("text")
    assert cache.get("text") == "abc"
    cache.set("timed", 1, timeout=100)
    assert cache.incr("timed", 41) == 42
    assert cache.decr("timed", 2) == 40
    assert 0 < int(redis_server.cli("PTTL", cache.make_key("timed"))) <= 100_000, "incr keeps the TTL"
    cache.set("forever", 1, timeout=None)
    cache.incr("forever")
    assert redis_server.cli("TTL", cache.make_key("forever")) == "-1"
    # Exact past 2**53 (a Lua number is a double), up to Redis's 64 bits.
    cache.set("large", 2**62)
    assert cache.incr("large") == 2**62 + 1
    assert redis_server.cli("GET", cache.make_key("large")) == str(2**62 + 1)
    for sign in (1, -1):
        # Either side of 2**53, where the script's reply turns from an
        # integer to digits.
        cache.set("edge", sign * (2**53 - 1))
        assert [cache.incr("edge", sign) for _ in range(2)] == [sign * 2**53, sign * (2**53 + 1)]
        assert cache.decr("edge", sign * 2) == sign * (2**53 - 1)
    cache.set("largest", 2**63 - 1)
    with pytest.raises(OverflowError):
        cache.incr("largest")
    assert cache.get("largest") == 2**63 - 1


# -- Timeouts ------------------------------------------------------------------------


def ttl(server, cache, key):
    return int(server.cli("TTL", cache.make_key(key)))


def test_a_value_stored_for_a_second_is_gone_a_second_later(redis_server, prefix):
    # Redis serves a key during its expiry's millisecond: with EX 1 a read
    # exactly 1 s later (Django's test_cache_page_timeout does one) could
    # still see it. racefree asks for 999 ms.
    cache = racefree(redis_server.location, prefix)
    cache.set("page", "cached", 1)
    assert 900 < int(redis_server.cli("PTTL", cache.make_key("page"))) <= 999
    cache.touch("page", 1)
    assert 900 < int(redis_server.cli("PTTL", cache.make_key("page"))) <= 999
    time.sleep(1)
    assert cache.get("page") is None


def test_timeout_none_persists_and_a_number_expires(redis_server, prefix):
    cache = racefree(redis_server.location, prefix)
    cache.set("forever", 1, None)
    assert ttl(redis_server, cache, "forever") == -1
    cache.set("timed", 1, 100)
    assert 90 < ttl(redis_server, cache, "timed") <= 100
    cache.set("default", 1)  # Django's default, 300 s
    assert 290 < ttl(redis_server, cache, "default") <= 300
    assert cache.add("added", 1, None) is True
    assert ttl(redis_server, cache, "added") == -1
    cache.set_many({"many": 1}, None)
    assert ttl(redis_server, cache, "many") == -1


@pytest.mark.parametrize("timeout", [0, -1, 0.5], ids=["zero", "negative", "under-a-second"])
def test_a_timeout_below_a_second_stores_nothing_and_deletes_the_old_value(redis_server, prefix, timeout):
    # Django's RedisCache rounds down to whole seconds: 0.5 is 0, "don't cache".
    cache = racefree(redis_server.location, prefix)
    cache.set("k", "old")
    cache.set("k", "new", timeout)
    assert cache.get("k") is None
    assert redis_server.cli("EXISTS", cache.make_key("k")) == "0"
    cache.set_many({"a": "old", "b": "old"})
    assert cache.set_many({"a": "new", "b": "new"}, timeout) == []
    assert cache.get_many(["a", "b"]) == {}


def test_add_with_a_timeout_of_zero_says_whether_the_key_was_absent_and_stores_nothing(redis_server, prefix):
    cache = racefree(redis_server.location, prefix)
    assert cache.add("k", "v", 0) is True
    assert redis_server.cli("EXISTS", cache.make_key("k")) == "0"
    cache.set("k", "old")
    assert cache.add("k", "new", 0) is False
    assert cache.get("k") == "old"


def test_touch_sets_or_removes_the_expiry_of_an_existing_key(redis_server, prefix):
    cache = racefree(redis_server.location, prefix)
    cache.set("timed", 1, 100)
    assert cache.touch("timed", None) is True
    assert ttl(redis_server, cache, "timed") == -1
    cache.set("forever", 1, None)
    # Django's RedisCache returns False here (PERSIST answers 0 for a key
    # that has no expiry); the key exists, so Django's contract says True.
    assert cache.touch("forever", None) is True
    assert ttl(redis_server, cache, "forever") == -1
    assert cache.touch("forever", 50) is True
    assert 40 < ttl(redis_server, cache, "forever") <= 50
    assert cache.touch("absent", None) is False
    assert cache.touch("absent", 50) is False
    assert redis_server.cli("EXISTS", cache.make_key("absent")) == "0"
    assert cache.touch("forever", 0) is True
    assert cache.get("forever") is None


def test_backend_timeouts_are_whole_seconds_as_in_djangos_redis_cache(redis_server, prefix):
    cache, theirs = racefree(redis_server.location, prefix), stock(redis_server.location, prefix)
    assert cache.get_backend_timeout(0.5) == 0
    assert cache.get_backend_timeout(10.7) == 10
    assert cache.get_backend_timeout(float("inf")) is None
    assert cache.get_backend_timeout(None) is None
    assert cache.get_backend_timeout(-5) == 0
    assert cache.get_backend_timeout() == 300
    for timeout in (0.5, 10.7, 0, -5, None, 300):
        assert cache.get_backend_timeout(timeout) == theirs.get_backend_timeout(timeout), timeout


# -- Replicas --------------------------------------------------------------------------


def get_calls(server):
    """How many GETs the server ran (INFO commandstats)."""
    stat = server.info("commandstats").get("cmdstat_get", "calls=0")
    return int(stat.split(",")[0].split("=")[1])


def test_writes_go_to_the_primary(replicated):
    primary, replica = replicated
    # A replica is read-only: any write sent there would raise (READONLY).
    assert "READONLY" in replica.cli("SET", "x", "1", check=False)
    cache = racefree([primary.location, replica.location], uuid.uuid4().hex[:8])
    cache.set("set", "v")
    assert cache.add("added", "v") is True
    cache.set("counter", 1)
    assert cache.incr("counter", 2) == 3
    assert cache.touch("set", 100) is True
    assert cache.touch("set", None) is True
    assert cache.set_many({"m1": 1, "m2": 2}) == []
    assert cache.delete("added") is True
    cache.delete_many(["m1"])
    with cache.lock("lock", wait=0):
        pass
    assert asyncio.run(cache.aincr("counter")) == 4

    def on_primary(key):
        return primary.cli("GET", cache.make_key(key))

    assert [on_primary(k) for k in ("counter", "added", "m1", "m2")] == ["4", "", "", "2"]
    assert primary.cli("TTL", cache.make_key("set")) == "-1"
    wait_until(lambda: replica.cli("GET", cache.make_key("counter")) == "4", what="replication")
    assert cache.get("counter") == 4


def test_reads_spread_over_the_replicas(replicated):
    primary, replica = replicated
    cache = racefree([primary.location, replica.location], uuid.uuid4().hex[:8])
    cache.set("read", "value")
    wait_until(lambda: replica.cli("EXISTS", cache.make_key("read")) == "1", what="replication")
    before = get_calls(primary), get_calls(replica)
    assert [cache.get("read") for _ in range(200)] == ["value"] * 200
    assert (get_calls(primary) - before[0], get_calls(replica) - before[1]) == (0, 200)


def test_without_read_from_replicas_reads_go_to_the_primary(replicated):
    primary, replica = replicated
    cache = racefree([primary.location, replica.location], uuid.uuid4().hex[:8], READ_FROM_REPLICAS=False)
    cache.set("read", "value")
    before = get_calls(primary), get_calls(replica)
    assert [cache.get("read") for _ in range(200)] == ["value"] * 200
    assert (get_calls(primary) - before[0], get_calls(replica) - before[1]) == (200, 0)


# -- Faults ----------------------------------------------------------------------------


def test_a_frozen_server_fails_within_the_timeout(fresh_redis):
    cache = racefree(fresh_redis.location, IO_TIMEOUT=0.5, CONNECT_TIMEOUT=0.5)
    cache.set("k", "before")
    assert cache.get("k") == "before"
    fresh_redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(CacheTimeoutError):
            cache.get("k")
        assert 0.4 < time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(CacheTimeoutError):
            asyncio.run(cache.aget("k"))
        assert 0.4 < time.monotonic() - started < 2.0
    finally:
        fresh_redis.resume()
    # The frozen server's late replies belong to discarded connections.
    cache.set("k", "after")
    assert cache.get("k") == "after"
    assert asyncio.run(cache.aget("k")) == "after"


def test_a_unix_socket_that_accepts_nothing_fails_within_the_connect_timeout(tmp_path):
    """A server that stopped accepting, its backlog full: a blocking
    connect would wait for ever; sync and async calls give up in time."""
    with full_unix_listener(str(tmp_path / "full.sock")) as path:
        cache = racefree(f"unix://{path}", CONNECT_TIMEOUT=0.5, IO_TIMEOUT=0.5)
        for call in (lambda: cache.get("k"), lambda: asyncio.run(cache.aset("k", 1))):
            started = time.monotonic()
            with pytest.raises(CacheConnectionError, match="within CONNECT_TIMEOUT"):
                call()
            took = time.monotonic() - started
            assert 0.4 < took < 1.5, took


def test_a_killed_and_restarted_server_fails_calls_then_recovers_without_foreign_values(fresh_redis):
    cache = racefree(fresh_redis.location, IO_TIMEOUT=0.5, CONNECT_TIMEOUT=0.5)
    foreign, failures = [], []
    restarted = threading.Event()
    recovered = [False] * 8

    def load(index, stop):
        n = 0
        while not stop.is_set():
            key = f"k{index}-{n % 10}"
            n += 1
            try:
                cache.set(key, (key, n))
                got = cache.get(key)
            except CacheError as error:
                failures.append(type(error).__name__)
                time.sleep(0.001)
                continue
            if got is not None and got[0] != key:
                foreign.append((key, got))
            if restarted.is_set():
                recovered[index] = True

    with load_threads(8, load):
        time.sleep(0.3)
        fresh_redis.kill()
        time.sleep(0.7)
        during_outage = len(failures)
        fresh_redis.restart()
        restarted.set()
        wait_until(lambda: all(recovered), seconds=5, what="every thread's recovery")
    print(f"\nredis kill -9: {len(failures)} failed calls ({sorted(set(failures))}), {len(foreign)} foreign")
    assert foreign == []
    assert during_outage > 0, "calls during the outage must fail"
    assert set(failures) <= {"CacheConnectionError", "CacheTimeoutError"}


def test_ignore_exceptions_reads_a_stopped_server_as_a_miss(fresh_redis):
    cache = racefree(fresh_redis.location, IGNORE_EXCEPTIONS=True, CONNECT_TIMEOUT=0.5)
    strict = racefree(fresh_redis.location, CONNECT_TIMEOUT=0.5)
    cache.set("k", "v")
    fresh_redis.stop()
    assert cache.get("k", "default") == "default"
    assert cache.set("k", "v") is None
    assert cache.get_many(["k"]) == {}
    assert cache.add("k", "v") is False
    assert asyncio.run(cache.aget("k", "default")) == "default"
    with pytest.raises(ValueError):
        cache.incr("k")
    with pytest.raises(CacheConnectionError):
        strict.get("k")


@pytest.mark.parametrize("login", [{"DB": 1}, {"CLIENT_NAME": "racefree-test"}], ids=["select", "setname"])
def test_a_server_that_answers_nothing_at_connect_fails_within_the_connect_timeout(fresh_redis, login):
    # Frozen before the first use: the kernel accepts the connection, the
    # server answers nothing. The opening exchange (SELECT, CLIENT
    # SETNAME) is part of the connect, bounded by CONNECT_TIMEOUT.
    cache = racefree(fresh_redis.location, CONNECT_TIMEOUT=0.3, IO_TIMEOUT=3.0, **login)
    fresh_redis.pause()
    try:
        for call in (lambda: cache.get("k"), lambda: asyncio.run(cache.aget("k"))):
            started = time.monotonic()
            with pytest.raises(CacheTimeoutError):
                call()
            assert 0.25 < time.monotonic() - started < 1.5
    finally:
        fresh_redis.resume()
    cache.set("k", "v")
    assert cache.get("k") == "v"


# -- Fork safety ---------------------------------------------------------------------


def _in_forked_child(cache):
    """The child's use of the parent's backend object; its exit code."""
    try:
        me = os.getpid()
        for n in range(100):
            key = f"child-{me}-{n % 10}"
            cache.set(key, (me, n))
            if cache.get(key) != (me, n):
                return 2

        async def use():
            for n in range(50):
                await cache.aset(f"achild-{me}-{n % 5}", (me, n))
                if await cache.aget(f"achild-{me}-{n % 5}") != (me, n):
                    return False
            return True

        if not asyncio.run(use()):
            return 3
        return 0 if cache.get("parent-0") == ("parent", 0) else 4
    except BaseException:
        traceback.print_exc()
        return 1


def test_a_forked_child_uses_the_parents_backend_object_safely(redis_server, prefix):
    cache = racefree(redis_server.location, prefix)
    for n in range(20):
        cache.set(f"parent-{n}", ("parent", n))

    async def parent_use():
        return [await cache.aget(f"parent-{n}") for n in range(20)]

    assert asyncio.run(parent_use()) == [("parent", n) for n in range(20)]
    assert cache._store.idle_connections()[0] >= 1
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            os._exit(_in_forked_child(cache))
        pids.append(pid)
    # The parent keeps working while its children do.
    for n in range(200):
        assert cache.get(f"parent-{n % 20}") == ("parent", n % 20)
    codes = []
    for pid in pids:
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes.append(os.waitstatus_to_exitcode(status))
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                codes.append("hung")
                break
            time.sleep(0.01)
    assert codes == [0, 0, 0]
    assert asyncio.run(parent_use()) == [("parent", n) for n in range(20)]


# -- Connections -------------------------------------------------------------------------


@pytest.mark.parametrize("combine, most", [(True, 1), (False, 4)], ids=["combined", "own-round-trips"])
def test_two_hundred_tasks_share_at_most_four_connections(fresh_redis, combine, most):
    # Combined, every call in flight rides the one connection.
    cache = racefree(fresh_redis.location, COMBINE_CALLS=combine)
    counts, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            counts.append(len(client_lines(fresh_redis)))
            time.sleep(0.005)

    async def task(index):
        for n in range(20):
            await cache.aset(f"task-{index}", n)
            assert await cache.aget(f"task-{index}") == n
            if n % 5 == 0:
                batch = {f"task-{index}-{k}": (n, k) for k in range(3)}
                await cache.aset_many(batch)
                assert await cache.aget_many(list(batch)) == batch
                await cache.aincr("shared")

    async def tasks():
        await asyncio.gather(*(task(index) for index in range(200)))

    cache.set("shared", 0)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        asyncio.run(tasks())
    finally:
        stop.set()
        sampler.join()
    after = len(client_lines(fresh_redis))
    (pool,) = cache.stats()["servers"].values()
    assert cache.get("shared") == 200 * 4
    assert counts and max(counts) <= most, counts
    assert 1 <= after <= most
    assert pool["connects"] <= most
    assert (pool["combined"] > 0) is combine, pool


def test_requests_reuse_one_connection(fresh_redis):
    with override_settings(CACHES={"default": {"BACKEND": BACKEND, "LOCATION": fresh_redis.location}}):
        before = int(fresh_redis.info("stats")["total_connections_received"])
        for request in range(50):
            cache = caches["default"]
            cache.get("warm")
            cache.set(f"r{request}", request)
            signals.request_finished.send(sender=None)
        # Less the connection of this info() call itself.
        assert int(fresh_redis.info("stats")["total_connections_received"]) - before - 1 == 1
        assert caches["default"].get("r49") == 49


def test_max_connections_caps_what_threads_open(fresh_redis):
    cache = racefree(fresh_redis.location, MAX_CONNECTIONS=2, CONNECT_TIMEOUT=2.0)
    assert run_threads(8, lambda index: [cache.set(f"cap{index}", n) for n in range(200)]) == []
    (pool,) = cache.stats()["servers"].values()
    assert pool["connects"] <= 2
    assert len(client_lines(fresh_redis)) <= 2


# -- OPTIONS and LOCATION --------------------------------------------------------------


@pytest.fixture
def passworded():
    server = Redis(password="s3cret")
    yield server
    server.close()


def test_the_urls_password_and_database_are_used(passworded):
    cache = racefree(f"redis://:s3cret@127.0.0.1:{passworded.port}/3")
    cache.set("k", "in three")
    assert cache.get("k") == "in three"
    assert passworded.cli("-n", "3", "EXISTS", cache.make_key("k")) == "1"
    assert passworded.cli("-n", "0", "EXISTS", cache.make_key("k")) == "0"


def test_a_wrong_or_missing_password_is_an_authentication_error(passworded):
    for cache in (racefree(f"redis://:wrong@127.0.0.1:{passworded.port}"), racefree(passworded.location),
                  racefree(passworded.location, PASSWORD="wrong", USERNAME="default")):
        with pytest.raises(CacheAuthenticationError):
            cache.get("k")
        with pytest.raises(CacheAuthenticationError):
            cache.set("k", "v")
    assert passworded.cli("DBSIZE") == "0"


def test_djangos_lowercase_option_spellings_are_accepted(passworded):
    cache = racefree(passworded.location, db=4, socket_timeout=0.6, socket_connect_timeout=0.4, password="s3cret")
    assert (cache._options["DB"], cache._options["IO_TIMEOUT"], cache._options["CONNECT_TIMEOUT"]) == (4, 0.6, 0.4)
    cache.set("k", "v")
    assert cache.get("k") == "v"
    assert passworded.cli("-n", "4", "EXISTS", cache.make_key("k")) == "1"


def test_the_database_in_the_url_query(redis_server, prefix):
    cache = racefree(f"{redis_server.location}?db=2", prefix)
    cache.set("k", "v")
    assert redis_server.cli("-n", "2", "EXISTS", cache.make_key("k")) == "1"
    assert redis_server.cli("-n", "0", "EXISTS", cache.make_key("k")) == "0"


@pytest.mark.parametrize("options", [{"db": 1}, {"DB": 1}], ids=["db", "DB"])
def test_the_urls_database_wins_over_options(redis_server, prefix, options):
    cache = racefree(f"{redis_server.location}/2", prefix, **options)
    cache.set("k", "v")
    assert redis_server.cli("-n", "2", "EXISTS", cache.make_key("k")) == "1"
    assert redis_server.cli("-n", "1", "EXISTS", cache.make_key("k")) == "0"


def test_connection_pool_kwargs_set_racefrees_options(redis_server, prefix):
    cache = racefree(redis_server.location, prefix, CONNECTION_POOL_KWARGS={
        "max_connections": 3, "socket_timeout": 0.7, "socket_connect_timeout": 0.9})
    assert (cache._options["MAX_CONNECTIONS"], cache._options["IO_TIMEOUT"], cache._options["CONNECT_TIMEOUT"]) == (
        3, 0.7, 0.9)
    assert cache.stats()["max_connections"] == 3
    cache.set("k", "v")
    assert cache.get("k") == "v"
    with pytest.raises(ImproperlyConfigured, match="retry_on_timeout"):
        racefree(redis_server.location, CONNECTION_POOL_KWARGS={"retry_on_timeout": True})


def test_a_unix_socket_location(tmp_path):
    path = str(tmp_path / "r.sock")
    server = Redis(extra_args=["--unixsocket", path, "--unixsocketperm", "700"])
    try:
        cache = racefree(f"unix://{path}")
        cache.set("k", {"over": "unix"})
        assert cache.get("k") == {"over": "unix"}
        assert server.cli("EXISTS", cache.make_key("k")) == "1"
        in_two = racefree(f"unix://{path}?db=2")
        in_two.set("k", "two")
        assert server.cli("-n", "2", "EXISTS", cache.make_key("k")) == "1"
    finally:
        server.close()


def test_a_rediss_location_keeps_the_tls_options(authority, tls_redis):
    server, location = tls_redis
    cache = racefree(location, TLS={"CA_FILE": authority.cert})
    assert cache._options["TLS"]["ca_file"] == authority.cert
    cache.set("k", "over tls")
    assert cache.get("k") == "over tls"
    assert server.cli("EXISTS", cache.make_key("k")) == "1"
    # rediss:// alone is TLS checked against the system's CAs, which do
    # not know this one.
    with pytest.raises(CacheConnectionError):
        racefree(location).get("k")


def test_settings_that_cannot_work_are_refused(redis_server):
    location = redis_server.location
    with pytest.raises(ImproperlyConfigured, match="retry_on_timeout.*not supported"):
        racefree(location, retry_on_timeout=True)
    with pytest.raises(ImproperlyConfigured, match="unknown OPTIONS\\['NO_SUCH_OPTION'\\]"):
        racefree(location, NO_SUCH_OPTION=1)
    with pytest.raises(ImproperlyConfigured, match="mixes rediss:// and redis://"):
        racefree([location, f"rediss://127.0.0.1:{free_port()}"])
    with pytest.raises(ImproperlyConfigured, match="serializer"):
        racefree(location, serializer="django_redis.serializers.json.JSONSerializer")
    with pytest.raises(ImproperlyConfigured, match="CLIENT_CLASS need OPTIONS\\['SENTINELS'\\]"):
        racefree(location, CLIENT_CLASS="django_redis.client.SentinelClient")
    with pytest.raises(ImproperlyConfigured, match="sharded and herd clients are not supported"):
        racefree(location, CLIENT_CLASS="django_redis.client.HerdClient")
    with pytest.raises(ImproperlyConfigured, match="IO_TIMEOUT"):
        racefree(location, IO_TIMEOUT=0)


def test_djangos_and_django_redis_spellings_of_the_default_are_accepted(redis_server, prefix):
    from django.core.cache.backends.redis import RedisSerializer

    theirs = stock(redis_server.location, prefix)
    for options in ({"serializer": "django.core.cache.backends.redis.RedisSerializer"},
                    {"serializer": RedisSerializer},
                    {"SERIALIZER": "django_redis.serializers.pickle.PickleSerializer"},
                    {"CLIENT_CLASS": "django_redis.client.DefaultClient"}):
        cache = racefree(redis_server.location, prefix, **options)
        cache.set("shared", {"options": list(options)})
        cache.set("n", 7)
        assert theirs.get("shared") == {"options": list(options)}
        assert theirs.incr("n") == 8


# -- stats and checks ---------------------------------------------------------------------


def test_stats_count_operations_and_connections(fresh_redis):
    cache = racefree(fresh_redis.location, IO_TIMEOUT=0.5)
    for key in ("a", "b", "c"):
        cache.set(key, key)
    cache.set_many({"d": 1, "e": 2})
    assert cache.add("a", "again") is False
    assert cache.add("f", "new") is True
    assert cache.get("a") == "a" and cache.get("zz") is None
    assert cache.get_many(["a", "b", "zz"]) == {"a": "a", "b": "b"}
    assert cache.delete("a") is True and cache.delete("zz") is False
    cache.delete_many(["b", "c", "zz"])
    stats = cache.stats()
    assert {name: stats[name] for name in ("hits", "misses", "sets", "deletes", "errors")} == {
        "hits": 3, "misses": 2, "sets": 6, "deletes": 3, "errors": 0}
    server = f"127.0.0.1:{fresh_redis.port}"
    assert stats["servers"] == {server: {"idle": 1, "in_use": 0, "connects": 1, "combined": 0}}
    # A call stuck on a frozen server holds its connection, then loses it.
    outcome = []

    def stuck_get():
        try:
            outcome.append(cache.get("d"))
        except CacheTimeoutError as error:
            outcome.append(type(error))

    fresh_redis.pause()
    try:
        stuck = threading.Thread(target=stuck_get)
        stuck.start()
        wait_until(lambda: cache.stats()["servers"][server]["in_use"] == 1, seconds=0.4, what="in_use 1")
        stuck.join()
    finally:
        fresh_redis.resume()
    assert outcome == [CacheTimeoutError]
    stats = cache.stats()
    assert stats["errors"] == 1
    assert stats["servers"][server] == {"idle": 0, "in_use": 0, "connects": 1, "combined": 0}


def test_system_checks_warn_about_a_redis_server_that_does_not_answer(redis_server):
    down_port = free_port()
    caches_setting = {
        "up": {"BACKEND": BACKEND, "LOCATION": redis_server.location},
        "down": {"BACKEND": BACKEND, "LOCATION": [redis_server.location, f"redis://127.0.0.1:{down_port}"]},
    }
    with override_settings(CACHES=caches_setting):
        messages = check_caches()
    assert [(m.id, m.level) for m in messages] == [("racefree.W001", checks.WARNING)]
    (warning,) = messages
    assert "CACHES['down']" in warning.msg
    assert f"127.0.0.1:{down_port}" in warning.msg and f"127.0.0.1:{redis_server.port}'" not in warning.msg


def test_system_checks_say_a_refused_login_is_about_the_password(passworded):
    with override_settings(CACHES={"wrong": {"BACKEND": BACKEND, "LOCATION": passworded.location}}):
        (message,) = check_caches()
    assert message.id == "racefree.W001"
    assert "PASSWORD" in message.hint


# -- Locks -----------------------------------------------------------------------------------
# racefree's generic lock (backends/_stampede.py) on Redis: add to take it,
# compare-and-delete to give it back. The scenarios are test_stampede's.


@pytest.fixture
def redis_spec(redis_server, prefix):
    """test_stampede's backend spec, for the Redis backend."""
    return {"kind": "redis", "backend": BACKEND, "location": redis_server.location,
            "params": {"KEY_PREFIX": prefix, "OPTIONS": {}}}


def test_a_lock_excludes_a_second_holder_until_released(redis_spec, redis_server):
    cache = stampede.make(redis_spec)
    lock = cache.lock("resource", timeout=1.5)
    assert lock.acquire(wait=0)
    # The lease, rounded up to whole seconds, is the entry's TTL.
    assert 1000 < int(redis_server.cli("PTTL", cache.make_key(lock._key))) <= 2000
    assert cache.lock("resource").acquire(wait=0) is False
    assert lock.release() is True
    assert cache.lock("resource").acquire(wait=0) is True
    stampede.test_lock_excludes_across_threads(redis_spec)


def test_a_holder_whose_lease_expired_never_releases_the_next_holders_lock(redis_spec):
    stampede.test_lock_wait_runs_out_and_a_lease_expires(redis_spec)
    stampede.test_a_release_never_frees_the_next_holders_lock(redis_spec)


def test_an_async_lock_excludes(redis_spec):
    stampede.test_async_lock(redis_spec)
