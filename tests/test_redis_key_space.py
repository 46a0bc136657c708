"""django-redis's additions on racefree's Redis backend: its key-space
methods (``ttl``, ``pttl``, ``expire``, ``pexpire``, ``expire_at``,
``pexpire_at``, ``persist``, ``keys``, ``iter_keys``, ``delete_pattern``
and their async twins) and ``incr``/``decr`` with ``ignore_key_check``, on
one server and on a three-node cluster, side by side with django-redis on
the same server, under threads, with bad input and with a server that is
down."""

import asyncio
import datetime
import threading
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from django_redis.cache import RedisCache as DjangoRedisCache
from support.load import run_threads
from support.servers import free_port

from racefree.backends.redis import RedisCache
from racefree.exceptions import CacheConnectionError

# Short and Django-version-sensitive only through KEY_FUNCTION and
# timeouts: all of it also runs on the newest Django.
pytestmark = pytest.mark.cross_version


def racefree(topology, prefix, **params):
    location, options = topology
    options = {**options, **params.pop("OPTIONS", {})}
    return RedisCache(location, {"KEY_PREFIX": prefix, "OPTIONS": options, **params})


def test_ttl_and_pttl(topology, prefix):
    cache = racefree(topology, prefix)
    cache.set("timed", 1, 100)
    cache.set("forever", 1, None)
    assert cache.ttl("timed") in (99, 100)
    assert 99_000 <= cache.pttl("timed") <= 100_000
    assert cache.ttl("forever") is None and cache.pttl("forever") is None
    assert cache.ttl("missing") == 0 and cache.pttl("missing") == 0
    cache.set("versioned", 1, 50, version=2)
    assert cache.ttl("versioned") == 0
    assert cache.ttl("versioned", version=2) in (49, 50)


def test_expire_pexpire_expire_at_pexpire_at_and_persist(topology, prefix):
    cache = racefree(topology, prefix, TIMEOUT=200)
    cache.set("k", "v", None)
    assert cache.expire("k", 50) is True
    assert cache.ttl("k") in (49, 50)
    assert cache.expire("k", datetime.timedelta(seconds=30)) is True
    assert cache.ttl("k") in (29, 30)
    assert cache.expire("k", 0.5) is True
    assert 0 < cache.pttl("k") <= 500
    assert cache.expire("k") is True  # the backend's TIMEOUT
    assert cache.ttl("k") in (199, 200)
    assert cache.pexpire("k", 20_000) is True
    assert 19_000 <= cache.pttl("k") <= 20_000
    assert cache.pexpire("k", datetime.timedelta(seconds=25)) is True
    assert cache.ttl("k") in (24, 25)
    assert cache.pexpire("k") is True
    assert cache.ttl("k") in (199, 200)
    in_a_minute = datetime.datetime.now() + datetime.timedelta(seconds=60)
    assert cache.expire_at("k", in_a_minute) is True
    assert cache.ttl("k") in (59, 60)
    assert cache.expire_at("k", datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=40)) is True
    assert cache.ttl("k") in (39, 40)
    assert cache.expire_at("k", int(time.time()) + 90) is True
    assert cache.ttl("k") in (88, 89, 90)
    assert cache.pexpire_at("k", int(time.time() * 1000) + 70_000) is True
    assert cache.ttl("k") in (69, 70)
    # Redis's PERSIST: True only where there was an expiry to remove.
    assert cache.persist("k") is True
    assert cache.persist("k") is False
    assert cache.ttl("k") is None
    assert cache.get("k") == "v"
    for call in (cache.expire, cache.pexpire, cache.expire_at, cache.pexpire_at):
        assert call("missing", 10**12 if call in (cache.expire_at, cache.pexpire_at) else 10) is False
    assert cache.persist("missing") is False
    # As in Redis: a lifetime of 0 or less, or a past time, deletes.
    for call, arg in ((cache.expire, 0), (cache.pexpire, -5), (cache.expire_at, 1), (cache.pexpire_at, 1)):
        cache.set("doomed", "v")
        assert call("doomed", arg) is True
        assert cache.get("doomed") is None


def test_bad_lifetimes_and_page_sizes_are_errors_that_touch_nothing(topology, prefix):
    cache = racefree(topology, prefix)
    cache.set("k", "v", 100)
    for call, arg in ((cache.expire, "10"), (cache.expire, None), (cache.expire, float("nan")), (cache.expire, True),
                      (cache.pexpire, 1.5), (cache.pexpire, "10"), (cache.expire_at, "tomorrow"),
                      (cache.pexpire_at, None)):
        with pytest.raises(TypeError):
            call("k", arg)
    assert cache.get("k") == "v" and cache.ttl("k") in (99, 100)
    no_default = racefree(topology, prefix, TIMEOUT=None)
    with pytest.raises(TypeError):
        no_default.expire("k")
    for bad, error in ((0, ValueError), (-1, ValueError), ("10", TypeError), (2.5, TypeError)):
        with pytest.raises(error):
            cache.delete_pattern("*", itersize=bad)
        with pytest.raises(error):
            list(cache.iter_keys("*", itersize=bad))
    assert cache.keys("*") == ["k"]


