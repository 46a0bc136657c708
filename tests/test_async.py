"""The native async methods on real servers: exact results under 200
concurrent tasks, calls that really overlap, several loops and threads,
cancellation and loop shutdown with calls in flight, errors, and a clean
interpreter exit. (Every behaviour test of Django's suite also runs through
the async API: see support/through_async.py.)"""

import asyncio
import inspect
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import InvalidCacheKey
from django.core.cache.backends.base import BaseCache
from django.db import connection

from racefree.backends.db import DatabaseCache
from racefree.backends.filebased import FileBasedCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache
from racefree.exceptions import CacheConnectionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




@pytest.fixture(params=["memcached", "redis", "file", "database"])
def backend(request, memcached, redis_server, tmp_path):
    """Each racefree backend, on its real server (or directory)."""
    if request.param == "memcached":
        cache = MemcachedCache(memcached.location, {"KEY_PREFIX": uuid.uuid4().hex[:8]})
    elif request.param == "redis":
        cache = RedisCache(redis_server.location, {"KEY_PREFIX": uuid.uuid4().hex[:8]})
    elif request.param == "file":
        cache = FileBasedCache(str(tmp_path), {"OPTIONS": {"MAX_ENTRIES": 1_000_000}})
    else:
        cache = DatabaseCache(request.getfixturevalue("table"), {"OPTIONS": {"MAX_ENTRIES": 1_000_000}})
    return cache


@pytest.mark.cross_version
def test_async_methods_are_native_coroutines(backend):
    # Overridden on the backend itself, not BaseCache's sync_to_async hops.
    for name in ("aget", "aset", "aadd", "atouch", "adelete", "aget_many", "aset_many", "adelete_many",
                 "ahas_key", "aincr", "aclear", "aget_or_set", "aclose"):
        method = getattr(type(backend), name)
        assert inspect.iscoroutinefunction(method), name
        assert method.__module__.startswith("racefree."), name


@pytest.mark.cross_version
def test_every_overridden_sync_method_has_a_native_async_twin(backend):
    # Django 6.x's BaseCache runs an overridden sync method in a thread
    # (sync_to_async) from its async twin unless the twin is overridden too.
    cls = type(backend)
    for name in dir(BaseCache):
        twin = "a" + name
        if name.startswith("_") or not hasattr(BaseCache, twin):
            continue
        if getattr(cls, name) is not getattr(BaseCache, name):
            assert getattr(cls, twin) is not getattr(BaseCache, twin), f"{name} without {twin}"


@pytest.mark.cross_version
def test_version_changes_through_the_async_api(backend):
    async def main():
        await backend.aset("answer", 42, version=2)
        assert await backend.aincr_version("answer", version=2) == 3
        assert await backend.aget("answer", version=3) == 42
        assert await backend.aget("answer", version=2) is None
        assert await backend.adecr_version("answer", version=3) == 2
        assert await backend.aget("answer", version=2) == 42
        with pytest.raises(ValueError):
            await backend.aincr_version("missing")
        await backend.aclose()

    asyncio.run(main())


@pytest.mark.cross_version
def test_two_hundred_tasks_on_one_loop_get_exact_results(backend):
    tasks, rounds = 200, 5

    async def worker(index):
        mine = 0
        for n in range(rounds):
            await backend.aset(f"value-{index}", (index, n))
            assert await backend.aget(f"value-{index}") == (index, n)
            await backend.aincr("counter")
            mine += 1
        return mine

    async def main():
        await backend.aset("counter", 0)
        done = await asyncio.gather(*(worker(i) for i in range(tasks)))
        values = await backend.aget_many([f"value-{i}" for i in range(tasks)])
        return sum(done), await backend.aget("counter"), values

    increments, counter, values = asyncio.run(main())
    assert increments == tasks * rounds
    assert counter == tasks * rounds, "every aincr counted exactly once"
    assert values == {f"value-{i}": (i, rounds - 1) for i in range(tasks)}


class LoopWithoutReaders(asyncio.SelectorEventLoop):
    """A loop that cannot watch file descriptors (as a proactor loop)."""

    def add_reader(self, fd, callback, *args):
        raise NotImplementedError


