"""get_or_set on memcached in the meta protocol itself, on a real server:
one ``mg`` per hit, one winner per expiry (``N``), early refresh (``R``)
and invalidation (``md … I``) serving the old value while one caller
recomputes, a failing or killed winner handing its turn on, and what plain
reads and Django's own PyMemcacheCache make of placeholders and
invalidated items. (test_stampede.py runs the behaviour every backend
shares, memcached included.)"""

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid

import pytest
from django.conf import settings
from django.core.cache.backends.memcached import PyMemcacheCache
from django.test import override_settings
from test_stampede import CHILD, Calls, hanging_computer, run_threads

from racefree.backends import memcached as memcached_backend
from racefree.backends.forwarding import ForwardingCache
from racefree.backends.memcached import MemcachedCache

#: The computation of the load tests, as the issue sets it.
COMPUTE = 0.05
#: What a busy 2-core machine may add to a call beyond the computation and
#: one re-read pause: 64 threads in 4 processes share the cores and each
#: process's GIL (a thread waits up to sys.getswitchinterval() per turn).
SCHEDULING = 0.25


def make(location, prefix, **options):
    return MemcachedCache(location, {"KEY_PREFIX": prefix, "OPTIONS": options})


@pytest.fixture
def prefix():
    return uuid.uuid4().hex[:8]


@pytest.fixture
def cache(memcached, prefix):
    return make(memcached.location, prefix)


def computation(calls, value, seconds=0.2, error=None):
    return calls.computation(value, seconds=seconds, error=error)