def test_keys_and_iter_keys_find_each_matching_key_of_this_prefix_and_version(topology, prefix):
    cache = racefree(topology, prefix)
    cache.set_many({f"item:{i}": i for i in range(250)})
    cache.set("other", 1)
    cache.set("item:v2", 1, version=2)
    wanted = {f"item:{i}" for i in range(250)}
    keys = cache.keys("item:*")
    assert len(keys) == 250 and set(keys) == wanted
    assert set(cache.iter_keys("item:*", itersize=7)) == wanted
    assert sorted(cache.keys("item:1?")) == [f"item:{i}" for i in range(10, 20)]
    assert sorted(cache.keys("item:[12]")) == ["item:1", "item:2"]
    assert cache.keys("item:v2", version=2) == ["item:v2"]
    assert cache.keys("nothing*") == []
    # Another prefix is not listed, even one a glob of this one's would match.
    racefree(topology, prefix + "x").set("item:x", 1)
    assert set(cache.keys("*")) == wanted | {"other"}


def test_glob_characters_in_the_prefix_are_taken_literally(topology, prefix):
    starred = racefree(topology, prefix + "*[a]")
    plain = racefree(topology, prefix + "Xa")
    starred.set("k", 1)
    plain.set("k", 2)
    assert starred.keys("*") == ["k"]
    assert starred.delete_pattern("*") == 1
    assert plain.get("k") == 2