def test_loop_without_add_reader_gets_results_from_the_delivery_thread(backend):
    async def main():
        await backend.aset("counter", 0)
        await asyncio.gather(*(backend.aincr("counter") for _ in range(200)))
        await asyncio.gather(*(backend.aset(f"k{i}", i) for i in range(50)))
        return await backend.aget("counter"), await asyncio.gather(*(backend.aget(f"k{i}") for i in range(50)))

    loop = LoopWithoutReaders()
    try:
        counter, values = loop.run_until_complete(main())
    finally:
        loop.close()
    assert counter == 200
    assert values == list(range(50))


def test_loops_started_one_after_another_on_one_thread(backend):
    # Each new loop gets its own reader; results never go to a closed loop.
    for round in range(5):
        assert asyncio.run(backend.aset(f"round-{round}", round)) is None
        assert asyncio.run(backend.aget(f"round-{round}")) == round


@pytest.mark.cross_version
def test_aadd_has_exactly_one_winner_among_concurrent_tasks(backend):
    async def main():
        return await asyncio.gather(*(backend.aadd("fresh", i) for i in range(100)))

    wins = asyncio.run(main())
    assert wins.count(True) == 1
    assert backend.get("fresh") == wins.index(True)


@pytest.mark.cross_version
def test_loops_in_several_threads_at_once(backend):
    backend.set("shared", 0)
    errors = []

    def thread(index):
        async def main():
            for n in range(50):
                await backend.aincr("shared")
                await backend.aset(f"t{index}", n)
            return await backend.aget(f"t{index}")

        try:
            assert asyncio.run(main()) == 49
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert backend.get("shared") == 200


def test_async_errors_are_the_sync_errors(backend):
    async def main():
        with pytest.raises(ValueError, match="not found"):
            await backend.aincr("missing")
        await backend.aset("text", "not a number")
        with pytest.raises(TypeError):
            await backend.aincr("text")

    asyncio.run(main())


def test_async_invalid_key_is_djangos_error(memcached):
    cache = MemcachedCache(memcached.location, {})

    async def main():
        with pytest.raises(InvalidCacheKey, match="will cause errors if used with memcached"):
            await cache.aget("has space")
        with pytest.raises(InvalidCacheKey):
            await cache.aset_many({"a b": 1})

    asyncio.run(main())


@pytest.fixture(params=["memcached", "redis"])
def fresh_server(request):
    """(backend class, a server of the test's own it may kill or freeze)."""
    if request.param == "memcached":
        return MemcachedCache, request.getfixturevalue("fresh_memcached")
    return RedisCache, request.getfixturevalue("fresh_redis")


def test_async_down_server_raises_or_reads_as_a_miss(fresh_server):
    backend_class, server = fresh_server
    location = server.location
    server.stop()
    strict = backend_class(location, {"OPTIONS": {"CONNECT_TIMEOUT": 0.5}})
    lenient = backend_class(location, {"OPTIONS": {"CONNECT_TIMEOUT": 0.5, "IGNORE_EXCEPTIONS": True}})

    async def main():
        with pytest.raises(CacheConnectionError):
            await strict.aget("k")
        assert await lenient.aget("k", "miss") == "miss"
        assert await lenient.aget_many(["a", "b"]) == {}
        await lenient.aset("k", 1)  # dropped, not raised

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 5


def test_awaits_overlap_on_a_slow_server(table):
    # Every write to this table takes 0.4 s on the server (a trigger calls
    # pg_sleep): two concurrent awaits take about one delay, not two.
    quoted = connection.ops.quote_name(table)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.4); RETURN NEW; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER slow BEFORE INSERT OR UPDATE ON {quoted} FOR EACH ROW EXECUTE FUNCTION slow_write()"
        )
    try:
        cache = DatabaseCache(table, {"OPTIONS": {"MAX_ENTRIES": 1_000_000}})

        async def timed(*calls):
            started = time.monotonic()
            await asyncio.gather(*calls)
            return time.monotonic() - started

        one = asyncio.run(timed(cache.aset("a", 1)))
        two = asyncio.run(timed(cache.aset("b", 1), cache.aset("c", 1)))
        assert one >= 0.4
        assert two < 0.7, f"two concurrent awaits took {two:.2f} s, one takes {one:.2f} s"
        assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 1, "c": 1}
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER slow ON {quoted}")
            cursor.execute("DROP FUNCTION slow_write()")


