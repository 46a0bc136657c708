"""Stampede-safe get_or_set and cache locks, on every racefree backend and
its real server: one computation per miss across threads and processes, a
killed computer's lease running out, a failing computation, locks that
exclude, leases that expire, early refresh, and a hit that costs one get."""

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from conftest import SERVERS
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils.module_loading import import_string

import racefree.backends._stampede as stampede_module
import racefree.backends.memcached as memcached_module
from racefree.backends._stampede import _named, wakeups
from racefree.backends.forwarding import ForwardingCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache
from racefree.exceptions import LockNotAcquired, LockNotOwned

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support", "get_or_set_child.py")
COMPUTE_SECONDS = 0.2


def backend_spec(request, memcached, tmp_path):
    """How to build the backend, here and in child processes."""
    options = {}
    if request.param == "memcached":
        spec = {"backend": "racefree.backends.memcached.MemcachedCache", "location": memcached.location,
                "params": {"KEY_PREFIX": uuid.uuid4().hex[:8]}}
    elif request.param == "redis":
        spec = {"backend": "racefree.backends.redis.RedisCache", "location": SERVERS["redis"].location,
                "params": {"KEY_PREFIX": uuid.uuid4().hex[:8]}}
    elif request.param in ("file", "forwarding"):
        options = {"MAX_ENTRIES": 1_000_000}
        spec = {"backend": "racefree.backends.filebased.FileBasedCache", "location": str(tmp_path / "cache")}
    else:
        options = {"MAX_ENTRIES": 1_000_000}
        spec = {"backend": "racefree.backends.db.DatabaseCache", "location": request.getfixturevalue("table")}
    spec.setdefault("params", {})["OPTIONS"] = options
    db = connection.settings_dict
    spec["databases"] = {"default": {name: db[name] for name in ("ENGINE", "NAME", "USER", "HOST", "PORT")}}
    spec["time_zone"] = settings.TIME_ZONE
    spec["kind"] = request.param
    if request.param != "forwarding":
        yield spec
        return
    # Forwarding to the file cache, configured in CACHES for the whole test.
    spec["alias"] = f"target-{uuid.uuid4().hex[:6]}"
    target = {"BACKEND": spec["backend"], "LOCATION": spec["location"], **spec["params"]}
    with override_settings(CACHES={**settings.CACHES, spec["alias"]: target}):
        yield spec


@pytest.fixture(params=["memcached", "redis", "file", "database", "forwarding"])
def spec(request, memcached, tmp_path):
    """Every racefree backend (the forwarding one to a file cache)."""
    yield from backend_spec(request, memcached, tmp_path)


@pytest.fixture(params=["memcached", "redis", "file", "database"])
def store_spec(request, memcached, tmp_path):
    """The backends with a store of their own, for child processes and
    their own OPTIONS."""
    yield from backend_spec(request, memcached, tmp_path)


def make(spec, **options):
    if spec["kind"] == "forwarding":
        assert not options, "the forwarded alias's OPTIONS are set by the fixture"
        return ForwardingCache(spec["alias"], {})
    params = dict(spec["params"], OPTIONS={**spec["params"].get("OPTIONS", {}), **options})
    return import_string(spec["backend"])(spec["location"], params)


class Calls:
    """Computations, counted in a file every process appends to."""

    def __init__(self, path):
        self.path = str(path)

    def record(self, what):
        with open(self.path, "a") as f:
            f.write(f"{what} {os.getpid()} {threading.get_ident()}\n")

    def count(self, what):
        if not os.path.exists(self.path):
            return 0
        with open(self.path) as f:
            return sum(1 for line in f if line.split()[0] == what)

    def computation(self, value="value", seconds=COMPUTE_SECONDS, error=None):
        def compute():
            self.record("start")
            time.sleep(seconds)
            if error is not None:
                self.record("raised")
                raise error
            self.record("done")
            return value

        return compute


def run_threads(count, target):
    results, errors = [], []

    def run(index):
        try:
            results.append(target(index))
        except BaseException as error:  # collected and asserted on
            errors.append((index, error))

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, errors


@pytest.mark.cross_version
def test_thirty_two_threads_missing_at_once_compute_once(spec, tmp_path):
    calls = Calls(tmp_path / "calls")
    compute = calls.computation("computed")
    start = threading.Barrier(32, timeout=30)

    def call(index):
        cache = make(spec)  # each thread its own backend object, as caches[...] gives
        start.wait()
        return cache.get_or_set("hot", compute, 60)

    results, errors = run_threads(32, call)
    assert errors == []
    assert results == ["computed"] * 32
    assert calls.count("start") == 1