def test_delete_pattern_counts_each_key_once_across_threads(topology, prefix):
    cache = racefree(topology, prefix)
    cache.set_many({f"doomed:{i}": i for i in range(400)})
    cache.set_many({f"kept:{i}": i for i in range(50)})
    cache.set("doomed:v2", 1, version=2)
    counts = []
    start = threading.Barrier(4)

    def delete():
        start.wait()
        counts.append(cache.delete_pattern("doomed:*", itersize=10))

    threads = [threading.Thread(target=delete) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 400, counts
    assert cache.keys("doomed:*") == []
    assert len(cache.get_many([f"kept:{i}" for i in range(50)])) == 50
    assert cache.get("doomed:v2", version=2) == 1
    assert cache.delete_pattern("doomed:*", version=2) == 1
    # prefix= names another prefix, as in django-redis.
    racefree(topology, prefix + "-other").set("x", 1)
    assert cache.delete_pattern("*", prefix=prefix + "-other") == 1
    assert cache.delete_pattern("nothing*") == 0


def test_async_twins(topology, prefix):
    cache = racefree(topology, prefix)

    async def run():
        await cache.aset("k", "v", 100)
        assert await cache.attl("k") in (99, 100)
        assert 99_000 <= await cache.apttl("k") <= 100_000
        assert await cache.aexpire("k", 40) is True
        assert await cache.attl("k") in (39, 40)
        assert await cache.apexpire("k", 30_000) is True
        assert await cache.aexpire_at("k", time.time() + 20) is True
        assert await cache.attl("k") in (19, 20)
        assert await cache.apexpire_at("k", int(time.time() * 1000) + 10_000) is True
        assert await cache.apersist("k") is True
        assert await cache.apttl("k") is None
        await cache.aset_many({f"a:{i}": i for i in range(120)})
        wanted = {f"a:{i}" for i in range(120)}
        assert set(await cache.akeys("a:*")) == wanted
        assert {key async for key in cache.aiter_keys("a:*", itersize=5)} == wanted
        counts = await asyncio.gather(*(cache.adelete_pattern("a:*", itersize=10) for _ in range(4)))
        assert sum(counts) == 120
        assert await cache.akeys("a:*") == []

    asyncio.run(run())


@pytest.mark.parametrize("options", [{}, {"SERIALIZER": "json"}, {"SIGN_VALUES": True}],
                         ids=["pickle", "json", "signed"])
def test_incr_with_ignore_key_check_creates_a_missing_key_exactly_once(topology, prefix, options):
    cache = racefree(topology, prefix, OPTIONS=options)
    assert cache.incr("new", 5, ignore_key_check=True) == 5
    assert cache.get("new") == 5 and cache.ttl("new") is None
    assert cache.decr("new", 7, ignore_key_check=True) == -2
    assert cache.decr("fresh", 3, ignore_key_check=True) == -3
    cache.set("timed", 10, 100)
    assert cache.incr("timed", ignore_key_check=True) == 11
    assert cache.ttl("timed") in (99, 100)
    with pytest.raises(ValueError):
        cache.incr("missing")
    assert cache.get("missing") is None
    cache.set("text", "abc")
    with pytest.raises(TypeError):
        cache.incr("text", ignore_key_check=True)
    assert cache.get("text") == "abc"
    # 8 threads x 100 increments of a key none of them created: one of
    # them creates it, and not one increment is lost.
    assert run_threads(8, lambda _: [cache.incr("counter", ignore_key_check=True) for _ in range(100)]) == []
    assert cache.get("counter") == 800

    async def run():
        assert await cache.aincr("acounter", 2, ignore_key_check=True) == 2
        await asyncio.gather(*(cache.aincr("acounter", ignore_key_check=True) for _ in range(200)))
        assert await cache.adecr("acounter", 2, ignore_key_check=True) == 200
        with pytest.raises(ValueError):
            await cache.aincr("amissing")

    asyncio.run(run())


def test_the_same_answers_as_django_redis_on_the_same_server(redis_server, prefix):
    ours = RedisCache(redis_server.location, {"KEY_PREFIX": prefix})
    theirs = DjangoRedisCache(redis_server.location, {"KEY_PREFIX": prefix})
    for writer, reader in ((ours, theirs), (theirs, ours)):
        writer.set("timed", 1, 100)
        writer.set("forever", 1, None)
        writer.set_many({f"m:{i}": i for i in range(30)})
        for key in ("timed", "forever", "missing"):
            assert reader.ttl(key) == writer.ttl(key)
        assert sorted(reader.keys("m:*")) == sorted(writer.keys("m:*"))
        assert sorted(reader.iter_keys("m:1*")) == sorted(writer.iter_keys("m:1*"))
        assert reader.expire("timed", 30) is writer.expire("timed", 40) is True
        assert writer.ttl("timed") == reader.ttl("timed") == 40
        assert reader.persist("timed") is True and writer.persist("timed") is False
        assert reader.persist("missing") is writer.persist("missing") is False
        assert reader.delete_pattern("m:2*") == 11
        assert writer.delete_pattern("m:*") == 19
        assert writer.incr("counter", 2, ignore_key_check=True) == reader.get("counter") == 2
        assert reader.incr("counter", ignore_key_check=True) == writer.get("counter") == 3
        assert writer.decr("counter") == 2
        writer.delete_many(["timed", "forever", "counter"])


def test_a_custom_key_function_with_its_reverse(redis_server, prefix):
    params = {"KEY_PREFIX": prefix, "KEY_FUNCTION": "support.keyfuncs.dashed_key",
              "OPTIONS": {"REVERSE_KEY_FUNCTION": "support.keyfuncs.undashed_key"}}
    cache = RedisCache(redis_server.location, params)
    cache.set("one", 1)
    cache.set("two", 2)
    assert redis_server.cli("EXISTS", f"{prefix}-1-one") == "1"
    assert sorted(cache.keys("*")) == ["one", "two"]
    assert cache.delete_pattern("o*") == 1
    for bad in ("support.keyfuncs.nothing_here", 42):
        with pytest.raises(ImproperlyConfigured, match="REVERSE_KEY_FUNCTION"):
            RedisCache(redis_server.location, {"OPTIONS": {"REVERSE_KEY_FUNCTION": bad}})


def test_a_server_that_is_down_raises_or_with_ignore_exceptions_answers_empty():
    location = f"redis://127.0.0.1:{free_port()}"
    down = RedisCache(location, {"OPTIONS": {"CONNECT_TIMEOUT": 0.5}})
    calls = [lambda c: c.ttl("k"), lambda c: c.pttl("k"), lambda c: c.expire("k", 5), lambda c: c.pexpire("k", 5),
             lambda c: c.expire_at("k", 10**10), lambda c: c.pexpire_at("k", 10**13), lambda c: c.persist("k"),
             lambda c: c.keys("*"), lambda c: list(c.iter_keys("*")), lambda c: c.delete_pattern("*")]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(CacheConnectionError):
            call(down)
        assert time.monotonic() - started < 3
    ignoring = RedisCache(location, {"OPTIONS": {"CONNECT_TIMEOUT": 0.5, "IGNORE_EXCEPTIONS": True}})
    assert [call(ignoring) for call in calls] == [None, None, False, False, False, False, False, [], [], 0]

    async def run_async():
        for name in ("attl", "aexpire", "apersist", "akeys", "adelete_pattern"):
            args = ("k", 5) if name == "aexpire" else ("k",)
            with pytest.raises(CacheConnectionError):
                await getattr(down, name)(*args)
            assert await getattr(ignoring, name)(*args) in (None, False, [], 0)
        with pytest.raises(CacheConnectionError):
            [key async for key in down.aiter_keys("*")]
        assert [key async for key in ignoring.aiter_keys("*")] == []

    asyncio.run(run_async())