@pytest.fixture(params=["database", "redis"])
def pooled(request, redis_server):
    """``pooled(connections, **options)`` -> a backend of the parametrized
    kind whose pool opens at most ``connections`` connections."""
    if request.param == "database":
        table = request.getfixturevalue("table")
        return lambda connections, **options: DatabaseCache(
            table, {"OPTIONS": {"MAX_ENTRIES": 1_000_000, "POOL_SIZE": connections, **options}})
    prefix = uuid.uuid4().hex[:8]
    return lambda connections, **options: RedisCache(
        redis_server.location, {"KEY_PREFIX": prefix, "OPTIONS": {"MAX_CONNECTIONS": connections, **options}})


@pytest.mark.cross_version
def test_cancelled_increments_never_half_apply(pooled):
    cache = pooled(4)
    cache.set("counter", 0)

    async def main():
        tasks = [asyncio.ensure_future(cache.aincr("counter")) for _ in range(100)]
        await asyncio.sleep(0.005)
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [r for r in results if not isinstance(r, BaseException)]

    completed = asyncio.run(main())
    # Cancelled calls finish (or not) on the pool; wait until they settle.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        value = cache.get("counter")
        time.sleep(0.2)
        if cache.get("counter") == value:
            break
    assert isinstance(value, int)
    assert len(completed) <= value <= 100
    assert sorted(completed) == sorted(set(completed)), "each completed aincr saw its own value"
    # No connection was lost to a cancelled call: the pool of 4 still serves.
    for _ in range(10):
        assert cache.incr("counter") == value + 1
        value += 1


def test_loop_shutdown_with_calls_in_flight_leaks_no_connection(pooled):
    cache = pooled(2, CONNECT_TIMEOUT=2)

    async def main():
        for i in range(50):
            asyncio.ensure_future(cache.aset(f"k{i}", i))
        await asyncio.sleep(0)  # then return: asyncio.run cancels the rest and closes the loop

    asyncio.run(main())
    loop = asyncio.new_event_loop()
    tasks = [loop.create_task(cache.aset(f"closed{i}", i)) for i in range(10)]
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()  # pending calls whose loop is gone
    del tasks
    time.sleep(0.5)
    started = time.monotonic()
    for i in range(20):
        cache.set(f"after{i}", i)
        assert cache.get(f"after{i}") == i
    assert time.monotonic() - started < 2, "a pooled connection was left checked out"


EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    import django
    from django.conf import settings
    settings.configure(CACHES={{
        "default": {{"BACKEND": "racefree.backends.memcached.MemcachedCache", "LOCATION": {location!r}}},
        "file": {{"BACKEND": "racefree.backends.filebased.FileBasedCache", "LOCATION": {directory!r}}},
        "redis": {{"BACKEND": "racefree.backends.redis.RedisCache", "LOCATION": {redis!r}}},
    }})
    django.setup()
    from django.core.cache import caches

    async def main():
        memcached, files, redis = caches["default"], caches["file"], caches["redis"]
        await asyncio.gather(*(memcached.aset(f"exit{{i}}", i) for i in range(20)))
        await asyncio.gather(*(files.aset(f"exit{{i}}", i) for i in range(5)))
        await asyncio.gather(*(redis.aset(f"exit{{i}}", i) for i in range(20)))
        values = await asyncio.gather(*(memcached.aget(f"exit{{i}}") for i in range(20)))
        assert values == list(range(20)), values
        values = await asyncio.gather(*(redis.aget(f"exit{{i}}") for i in range(20)))
        assert values == list(range(20)), values

    asyncio.run(main())
    """
)


def test_interpreter_exit_right_after_awaited_calls_is_clean(memcached, redis_server, tmp_path):
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT.format(tests=os.path.join(ROOT, "tests"), location=memcached.location,
                                         directory=str(tmp_path / "files"), redis=redis_server.location))

    def run(_):
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
        return done.returncode, done.stderr

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(run, range(200)))
    failures = [(code, err[-500:]) for code, err in outcomes if code != 0 or err.strip()]
    assert failures == [], f"{len(failures)} of 200 runs failed, e.g. {failures[:2]}"


def test_aset_of_an_evaluated_queryset_with_deferred_fields(backend):
    # Replaces Django's *_for_model_instance_with_deferred through the async
    # API: pickling happens in the caller's coroutine, so a QuerySet is
    # evaluated (off the loop) before it is cached.
    from asgiref.sync import sync_to_async
    from cache.models import Poll, expensive_calculation
    from django.core.exceptions import SynchronousOnlyOperation

    expensive_calculation.num_runs = 0  # what Django's tests set before using Poll
    Poll.objects.all().delete()
    Poll.objects.create(question="What?")

    async def main():
        lazy = Poll.objects.defer("question")
        with pytest.raises(SynchronousOnlyOperation):
            await backend.aset("lazy", lazy)
        def evaluate():
            try:
                return list(lazy)
            finally:
                connection.close()  # this worker thread's own connection

        polls = await sync_to_async(evaluate)()
        await backend.aset("polls", polls)
        return await backend.aget("polls")

    (poll,) = asyncio.run(main())
    assert poll.get_deferred_fields() == {"question"}
    assert poll.pk == Poll.objects.get().pk


def test_a_stalled_store_does_not_starve_another(fresh_postgres, memcached):
    """Four hundred awaited calls on a frozen PostgreSQL take at most its
    POOL_SIZE threads of the shared blocking pool: memcached calls made
    meanwhile are answered at once, and every stalled call ends with an
    error within its timeouts."""
    from racefree.exceptions import CacheError

    fresh_postgres.create_cache_table()
    database = DatabaseCache("cache", {"OPTIONS": {
        "DSN": fresh_postgres.dsn, "CONNECT_TIMEOUT": 1.0, "STATEMENT_TIMEOUT": 1.0, "IO_TIMEOUT": 2.0,
        "POOL_SIZE": 4}})
    other = MemcachedCache(memcached.location, {"KEY_PREFIX": uuid.uuid4().hex})
    database.set("k", 1)
    other.set("k", 2)

    async def meanwhile():
        stalled = [asyncio.ensure_future(database.aget("k")) for _ in range(400)]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        values = await asyncio.gather(*(other.aget("k") for _ in range(50)))
        answered_in = time.monotonic() - started
        outcomes = await asyncio.gather(*stalled, return_exceptions=True)
        return values, answered_in, outcomes, time.monotonic() - started

    fresh_postgres.pause()
    try:
        values, answered_in, outcomes, all_done_in = asyncio.run(meanwhile())
    finally:
        fresh_postgres.resume()
    print(f"\nmemcached answered in {answered_in:.3f} s; 400 stalled calls done in {all_done_in:.1f} s")
    assert values == [2] * 50
    assert answered_in < 0.5
    assert all(isinstance(outcome, CacheError) for outcome in outcomes), {type(o) for o in outcomes}
    assert all_done_in < 2.0 + 1.0 + 1.0
    assert database.get("k") == 1


def test_a_cancelled_lock_acquire_leaves_no_lock(fresh_server):
    """The cancellation lands while the lock's entry is being added (the
    server is frozen, then thawed after the cancel): the add completes on
    its own, and the lock it took is given back at once, not held for its
    whole lease."""
    backend_class, server = fresh_server
    cache = backend_class(server.location, {"OPTIONS": {"IO_TIMEOUT": 5.0}})
    cache.set("warm", 1)

    async def cancelled_acquire():
        lock = cache.lock("job", timeout=60)
        server.pause()
        acquiring = asyncio.ensure_future(lock.aacquire())
        await asyncio.sleep(0.2)
        acquiring.cancel()
        server.resume()
        with pytest.raises(asyncio.CancelledError):
            await acquiring
        # The add, then the give-back, finish in the background.
        for _ in range(100):
            if await cache.lock("job", timeout=60).atry_acquire():
                return True
            await asyncio.sleep(0.02)
        return False

    assert asyncio.run(cancelled_acquire()), "the cancelled acquire's lock is still held"