@pytest.mark.cross_version
def test_four_processes_of_eight_threads_compute_once(store_spec, tmp_path):
    calls = tmp_path / "calls"
    child_spec = dict(store_spec, key="hot", threads=8, start_at=time.time() + 1.5, sleep=COMPUTE_SECONDS,
                      calls=str(calls), mode="compute")
    children = [subprocess.Popen([sys.executable, CHILD, json.dumps(child_spec)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(4)]
    reports = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        reports.extend(json.loads(out))
    assert len(reports) == 32
    assert [r for r in reports if "error" in r] == []
    values = {r["value"] for r in reports}
    assert len(values) == 1 and values.pop().startswith("value-")
    assert Calls(calls).count("start") == 1


@contextlib.contextmanager
def hanging_computer(spec, calls):
    """A child process whose get_or_set of "hot" computes forever: yields it
    once it started computing, and kills it at the end."""
    child_spec = dict(spec, key="hot", threads=1, start_at=0, sleep=0, calls=calls.path, mode="hang")
    child = subprocess.Popen([sys.executable, CHILD, json.dumps(child_spec)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while calls.count("start") == 0:
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "the child never started computing"
            time.sleep(0.02)
        yield child
    finally:
        child.kill()
        child.wait()


def test_a_killed_computer_frees_the_key_within_its_lease(store_spec, tmp_path):
    lease = 2
    options = {**store_spec["params"]["OPTIONS"], "LOCK_LEASE": lease}
    store_spec = dict(store_spec, params=dict(store_spec["params"], OPTIONS=options))
    calls = Calls(tmp_path / "calls")
    with hanging_computer(store_spec, calls) as child:
        locked_at = time.monotonic()
        waiting = threading.Barrier(9, timeout=30)

        def call(index):
            cache = make(store_spec)
            waiting.wait()
            value = cache.get_or_set("hot", calls.computation("recomputed"), 60)
            return value, time.monotonic()

        holder = threading.Thread(target=lambda: (waiting.wait(), time.sleep(0.3), child.kill()))
        holder.start()
        results, errors = run_threads(8, call)
        holder.join()
    assert errors == []
    assert [value for value, _ in results] == ["recomputed"] * 8
    # Started: the killed child's computation, then exactly one waiter's.
    assert calls.count("start") == 2 and calls.count("done") == 1
    # Everyone had the value once the lease ran out (memcached counts whole
    # seconds, so up to a second sooner) and one computation ran.
    slowest = max(at for _, at in results) - locked_at
    assert slowest < lease + 1 + COMPUTE_SECONDS + 1.0


def test_a_failing_computation_raises_for_its_caller_only_and_the_next_computes(spec, tmp_path):
    calls = Calls(tmp_path / "calls")
    failing = calls.computation(error=RuntimeError("database is down"))
    cache = make(spec)
    first_error = []

    def first():
        try:
            cache.get_or_set("hot", failing, 60)
        except RuntimeError as error:
            first_error.append(error)

    computing = threading.Thread(target=first)
    computing.start()
    while calls.count("start") == 0:
        time.sleep(0.01)

    def call(index):
        return make(spec).get_or_set("hot", calls.computation("second try"), 60)

    results, errors = run_threads(8, call)
    computing.join()
    assert [str(e) for e in first_error] == ["database is down"]
    assert errors == []
    assert results == ["second try"] * 8
    assert calls.count("raised") == 1 and calls.count("done") == 1
    assert cache.get("hot") == "second try"


@pytest.mark.cross_version
def test_tasks_on_four_loops_compute_once(spec, tmp_path):
    calls = Calls(tmp_path / "calls")
    compute = calls.computation("async value", seconds=0.05)

    def loop(index):
        cache = make(spec)

        async def tasks():
            return await asyncio.gather(*(cache.aget_or_set("hot", compute, 60) for _ in range(25)))

        return asyncio.run(tasks())

    results, errors = run_threads(4, loop)
    assert errors == []
    assert [value for values in results for value in values] == ["async value"] * 100
    assert calls.count("start") == 1


def test_lock_excludes_across_threads(spec):
    """Eight threads read-modify-write one entry (get, then set: not
    atomic) under the lock: no update is lost."""
    make(spec).set("counter", 0)
    rounds = 25

    def work(index):
        cache = make(spec)
        for _ in range(rounds):
            with cache.lock("counter lock", wait=30):
                cache.set("counter", cache.get("counter") + 1)

    _, errors = run_threads(8, work)
    assert errors == []
    assert make(spec).get("counter") == 8 * rounds


def test_lock_wait_runs_out_and_a_lease_expires(spec):
    cache = make(spec)
    holder = cache.lock("name", timeout=1)
    assert holder.acquire(wait=0)
    started = time.monotonic()
    with pytest.raises(LockNotAcquired):
        with cache.lock("name", wait=0.3):
            pass
    assert 0.25 < time.monotonic() - started < 2
    # Never given back: the lease (1 s, counted in whole seconds) frees it.
    later = cache.lock("name", wait=3)
    assert later.acquire()
    # The first holder's late release must not free the new holder's lock.
    assert holder.release() is False
    assert cache.lock("name").acquire(wait=0) is False
    assert later.release() is True
    assert cache.lock("name").acquire(wait=0) is True


def test_a_release_never_frees_the_next_holders_lock(spec):
    """If the lease ran out between a release's read of the lock and its
    delete (simulated: a read of the lock entry is followed by its expiry
    and a new holder), a read-then-delete release would delete the new
    holder's lock. The release is one compare-and-delete instead."""
    cache = make(spec)
    first = cache.lock("contested", timeout=30)
    assert first.acquire()
    second = cache.lock("contested", timeout=30)
    read = cache.get

    def read_then_lease_runs_out(key, default=None, version=None):
        value = read(key, default, version)
        if key == first._key and not second.held:
            cache.delete(key, version)
            assert second.acquire(wait=0)
        return value

    cache.get = read_then_lease_runs_out
    try:
        first.release()
    finally:
        del cache.get
    if not second.held:
        # A compare-and-delete never reads the lock first: take it here.
        assert second.acquire(wait=0)
    assert cache.lock("contested").acquire(wait=0) is False, "the second holder's lock was deleted"
    assert second.release() is True


def test_async_lock(spec):
    cache = make(spec)

    async def use():
        async with cache.lock("async name", wait=1) as lock:
            assert lock.held
            assert await cache.lock("async name").aacquire(wait=0) is False
        assert await cache.lock("async name").aacquire(wait=0) is True

    asyncio.run(use())


def test_lock_keys_are_versioned_and_fit_any_key(spec):
    cache = make(spec)
    long_name = "k" * 240  # with the lock's own suffix it would pass memcached's 250 bytes
    with cache.lock(long_name, version=1):
        with cache.lock(long_name, version=2, wait=0):
            pass
        with pytest.raises(LockNotAcquired):
            with cache.lock(long_name, version=1, wait=0):
                pass


def test_lock_arguments_are_checked(spec):
    cache = make(spec)
    for bad in (0, -1, "10", True):
        with pytest.raises(ValueError):
            cache.lock("x", timeout=bad)
    with pytest.raises(ValueError):
        cache.lock("x", wait=-1)
    lock = cache.lock("x")
    with pytest.raises(RuntimeError):
        lock.release()
    with lock:
        with pytest.raises(RuntimeError):
            lock.acquire()


def test_early_refresh_recomputes_once_while_others_read_the_old_value(store_spec, tmp_path):
    cache = make(store_spec, EARLY_REFRESH=3)
    calls = Calls(tmp_path / "calls")
    # Value for 6 s, "fresh" for 3 (memcached: up to a second less).
    assert cache.get_or_set("hot", calls.computation("old", seconds=0), 6) == "old"
    assert cache.get_or_set("hot", calls.computation("unused", seconds=0), 6) == "old"
    assert calls.count("start") == 1
    time.sleep(3.3)
    slow_refresh = calls.computation("new", seconds=0.5)
    start = threading.Barrier(8, timeout=30)

    def call(index):
        mine = make(store_spec, EARLY_REFRESH=3)
        start.wait()
        began = time.monotonic()
        return mine.get_or_set("hot", slow_refresh, 6), time.monotonic() - began

    results, errors = run_threads(8, call)
    assert errors == []
    values = sorted(value for value, _ in results)
    # One caller refreshed; the other seven read the old value without waiting.
    assert values == ["new"] + ["old"] * 7
    assert all(seconds < 0.4 for value, seconds in results if value == "old")
    assert calls.count("start") == 2
    assert cache.get_or_set("hot", calls.computation("unused", seconds=0), 6) == "new"
    assert calls.count("start") == 2


def test_early_refresh_is_off_by_default_and_skips_short_timeouts(store_spec, tmp_path):
    calls = Calls(tmp_path / "calls")
    cache = make(store_spec)
    cache.get_or_set("k", calls.computation(seconds=0), 60)
    assert cache.get("k") == "value"
    assert not cache.has_key(_named("fresh", "k"))
    short = make(store_spec, EARLY_REFRESH=30)
    assert short.get_or_set("short", calls.computation("v", seconds=0), 10) == "v"
    assert not short.has_key(_named("fresh", "short"))
    assert short.get_or_set("short", calls.computation("w", seconds=0), 10) == "v"
    assert calls.count("start") == 2


@pytest.mark.parametrize("kind", ["memcached", "redis"])
def test_a_down_server_with_ignore_exceptions_computes_at_once(request, kind):
    server = request.getfixturevalue(f"fresh_{kind}")
    server.kill()
    backend = MemcachedCache if kind == "memcached" else RedisCache
    cache = backend(server.location, {"OPTIONS": {"IGNORE_EXCEPTIONS": True}})
    started = time.monotonic()
    assert cache.get_or_set("k", lambda: "computed", 60) == "computed"
    assert time.monotonic() - started < 1.0


def test_stampede_options_are_checked(memcached, redis_server):
    from django.core.exceptions import ImproperlyConfigured

    for name, bad in (("LOCK_LEASE", 0), ("GET_OR_SET_WAIT", "5"), ("EARLY_REFRESH", -1)):
        with pytest.raises(ImproperlyConfigured, match=name):
            MemcachedCache(memcached.location, {"OPTIONS": {name: bad}})
        with pytest.raises(ImproperlyConfigured, match=name):
            RedisCache(redis_server.location, {"OPTIONS": {name: bad}})



def test_invalidate_makes_get_or_set_recompute_on_every_backend(spec):
    cache = make(spec)
    cache.set("k", "old", 600)
    assert cache.invalidate("k") is True
    assert cache.invalidate("missing") is False
    assert cache.get("k") is None and not cache.has_key("k")
    assert cache.get_or_set("k", lambda: "new", 600) == "new"
    assert cache.get("k") == "new"

    async def again():
        assert await cache.ainvalidate("k") is True
        return await cache.aget_or_set("k", lambda: "newer", 600)

    assert asyncio.run(again()) == "newer"


def test_lock_extend_and_reacquire(spec):
    """redis-py's extend() and reacquire(): the lease lengthened, only
    while the lock's entry still holds this lock's token."""
    cache = make(spec)
    lock = cache.lock("extended", timeout=1)
    with pytest.raises(RuntimeError):
        lock.extend(1)
    assert lock.acquire(blocking=False) is True
    assert lock.extend(2) is True
    # Past the first lease (on memcached, whose lease of 1 s may last 2 s).
    time.sleep(2.1)
    assert lock.owned() and cache.lock("extended").acquire(blocking=False) is False
    assert lock.reacquire() is True and lock.owned()
    for bad in (0, -1, "1", float("nan"), True):
        with pytest.raises(ValueError):
            lock.extend(bad)
    # A short lease, run out: the next holder's lock is left alone.
    assert lock.extend(0.5, replace_ttl=True) is True
    other = cache.lock("extended", timeout=30)
    assert other.acquire(wait=5) is True
    with pytest.raises(LockNotOwned):
        lock.extend(10)
    with pytest.raises(LockNotOwned):
        lock.reacquire()
    assert other.owned() and not lock.owned()
    assert lock.release() is False and other.locked()
    assert other.extend(1) is True and other.release() is True

    async def use():
        held = cache.lock("async extended", timeout=1)
        assert await held.aacquire(blocking=False) is True
        assert await held.aextend(30) is True and await held.areacquire() is True
        assert await held.aowned() and await held.arelease() is True
        with pytest.raises(RuntimeError):
            await held.aextend(1)

    asyncio.run(use())


def test_django_redis_lock_spellings(spec):
    """django-redis's lock() and redis-py's Lock arguments: blocking,
    blocking_timeout, sleep, acquire(False), locked(), owned()."""
    cache = make(spec)
    holder = cache.lock("spelled", timeout=30)
    assert not holder.locked() and not holder.owned()
    assert holder.acquire(blocking=False) is True
    assert holder.locked() and holder.owned()
    other = cache.lock("spelled", blocking_timeout=0.3, sleep=0.02)
    started = time.monotonic()
    assert other.acquire() is False
    assert 0.25 < time.monotonic() - started < 2
    started = time.monotonic()
    assert other.acquire(False) is False and other.acquire(blocking=False) is False
    assert other.acquire(blocking_timeout=0) is False
    assert time.monotonic() - started < 1
    assert other.locked() and not other.owned()
    with pytest.raises(LockNotAcquired):
        with cache.lock("spelled", blocking=False):
            pass
    assert holder.release() is True
    assert not other.locked() and not holder.owned()
    assert other.acquire(True) is True  # redis-py's acquire(blocking=True): the lock's own wait
    assert other.owned()
    assert other.release() is True
    for bad in ({"wait": 1, "blocking_timeout": 1}, {"sleep": 0}, {"sleep": "1"}, {"blocking_timeout": -1}):
        with pytest.raises(ValueError):
            cache.lock("x", **bad)
    with pytest.raises(ValueError):
        cache.lock("x").acquire(wait=1, blocking_timeout=1)
    with pytest.raises(ValueError, match="thread_local"):
        cache.lock("x", thread_local=True)
    # django-redis's thread_local=False is what a racefree lock is: another
    # thread may give it back.
    shared = cache.lock("across threads", thread_local=False)
    assert shared.acquire(blocking=False) is True
    released = []
    thread = threading.Thread(target=lambda: released.append(shared.release()))
    thread.start()
    thread.join()
    assert released == [True] and not shared.locked()

    async def use():
        lock = cache.lock("async spelled")
        assert await lock.aacquire(blocking=False) is True
        assert await lock.alocked() and await lock.aowned()
        assert await cache.lock("async spelled").aacquire(False) is False
        assert await lock.arelease() is True
        assert not await lock.alocked()

    asyncio.run(use())


def test_a_release_wakes_this_process_s_waiters_at_once(spec):
    """A waiter in the holder's process takes the lock when it is given
    back, not at its next poll (here 10 s away); threads and tasks alike,
    and nothing is left registered afterwards."""
    cache = make(spec)
    holder = cache.lock("woken", timeout=30)
    assert holder.acquire(blocking=False)
    took = {}

    def wait_in_thread():
        waiter = cache.lock("woken", timeout=30, sleep=10)
        assert waiter.acquire(wait=20)
        took["thread"] = time.monotonic()
        waiter.release()

    thread = threading.Thread(target=wait_in_thread)
    thread.start()
    time.sleep(0.3)  # the waiter has tried once and is pausing
    released = time.monotonic()
    assert holder.release() is True
    thread.join(15)
    # Well before the waiter's next poll.
    assert took["thread"] - released < 5

    async def wait_in_task():
        held = cache.lock("woken async", timeout=30)
        assert await held.aacquire(blocking=False)
        waiter = cache.lock("woken async", timeout=30, sleep=10)
        task = asyncio.ensure_future(waiter.aacquire(wait=20))
        await asyncio.sleep(0.3)
        # Given back from another thread, as another request would.
        released = time.monotonic()
        assert await asyncio.to_thread(held.release) is True
        assert await task
        woken = time.monotonic() - released
        await waiter.arelease()
        return woken

    assert asyncio.run(wait_in_task()) < 5
    assert wakeups._waiting == {}


def test_get_or_set_waiters_in_the_process_are_woken_when_the_value_is_stored(spec, monkeypatch):
    """Eight threads miss at once: one computes (0.5 s), the other seven get
    its value, each woken when the computer gives the lock back rather
    than at its next poll (the longest pause here is 10 s)."""
    cache = make(spec)
    calls = []
    stored = {}

    def compute():
        calls.append(1)
        time.sleep(0.5)
        stored["at"] = time.monotonic()
        return "computed"

    results = {}

    def call(n):
        results[n] = (cache.get_or_set("slow", compute, 60), time.monotonic())

    # Polls 10 s apart: a waiter that got the value sooner was woken.
    for module, first, longest in ((stampede_module, "FIRST_PAUSE", "LONGEST_PAUSE"),
                                   (memcached_module, "FIRST_POLL", "LONGEST_POLL")):
        monkeypatch.setattr(module, first, 10)
        monkeypatch.setattr(module, longest, 10)
    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1
    assert sorted(value for value, _ in results.values()) == ["computed"] * 8
    assert max(at for _, at in results.values()) - stored["at"] < 5
