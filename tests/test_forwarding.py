"""The generation-safe forwarding backend under real threads and targets."""

import asyncio
import inspect
import logging
import sys
import threading
import time

import pytest
from django.conf import settings
from django.core import signals
from django.core.cache import InvalidCacheBackendError, caches
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from support import tracked_backends
from support.tracked_backends import forget

from racefree.backends.forwarding import ForwardingCache

FORWARDING = "racefree.backends.forwarding.ForwardingCache"
TRACKED = "support.tracked_backends."


def locmem(name, backend="TrackedLocMemCache", **params):
    return {"BACKEND": TRACKED + backend, "LOCATION": name, **params}


@pytest.fixture
def caches_setting():
    """A CACHES of this test's own, which the test may change in place
    (as a site whose settings UI rewrites ``settings.CACHES`` does)."""
    setting = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "forwarded_backend": locmem("fwd-first"),
        "fwd": {"BACKEND": FORWARDING},
    }
    forget()
    with override_settings(CACHES=setting):
        yield settings.CACHES
    forget()


def test_forwards_calls_and_attributes_to_the_target(caches_setting):
    caches_setting["forwarded_backend"].update(KEY_PREFIX="site", TIMEOUT=42, OPTIONS={"MAX_ENTRIES": 7})
    cache = caches["fwd"]
    assert isinstance(cache, ForwardingCache)
    cache.set("k", "v")
    assert cache.get("k") == "v"
    assert "k" in cache
    assert cache.get_many(["k", "missing"]) == {"k": "v"}
    assert cache.get_or_set("other", lambda: 5) == 5
    cache.set("n", 1)
    assert cache.incr("n", 2) == 3
    assert cache.decr("n") == 2
    assert cache.incr_version("n") == 2
    assert cache.get("n", version=2) == 2
    # Attributes are the target's.
    assert (cache.key_prefix, cache.default_timeout, cache._max_entries) == ("site", 42, 7)
    assert cache.make_key("k") == "site:1:k"
    target = cache.backend
    assert type(target) is tracked_backends.TrackedLocMemCache
    assert target.get("k") == "v"
    # Setting an attribute sets the target's.
    cache._max_entries = 3
    assert target._max_entries == 3


def test_async_methods_forward(caches_setting):
    cache = caches["fwd"]

    async def main():
        await cache.aset("a", 1)
        assert await cache.aadd("a", 2) is False
        assert await cache.aincr("a", 5) == 6
        assert await cache.aget_many(["a", "b"]) == {"a": 6}
        assert await cache.aget_or_set("b", "x") == "x"
        await cache.adelete("a")
        return await cache.aget("a", "gone")

    assert inspect.iscoroutinefunction(ForwardingCache.aget)
    assert asyncio.run(main()) == "gone"


def test_one_reset_switches_every_thread_and_instance(caches_setting):
    caches_setting["forwarded_backend"] = locmem("fwd-a")
    seen = {}
    ready = threading.Barrier(5)
    reset_done = threading.Event()

    def worker(name):
        cache = caches["fwd"]  # this thread's own instance
        cache.set("where", name)
        seen[name, "before"] = cache.backend
        ready.wait(10)
        reset_done.wait(10)
        seen[name, "after"] = cache.backend
        seen[name, "value"] = cache.get("where")

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    ready.wait(10)
    generation = caches["fwd"].generation
    caches_setting["forwarded_backend"] = locmem("fwd-b")
    caches["fwd"].reset()
    reset_done.set()
    for thread in threads:
        thread.join()
    instances = {seen[f"t{i}", "before"] for i in range(4)}
    assert len(instances) == 1, "before: every thread on the one shared target"
    (old,) = instances
    for i in range(4):
        assert seen[f"t{i}", "after"] is caches["fwd"].backend is not old
        assert seen[f"t{i}", "value"] is None, "every thread now reads the new, empty target"
    assert caches["fwd"].generation == generation + 1
    assert old.closes == 1


def test_djblets_name_reset_backend(caches_setting):
    cache = caches["fwd"]
    first = cache.backend
    caches_setting["forwarded_backend"] = locmem("fwd-second")
    cache.reset_backend()
    assert cache.backend is not first
    assert first.closes == 1


def test_a_reload_is_logged(caches_setting, caplog):
    cache = caches["fwd"]
    cache.get("warm")
    generation = cache.generation
    with caplog.at_level(logging.INFO, logger="racefree"):
        cache.reset()
    assert f"cache 'forwarded_backend' reloaded (generation {generation + 1})" in caplog.text