def loop_in_processes(memcached, prefix, calls, *, processes, threads, duration, ttl, options=None, pace=0.005):
    """Threads in child processes calling get_or_set on one hot key for
    ``duration`` seconds; every call as (start, seconds, computed, value)."""
    spec = {"backend": "racefree.backends.memcached.MemcachedCache", "location": memcached.location,
            "params": {"KEY_PREFIX": prefix, "OPTIONS": options or {}}, "key": "hot", "threads": threads,
            "start_at": time.time() + 2.0, "duration": duration, "sleep": COMPUTE, "ttl": ttl, "pace": pace,
            "calls": calls.path, "mode": "loop"}
    children = [subprocess.Popen([sys.executable, CHILD, json.dumps(spec)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    reports = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        reports.extend(json.loads(out))
    return reports


def computation_starts(calls):
    with open(calls.path) as f:
        return sorted(float(line.split()[1]) for line in f if line.startswith("start "))


def test_sixty_four_threads_in_four_processes_compute_once_per_expiry(memcached, prefix, tmp_path):
    calls = Calls(tmp_path / "calls")
    reports = loop_in_processes(memcached, prefix, calls, processes=4, threads=16, duration=7.0, ttl=2)
    assert [r for r in reports if str(r[3]).startswith("error")] == []
    starts = computation_starts(calls)
    # The first fill and then one per expiry: a 2 s TTL on memcached's
    # whole-second clock lives more than 1 s, so two computations less than
    # a second apart would answer one expiry.
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert len(starts) >= 3, starts
    assert min(gaps) > 1.0, gaps
    assert len(starts) == len({r[3] for r in reports})  # each computation's value served, none lost
    assert sum(1 for report in reports if report[2]) == len(starts)
    # The callers that came while a computation ran waited for it: no longer
    # than the computation and one re-read pause (typically), and never more
    # than the machine's scheduling on top.
    step = memcached_backend.LONGEST_POLL
    waiters = sorted(seconds for began, seconds, computed, _ in reports
                     if not computed and any(start <= began <= start + COMPUTE for start in starts))
    assert len(waiters) > 64
    assert waiters[len(waiters) // 2] < COMPUTE + step, waiters
    assert waiters[-1] < COMPUTE + step + SCHEDULING, waiters[-5:]
    assert max(seconds for _, seconds, _, _ in reports) < COMPUTE + step + SCHEDULING
    assert len(reports) > 64 * 20


def test_with_early_refresh_no_caller_waits_after_the_first_fill(memcached, prefix, tmp_path):
    calls = Calls(tmp_path / "calls")
    slow = 0.3
    cache = make(memcached.location, prefix, EARLY_REFRESH=2)
    first = cache.get_or_set("hot", computation(calls, "first", seconds=0), 4)
    assert first == "first"
    served = []
    stop = threading.Event()

    def call(index):
        mine = make(memcached.location, prefix, EARLY_REFRESH=2)
        serial = iter(range(1000))

        def refresh():
            calls.record("start")
            time.sleep(slow)
            return f"refresh-{index}-{next(serial)}"

        while not stop.is_set():
            started = time.monotonic()
            value = mine.get_or_set("hot", refresh, 4)
            served.append((time.monotonic() - started, value))
            time.sleep(0.01)

    threads = [threading.Thread(target=call, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(7)
    stop.set()
    for thread in threads:
        thread.join()
    refreshes = calls.count("start") - 1  # the first fill counted too
    # A 4 s value refreshed when under 2 s (to 3, on memcached's clock) are
    # left: at least once in 7 s, never more often than once a second.
    assert 2 <= refreshes <= 7, refreshes
    assert len({value for _, value in served}) == refreshes + 1
    # Everyone but the refreshing caller got the value at once.
    quick = [seconds for seconds, _ in served if seconds < slow]
    assert len(served) - len(quick) == refreshes, sorted(seconds for seconds, _ in served)[-refreshes - 3:]
    assert max(quick) < slow / 2


class ServerCommands:
    """What memcached counted (its ``stats``) during the ``with`` body."""

    def __init__(self, server):
        self.server = server

    def __enter__(self):
        self.before = self.server.stats()
        return self

    def __exit__(self, *exc_info):
        self.after = self.server.stats()

    def __getitem__(self, name):
        return self.after[name] - self.before[name]

    def deletes(self):
        return self["delete_hits"] + self["delete_misses"]


@pytest.mark.cross_version
@pytest.mark.parametrize("early_refresh", [0, 30])
def test_a_hit_is_one_mg(memcached, prefix, early_refresh):
    cache = make(memcached.location, prefix, EARLY_REFRESH=early_refresh)
    assert cache.get_or_set("hot", lambda: "value", 600) == "value"
    with ServerCommands(memcached) as commands:
        for _ in range(20):
            assert cache.get_or_set("hot", lambda: "other", 600) == "value"
    assert commands["cmd_get"] == 20 and commands["get_hits"] == 20
    assert commands["cmd_set"] + commands["cmd_touch"] + commands.deletes() == 0
    assert commands["total_connections"] == 1  # the stats probe's own: the hits dialed none


def test_an_uncontended_miss_is_one_mg_then_one_ms(cache, memcached):
    with ServerCommands(memcached) as commands:
        assert cache.get_or_set("cold", lambda: "value", 60) == "value"
    # The mg that missed (and left the placeholder) and the ms of the value:
    # no lock entry, no re-read, no delete.
    assert commands["cmd_get"] == 1 and commands["cmd_set"] == 1 and commands.deletes() == 0
    assert cache.get("cold") == "value"


def test_invalidate_under_load_serves_the_old_value_while_one_caller_recomputes(memcached, prefix, tmp_path):
    calls = Calls(tmp_path / "calls")
    cache = make(memcached.location, prefix)
    cache.set("hot", "old", 600)
    served, errors = [], []
    stop = threading.Event()
    running = threading.Barrier(17, timeout=30)

    def call(index):
        mine = make(memcached.location, prefix)
        running.wait()
        while not stop.is_set():
            started = time.monotonic()
            try:
                value = mine.get_or_set("hot", computation(calls, "new", seconds=0.3), 600)
            except Exception as error:  # collected and asserted on
                errors.append(error)
                return
            served.append((started, time.monotonic() - started, value))

    threads = [threading.Thread(target=call, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    running.wait()
    time.sleep(0.2)
    invalidated_at = time.monotonic()
    assert cache.invalidate("hot") is True
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert calls.count("start") == 1 and calls.count("done") == 1
    assert {value for _, _, value in served} == {"old", "new"}
    # Old until the recomputed value was stored (when its caller returned),
    # new from then on.
    stored_at = min(started + seconds for started, seconds, value in served if value == "new")
    assert [value for started, _, value in served if started > stored_at] == ["new"] * sum(
        1 for started, _, _ in served if started > stored_at)
    assert all(value == "old" for started, seconds, value in served if started + seconds < stored_at)
    # The 0.3 s recomputation kept no one else waiting: the old value came at once.
    during = [seconds for started, seconds, value in served if value == "old" and started > invalidated_at]
    assert during and max(during) < 0.15
    assert cache.get("hot") == "new"


@pytest.mark.cross_version
def test_plain_reads_miss_an_invalidated_value_and_add_stores_over_it(cache):
    cache.set_many({"a": 1, "b": "kept", "c": [3]}, 600)
    assert cache.invalidate("a") is True and cache.invalidate("c") is True
    assert cache.invalidate("missing") is False
    assert cache.get("a") is None and cache.get("a", "default") == "default"
    assert cache.get_many(["a", "b", "c"]) == {"b": "kept"}
    assert cache.has_key("a") is False and cache.has_key("b") is True
    assert cache.touch("c", 600) is False
    assert cache.touch("c", None) is False
    # The touch left the invalidated item its own expiry (LOCK_LEASE, + 1 s).
    item, (_, stale, _, ttl) = cache._store.claim(cache.make_and_validate_key("c"), 11, None)
    assert item is not None and stale and 0 < ttl <= 11
    assert cache.add("a", "added") is True and cache.get("a") == "added"
    assert cache.add("b", "not added") is False and cache.get("b") == "kept"
    cache.set("c", "set again")
    assert cache.get("c") == "set again"


@pytest.mark.parametrize("read", ["get", "get_many", "has_key"])
def test_a_plain_read_of_an_invalidated_value_leaves_the_refresh_to_get_or_set(memcached, prefix, tmp_path, read):
    # memcached hands the refresh of an invalidated item to the first meta
    # get of it, whichever it is: a plain read must pass it on, or every
    # get_or_set caller would serve the old value until it expired.
    calls = Calls(tmp_path / "calls")
    cache = make(memcached.location, prefix)
    cache.set("hot", "old", 600)
    cache.invalidate("hot")
    getattr(cache, read)(["hot"] if read == "get_many" else "hot")
    start = threading.Barrier(8, timeout=30)

    def call(index):
        mine = make(memcached.location, prefix)
        start.wait()
        return mine.get_or_set("hot", computation(calls, "new"), 600)

    results, errors = run_threads(8, call)
    assert errors == []
    assert calls.count("start") == 1
    assert sorted(results) == ["new"] + ["old"] * 7


@pytest.mark.cross_version
def test_a_failing_winner_passes_its_turn_on_at_once(cache, tmp_path):
    calls = Calls(tmp_path / "calls")
    lease = 10  # the turn must not wait for it
    # A miss: the placeholder is gone as soon as the winner fails.
    with pytest.raises(RuntimeError, match="first"):
        cache.get_or_set("k", computation(calls, "x", seconds=0, error=RuntimeError("first")), 600)
    started = time.monotonic()
    assert cache.get_or_set("k", computation(calls, "second", seconds=0), 600) == "second"
    assert time.monotonic() - started < lease / 10
    # An invalidated value: readers keep it while the winner fails, and the
    # next caller recomputes.
    cache.invalidate("k")
    seen = []

    def fail_slowly():
        seen.append(cache.get_or_set("k", lambda: "unused", 600))  # another caller meanwhile
        raise ValueError("refresh failed")

    with pytest.raises(ValueError):
        cache.get_or_set("k", fail_slowly, 600)
    assert seen == ["second"]
    assert cache.get("k") is None  # still invalidated
    assert cache.get_or_set("k", computation(calls, "third", seconds=0), 600) == "third"
    assert cache.get("k") == "third"


def test_a_failing_early_refresh_keeps_the_value_and_the_next_caller_refreshes(memcached, prefix, tmp_path):
    calls = Calls(tmp_path / "calls")
    cache = make(memcached.location, prefix, EARLY_REFRESH=30)
    cache.set("k", "old", 20)  # within the refresh window at once
    with pytest.raises(KeyError):
        cache.get_or_set("k", computation(calls, "x", seconds=0, error=KeyError("refresh")), 60)
    assert cache.get("k") == "old"
    assert cache.get_or_set("k", computation(calls, "new", seconds=0), 60) == "new"
    assert calls.count("start") == 2


def test_a_killed_refresher_of_an_invalidated_value_leaves_it_served_until_its_lease(memcached, prefix, tmp_path):
    lease = 1
    calls = Calls(tmp_path / "calls")
    options = {"LOCK_LEASE": lease}
    cache = make(memcached.location, prefix, **options)
    cache.set("hot", "old", 600)
    cache.invalidate("hot")
    spec = {"backend": "racefree.backends.memcached.MemcachedCache", "location": memcached.location,
            "params": {"KEY_PREFIX": prefix, "OPTIONS": options}}
    with hanging_computer(spec, calls) as child:
        won_at = time.monotonic()
        child.kill()
        child.wait()
        # Served at once while the dead refresher's turn lasts...
        started = time.monotonic()
        assert cache.get_or_set("hot", computation(calls, "new", seconds=0), 600) == "old"
        assert time.monotonic() - started < 0.1
        # ...and recomputed once the invalidated item's lease ran out.
        while (value := cache.get_or_set("hot", computation(calls, "new", seconds=0), 600)) == "old":
            assert time.monotonic() - won_at < lease + 2 + 1, "the old value outlived its lease"
            time.sleep(0.05)
        assert value == "new"
    assert calls.count("start") == 2 and calls.count("done") == 1


def test_a_waiter_computes_itself_after_get_or_set_wait(memcached, prefix, tmp_path):
    calls = Calls(tmp_path / "calls")
    cache = make(memcached.location, prefix, GET_OR_SET_WAIT=0.5)
    holder = threading.Thread(target=lambda: cache.get_or_set("k", computation(calls, "slow", seconds=2), 600))
    holder.start()
    while calls.count("start") == 0:
        time.sleep(0.01)
    started = time.monotonic()
    assert cache.get_or_set("k", computation(calls, "impatient", seconds=0), 600) == "impatient"
    assert 0.5 <= time.monotonic() - started < 1.5
    holder.join()


def test_django_s_pymemcache_reads_a_placeholder_as_empty_and_values_as_written(memcached, prefix, tmp_path):
    calls = Calls(tmp_path / "calls")
    cache = make(memcached.location, prefix)
    stock = PyMemcacheCache(memcached.location, {"KEY_PREFIX": prefix})
    holder = threading.Thread(target=lambda: cache.get_or_set("k", computation(calls, {"made": 1}), 600))
    holder.start()
    while calls.count("start") == 0:
        time.sleep(0.01)
    # The placeholder is an empty item with flags 0: never someone else's value.
    assert stock.get("k", "missing") in ("missing", b"")
    assert cache.get("k", "missing") == "missing"
    holder.join()
    assert stock.get("k") == {"made": 1}
    stock.set("s", [1, 2], 600)
    assert cache.get_or_set("s", lambda: "unused", 600) == [1, 2]
    cache.invalidate("s")
    # Django's classic get cannot see the mark: it reads the old value, as
    # it would have until the recomputed one replaced it.
    assert stock.get("s") == [1, 2]


@pytest.mark.cross_version
def test_async_get_or_set_and_invalidate(memcached, prefix, tmp_path):
    calls = Calls(tmp_path / "calls")
    cache = make(memcached.location, prefix)

    async def main():
        compute = computation(calls, "computed", seconds=0.05)
        results = await asyncio.gather(*(cache.aget_or_set("k", compute, 600) for _ in range(50)))
        assert results == ["computed"] * 50
        assert await cache.ainvalidate("k") is True
        assert await cache.aget("k") is None
        return await cache.aget_or_set("k", computation(calls, "again", seconds=0), 600)

    assert asyncio.run(main()) == "again"
    assert calls.count("start") == 2


def test_forwarding_backend_invalidates_through_its_target(memcached, prefix):
    target = {"BACKEND": "racefree.backends.memcached.MemcachedCache", "LOCATION": memcached.location,
              "KEY_PREFIX": prefix}
    with override_settings(CACHES={**settings.CACHES, "mc": target}):
        forwarder = ForwardingCache("mc", {})
        forwarder.set("k", "old", 600)
        assert forwarder.invalidate("k") is True
        assert forwarder.get("k") is None
        # Invalidated, not deleted: get_or_set still has the old value to serve.
        assert make(memcached.location, prefix).get_or_set("k", lambda: "new", 600) == "new"
        assert asyncio.run(forwarder.ainvalidate("k")) is True
        assert forwarder.get("k") is None


def test_a_cancelled_async_caller_gives_back_the_win_it_was_bringing(cache, tmp_path):
    calls = Calls(tmp_path / "calls")

    async def main():
        for _ in range(20):
            key = f"k-{uuid.uuid4().hex[:6]}"
            task = asyncio.ensure_future(cache.aget_or_set(key, computation(calls, "never"), 600))
            await asyncio.sleep(0)  # the claim is on its way
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)  # its reply, and the give-back
            started = time.monotonic()
            assert await cache.aget_or_set(key, computation(calls, "next", seconds=0), 600) == "next"
            # At once, not after LOCK_LEASE (10 s).
            assert time.monotonic() - started < 1.0

    asyncio.run(main())
    assert calls.count("start") == 20  # the cancelled callers computed nothing