@pytest.mark.cross_version
def test_threads_call_while_reset_alternates_targets_a_thousand_times(caches_setting, memcached):
    threads, resets = 32, 1000
    targets = [
        locmem("fwd-hammer"),
        {"BACKEND": TRACKED + "TrackedMemcachedCache", "LOCATION": memcached.location, "KEY_PREFIX": "fwd-hammer"},
    ]
    # Counters exist on both targets, so an incr never misses whichever
    # target it lands on, and their sum must equal the increments made.
    for params in targets:
        caches_setting["forwarded_backend"] = params
        caches["fwd"].reset()
        for i in range(threads):
            caches["fwd"].set(f"counter-{i}", 0, timeout=None)
    shared = caches["fwd"]  # one instance for every thread, as middleware holds one
    errors, increments = [], [0] * threads
    stop = threading.Event()

    def worker(i):
        cache = shared if i % 2 else caches["fwd"]  # shared and per-thread instances
        n = 0
        try:
            while not stop.is_set():
                n += 1
                cache.incr(f"counter-{i}")
                increments[i] += 1
                cache.set(f"value-{i}", (i, n))
                value = cache.get(f"value-{i}")
                if value is not None and (value[0] != i or value[1] > n):
                    errors.append(f"thread {i} read {value!r} after setting {(i, n)!r}")
                cache.get_many([f"value-{i}", f"counter-{i}"])
        except Exception as exc:  # noqa: BLE001 - every exception is a failure here
            errors.append(repr(exc))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # let the resetting thread in often
    try:
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for thread in workers:
            thread.start()
        for n in range(resets):
            caches_setting["forwarded_backend"] = targets[n % 2]
            shared.reset()
            time.sleep(0.0002)  # let calls start on each target
        stop.set()
        for thread in workers:
            thread.join()
    finally:
        sys.setswitchinterval(interval)

    assert errors == []
    assert sum(increments) > threads
    counted = [0] * threads
    for params in targets:
        caches_setting["forwarded_backend"] = params
        shared.reset()
        for i in range(threads):
            counted[i] += shared.get(f"counter-{i}")
    assert counted == increments, "every increment landed on exactly one target"

    built = list(tracked_backends.built)
    replaced = built[:-1]
    assert len(replaced) >= resets
    assert sum(1 for t in replaced if t.calls) >= resets // 2, "calls overlapped the resets"
    assert [t for t in replaced if t.closes != 1] == [], "each replaced target is closed exactly once"
    assert sum(t.calls_after_close for t in built) == 0, "no call ran on a closed target"
    assert built[-1].closes == 0
    assert shared.stats()["retiring"] == 0


def test_sixteen_resets_of_one_generation_build_once(caches_setting):
    cache = caches["fwd"]
    cache.get("warm")
    generation, builds = cache.generation, cache.stats()["builds"]
    caches_setting["forwarded_backend"] = locmem("fwd-slow", backend="SlowBuildLocMemCache")
    forget()
    barrier = threading.Barrier(16)
    errors = []

    def reset():
        barrier.wait()
        try:
            caches["fwd"].reset()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reset) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(tracked_backends.built) == 1
    assert cache.stats()["builds"] == builds + 1
    assert cache.generation == generation + 1


def test_a_reset_racing_a_build_that_read_old_settings_builds_again(caches_setting):
    # A reset that coalesces into another thread's build must not keep a
    # target built from settings older than the ones its caller set.
    cache = caches["fwd"]
    cache.get("warm")
    caches_setting["forwarded_backend"] = locmem("fwd-slow-1", backend="SlowBuildLocMemCache")
    slow = threading.Thread(target=cache.reset)
    slow.start()
    time.sleep(0.05)  # the slow build has read its settings
    caches_setting["forwarded_backend"] = locmem("fwd-final")
    cache.reset()
    slow.join()
    assert cache.backend._cache is caches["fwd"].backend._cache
    assert cache.forwarded_alias == "forwarded_backend"
    assert type(cache.backend) is tracked_backends.TrackedLocMemCache
    assert cache._core.source()["LOCATION"] == "fwd-final"


@pytest.mark.parametrize(
    "broken, error",
    [
        ({"BACKEND": "no.such.Backend"}, InvalidCacheBackendError),
        ({"BACKEND": "racefree.backends.memcached.MemcachedCache", "OPTIONS": {"NOPE": 1}}, ImproperlyConfigured),
        (locmem("unreachable:11211", backend="BrokenAtBuild"), ConnectionRefusedError),
    ],
)
def test_a_reset_to_a_broken_configuration_keeps_the_old_target(caches_setting, caplog, broken, error):
    cache = caches["fwd"]
    cache.set("k", "old")
    old = cache.backend
    failures = cache.stats()["build_failures"]
    caches_setting["forwarded_backend"] = broken
    with caplog.at_level(logging.ERROR, logger="racefree.forwarding"), pytest.raises(error):
        cache.reset()
    assert "previous one keeps serving" in caplog.text
    assert cache.get("k") == "old"
    assert cache.backend is old and old.closes == 0
    assert cache.stats()["build_failures"] == failures + 1
    # Fixing the settings and resetting again switches.
    caches_setting["forwarded_backend"] = locmem("fwd-fixed")
    cache.reset()
    assert cache.get("k") is None
    assert old.closes == 1


def test_settings_change_rebuilds_the_target(caches_setting):
    cache = caches["fwd"]
    cache.set("k", "outer")
    new = {**caches_setting, "forwarded_backend": locmem("fwd-inner")}
    with override_settings(CACHES=new):
        assert caches["fwd"].get("k") is None
        caches["fwd"].set("k", "inner")
    assert caches["fwd"].get("k") == "outer"


def test_a_broken_settings_change_keeps_the_old_target_and_logs(caches_setting, caplog):
    cache = caches["fwd"]
    cache.set("k", "kept")
    with override_settings(CACHES={**caches_setting, "forwarded_backend": {"BACKEND": "no.such.Backend"}}):
        with caplog.at_level(logging.ERROR, logger="racefree.forwarding"):
            assert caches["fwd"].get("k") == "kept"
            assert caches["fwd"].get("k") == "kept"
        assert caplog.text.count("previous one keeps serving") == 1, "one failed rebuild, not one per call"


def test_first_call_without_the_forwarded_alias_is_a_clear_error(caches_setting):
    caches_setting["fwd-nowhere"] = {"BACKEND": FORWARDING, "LOCATION": "never-configured"}
    with pytest.raises(InvalidCacheBackendError, match="'never-configured' is not in CACHES"):
        caches["fwd-nowhere"].get("k")
    # Still an error, not a stale target, at the next call.
    with pytest.raises(InvalidCacheBackendError):
        caches["fwd-nowhere"].get("k")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"TIMEOUT": 5}, "TIMEOUT belong on the forwarded alias"),
        ({"KEY_PREFIX": "x", "VERSION": 2}, "KEY_PREFIX, VERSION belong on the forwarded alias"),
        ({"OPTIONS": {"MAX_ENTRIES": 5}}, "unknown OPTIONS"),
    ],
)
def test_settings_of_the_target_on_the_forwarder_are_refused(params, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        ForwardingCache("", params)


def test_a_forwarding_loop_is_refused(caches_setting):
    caches_setting["loop-a"] = {"BACKEND": FORWARDING, "LOCATION": "loop-b"}
    caches_setting["loop-b"] = {"BACKEND": FORWARDING, "LOCATION": "loop-a"}
    with pytest.raises(ImproperlyConfigured, match="forwarding loops: loop-b -> loop-a -> loop-b"):
        ForwardingCache("loop-b", {}).get("k")


def test_forwarding_to_a_forwarder_works(caches_setting):
    caches_setting["outer"] = {"BACKEND": FORWARDING, "LOCATION": "fwd"}
    outer = ForwardingCache("outer", {})
    outer.set("k", "through two")
    assert caches["forwarded_backend"].get("k") == "through two"


def test_request_close_does_not_close_the_shared_target(caches_setting):
    cache = caches["fwd"]
    cache.set("k", 1)
    target = cache.backend
    signals.request_finished.send(None)
    cache.close()
    asyncio.run(cache.aclose())
    assert target.closes == 0
    assert cache.get("k") == 1


def test_an_awaited_call_finishes_on_its_target_before_it_is_closed(caches_setting):
    cache = caches["fwd"]
    cache.set("k", "old")
    old = cache.backend
    started = threading.Event()
    results = []

    async def slow_get():
        lease = cache._core.lease()  # what every a* method does around its await
        with lease as target:
            started.set()
            await asyncio.sleep(0.2)
            results.append((target.get("k"), target.closes))
        results.append(target.closes)

    runner = threading.Thread(target=asyncio.run, args=(slow_get(),))
    runner.start()
    started.wait(5)
    caches_setting["forwarded_backend"] = locmem("fwd-new")
    cache.reset()
    assert old.closes == 0, "closed while an awaited call was on it"
    runner.join()
    assert results == [("old", 0), 1]
    assert old.calls_after_close == 0


def test_stats_count_builds_and_closes(caches_setting):
    cache = caches["fwd"]
    cache.get("k")
    before = cache.stats()
    for n in range(3):
        caches_setting["forwarded_backend"] = locmem(f"fwd-stats-{n}")
        cache.reset()
    after = cache.stats()
    assert {k: after[k] - before[k] for k in ("generation", "builds", "closes", "build_failures")} == {
        "generation": 3,
        "builds": 3,
        "closes": 3,
        "build_failures": 0,
    }
    assert after["retiring"] == 0


def test_forwarding_to_racefree_file_and_memcached(caches_setting, memcached, tmp_path):
    cache = caches["fwd"]
    caches_setting["forwarded_backend"] = {
        "BACKEND": "racefree.backends.filebased.FileBasedCache",
        "LOCATION": str(tmp_path),
    }
    cache.reset()
    cache.set("k", "on disk")
    assert cache.get("k") == "on disk"
    assert any(tmp_path.rglob("*"))
    caches_setting["forwarded_backend"] = {
        "BACKEND": "racefree.backends.memcached.MemcachedCache",
        "LOCATION": memcached.location,
        "KEY_PREFIX": "fwd-mc",
    }
    cache.reset()
    assert cache.get("k") is None
    assert cache.add("n", 10) is True
    assert cache.incr("n") == 11
    assert caches["forwarded_backend"].get("n") == 11

