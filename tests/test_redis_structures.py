"""django-redis's set, hash and sorted-set methods on racefree's Redis
backend (``sadd`` ... ``zscore``, and ``hget``/``hgetall``), with their
async twins: on one server and on a three-node cluster, side by side with
django-redis on the same server, under threads and tasks, with every
serializer, with bad input, with a key of another kind, and with a server
that is down."""

import asyncio
import inspect
import pickle
import time

import pytest
from django_redis.cache import RedisCache as DjangoRedisCache
from django_redis.client import DefaultClient
from support.load import run_threads
from support.servers import free_port

from racefree.backends.redis import RedisCache
from racefree.exceptions import CacheConnectionError, CacheServerError

pytestmark = pytest.mark.cross_version


def racefree(topology, prefix, **options):
    location, base = topology
    return RedisCache(location, {"KEY_PREFIX": prefix, "OPTIONS": {**base, **options}})


SERIALIZERS = pytest.mark.parametrize(
    "options", [{}, {"SERIALIZER": "json"}, {"SIGN_VALUES": True}, {"COMPRESS": "zlib", "COMPRESS_MIN_SIZE": 0}],
    ids=["pickle", "json", "signed", "compressed"])


def test_every_call_of_django_redis_s_cache_with_its_parameters_in_its_order():
    """Code calling django-redis positionally runs unchanged: each of its
    cache's public methods exists here, and the data-structure ones take
    the same parameters in the same order (its ``client=`` aside: racefree's
    methods run on its own client, not on a redis-py one passed in).
    ``client`` is the raw access (tests/test_redis_raw_client.py)."""
    public = [name for name in vars(DjangoRedisCache) if not name.startswith("_")]
    assert "client" in public
    assert [name for name in public if not hasattr(RedisCache, name)] == []

    def parameters(function):
        return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()
                if p.name not in ("self", "client")]

    structures = [name for name in public if name[0] in "shz" and name not in ("set", "set_many", "has_key")]
    assert len(structures) == 36
    for name in structures:
        assert parameters(getattr(RedisCache, name)) == parameters(getattr(DefaultClient, name)), name


@SERIALIZERS
def test_sets(topology, prefix, options):
    cache = racefree(topology, prefix, **options)
    assert cache.sadd("s", 1, "a", "b", 1) == 3
    assert cache.sadd("s", "a", "c") == 1
    assert cache.smembers("s") == {1, "a", "b", "c"}
    assert cache.scard("s") == 4 and cache.scard("missing") == 0
    assert cache.sismember("s", "a") is True and cache.sismember("s", "z") is False
    assert cache.sismember("s", 1) is True and cache.sismember("s", "1") is False
    assert cache.smismember("s", "a", "z", 1) == [True, False, True]
    assert cache.srem("s", "c", "z") == 1
    assert cache.smembers("missing") == set()
    assert cache.srandmember("s") in {1, "a", "b"}
    assert sorted(map(str, cache.srandmember("s", 2))) in (["1", "a"], ["1", "b"], ["a", "b"])
    assert len(cache.srandmember("s", -5)) == 5
    assert cache.srandmember("missing") is None and cache.srandmember("missing", 3) == []
    popped = cache.spop("s")
    assert popped in {1, "a", "b"} and cache.scard("s") == 2
    assert cache.spop("s", 5) == {1, "a", "b"} - {popped}
    assert cache.spop("s") is None and cache.spop("s", 2) == set()
    assert cache.sadd("s", 1, version=2) == 1
    assert cache.smembers("s", version=2) == {1} and cache.smembers("s") == set()


@SERIALIZERS
def test_sets_of_several_keys_in_one_slot(topology, prefix, options):
    cache = racefree(topology, prefix, **options)
    cache.sadd("{g}a", 1, 2, 3, "x")
    cache.sadd("{g}b", 2, 3, 4)
    cache.sadd("{g}c", 3, "y")
    assert cache.sdiff("{g}a", "{g}b") == {1, "x"}
    assert cache.sinter("{g}a", "{g}b", "{g}c") == {3}
    assert cache.sunion("{g}a", "{g}b") == {1, 2, 3, 4, "x"}
    assert cache.sdiffstore("{g}d", "{g}a", "{g}b") == 2 and cache.smembers("{g}d") == {1, "x"}
    assert cache.sinterstore("{g}d", "{g}a", "{g}b") == 2 and cache.smembers("{g}d") == {2, 3}
    assert cache.sunionstore("{g}d", "{g}b", "{g}c") == 4 and cache.smembers("{g}d") == {2, 3, 4, "y"}
    cache.sadd("{g}a", 5, version=3)
    assert cache.sdiffstore("{g}e", "{g}a", version_dest=2, version_keys=3) == 1
    assert cache.smembers("{g}e", version=2) == {5}
    # A member moves with its encoding (signed ones too): still found there.
    assert cache.smove("{g}a", "{g}c", "x") is True
    assert cache.smove("{g}a", "{g}c", "x") is False
    assert cache.smembers("{g}c") == {3, "x", "y"} and cache.sismember("{g}c", "x")
    assert cache.smove("{g}a", "{g}b", 5, version=3) is True
    assert cache.smembers("{g}b", version=3) == {5}


def test_keys_of_different_slots_are_refused_in_a_cluster_and_fine_on_one_server(topology, prefix):
    cache = racefree(topology, prefix)
    cache.sadd("a", 1)
    cache.sadd("b", 1)
    calls = [lambda: cache.sinter("a", "b"), lambda: cache.sunionstore("c", "a", "b"),
             lambda: cache.smove("a", "b", 1)]
    if topology[1].get("CLUSTER"):
        for call in calls:
            with pytest.raises(ValueError, match="hash tag"):
                call()
        assert cache.smembers("a") == cache.smembers("b") == {1} and cache.scard("c") == 0
    else:
        assert [call() for call in calls] == [{1}, 1, True]


@SERIALIZERS
def test_sscan_reads_every_page(topology, prefix, options):
    cache = racefree(topology, prefix, **options)
    members = {f"item:{i}" for i in range(300)} | set(range(50))
    cache.sadd("big", *members)
    assert cache.sscan("big") == members
    assert cache.sscan("big", count=7) == members
    assert sorted(cache.sscan_iter("big", count=25), key=str) == sorted(members, key=str)
    assert cache.sscan("big", match="item:1?") == {f"item:{i}" for i in range(10, 20)}
    assert set(cache.sscan_iter("big", match="4*")) == {4} | set(range(40, 50))
    assert cache.sscan("missing") == set()


@SERIALIZERS
def test_hashes(topology, prefix, options):
    cache = racefree(topology, prefix, **options)
    assert cache.hset("h", "name", "Ada") == 1
    assert cache.hset("h", mapping={"age": 36, "tags": ["x", "y"], "name": "Ada L."}) == 2
    assert cache.hset("h", "nothing", None) == 1
    assert cache.hlen("h") == 4 and cache.hlen("missing") == 0
    assert sorted(cache.hkeys("h")) == ["age", "name", "nothing", "tags"]
    assert cache.hexists("h", "age") is True and cache.hexists("h", "nope") is False
    assert cache.hget("h", "name") == "Ada L." and cache.hget("h", "age") == 36
    assert cache.hget("h", "nothing", "default") is None
    assert cache.hget("h", "nope", "default") == "default"
    assert cache.hgetall("h") == {"name": "Ada L.", "age": 36, "tags": ["x", "y"], "nothing": None}
    assert cache.hdel("h", "age") == 1 and cache.hdel("h", "nope") == 0 and cache.hdel("h", "tags") == 1
    # django-redis's positions: a third argument is the version.
    cache.hset("h", "v2", 1, version=2)
    assert cache.hdel("h", "v2", 2) == 1 and cache.hlen("h", version=2) == 0
    assert cache.hgetall("missing") == {}
    assert cache.hset("h", 7, "seven") == 1 and cache.hget("h", 7) == "seven" and "7" in cache.hkeys("h")


@SERIALIZERS
def test_sorted_sets(topology, prefix, options):
    cache = racefree(topology, prefix, **options)
    assert cache.zadd("z", {"a": 1, "b": 2.5, 3: -1}) == 3
    assert cache.zadd("z", {"a": 5}) == 0 and cache.zadd("z", {"a": 1}, ch=True) == 1
    assert cache.zadd("z", {"new": 9}, xx=True) == 0 and cache.zadd("z", {"a": 7}, nx=True) == 0
    assert cache.zadd("z", {"a": 0}, gt=True) == 0 and cache.zscore("z", "a") == 1.0
    assert cache.zadd("z", {"a": 2}, incr=True) == 3.0
    assert cache.zadd("z", {"a": 2}, incr=True, nx=True) is None
    assert cache.zcard("z") == 3 and cache.zcard("missing") == 0
    assert cache.zscore("z", 3) == -1.0 and cache.zscore("z", "3") is None and cache.zscore("z", "none") is None
    assert cache.zincrby("z", 1, "b") == 3.5 and cache.zincrby("z", 4, "fresh") == 4.0
    assert cache.zrange("z", 0, -1) == [3, "a", "b", "fresh"]
    assert cache.zrange("z", 0, 1, desc=True) == ["fresh", "b"]
    assert cache.zrange("z", 0, 1, withscores=True) == [(3, -1.0), ("a", 3.0)]
    assert cache.zrange("z", 0, 0, withscores=True, score_cast_func=lambda s: s.decode()) == [(3, "-1")]
    assert cache.zrevrange("z", 0, 1, withscores=True) == [("fresh", 4.0), ("b", 3.5)]
    assert cache.zcount("z", 0, 3) == 1 and cache.zcount("z", "(3", "+inf") == 2
    assert cache.zcount("z", "-inf", "inf") == 4
    assert cache.zrangebyscore("z", 0, "+inf") == ["a", "b", "fresh"]
    assert cache.zrangebyscore("z", 0, "+inf", start=1, num=1, withscores=True) == [("b", 3.5)]
    assert cache.zrevrangebyscore("z", "+inf", "(3") == ["fresh", "b"]
    assert cache.zrevrangebyscore("z", 10, -10, start=0, num=2) == ["fresh", "b"]
    assert cache.zrank("z", "a") == 1 and cache.zrank("z", "none") is None
    assert cache.zpopmax("z") == ("fresh", 4.0)
    assert cache.zpopmin("z", 2) == [(3, -1.0), ("a", 3.0)]
    assert cache.zrem("z", "b", "none") == 1 and cache.zpopmax("z") is None and cache.zpopmin("z", 3) == []
    cache.zadd("r", {f"m{i}": i for i in range(10)})
    assert cache.zremrangebyscore("r", 2, "(5") == 3 and cache.zcard("r") == 7


def test_zrank_with_its_score_needs_redis_7_2(topology, prefix, redis_server):
    cache = racefree(topology, prefix)
    cache.zadd("z", {"a": 1, "b": 2})
    if redis_server.version >= (7, 2):
        assert cache.zrank("z", "b", withscore=True) == [1, 2.0]
    else:
        # Redis 7.0 has no WITHSCORE: its refusal reaches the caller.
        with pytest.raises(CacheServerError, match="zrank"):
            cache.zrank("z", "b", withscore=True)


@pytest.mark.parametrize("options", [{}, {"PICKLE_VERSION": 5}], ids=["default protocol", "PICKLE_VERSION 5"])
def test_the_same_entries_as_django_redis_on_the_same_server(redis_server, prefix, options):
    # Members are compared byte for byte: each side pickles them alike.
    ours = RedisCache(redis_server.location, {"KEY_PREFIX": prefix, "OPTIONS": options})
    theirs = DjangoRedisCache(redis_server.location, {"KEY_PREFIX": prefix, "OPTIONS": options})
    members = [1, "a", (1, 2), 2.5, None]
    for writer, reader in ((ours, theirs), (theirs, ours)):
        assert writer.sadd("s", *members) == len(members)
        assert reader.smembers("s") == writer.smembers("s") == {1, "a", (1, 2), 2.5, None}
        assert all(reader.sismember("s", member) for member in (1, "a", (1, 2), None))
        assert reader.srem("s", "a", 1) == 2 and writer.scard("s") == 3
        assert writer.zadd("z", {"a": 1, 2: 2.5, (3,): 0}) == 3
        assert reader.zrange("z", 0, -1, withscores=True) == [((3,), 0.0), ("a", 1.0), (2, 2.5)]
        assert reader.zscore("z", 2) == 2.5 and reader.zincrby("z", 1, "a") == 2.0
        assert writer.zrevrangebyscore("z", "+inf", 1) == [2, "a"]
        assert reader.zpopmax("z") == (2, 2.5) and writer.zcard("z") == 2
        assert writer.hset("h", "f", [1, 2]) == 1 and writer.hset("h", mapping={"g": 3}) == 1
        assert reader.hlen("h") == 2 and sorted(reader.hkeys("h")) == ["f", "g"] and reader.hexists("h", "g")
        assert reader.hdel("h", "g") == 1
        writer.delete_many(["s", "z", "h"])
    # django-redis has no hget: its raw client reads what racefree's hset wrote.
    ours.hset("h", mapping={"f": [1, 2], "n": 7})
    raw = theirs.client.get_client()
    key = theirs.make_key("h")
    assert theirs.client.decode(raw.hget(key, "f")) == [1, 2] and theirs.client.decode(raw.hget(key, "n")) == 7
    theirs.hset("h", "g", {"x": 1})
    assert ours.hgetall("h") == {"f": [1, 2], "n": 7, "g": {"x": 1}}


def test_json_members_match_django_redis_s_json(redis_server, prefix):
    # Lists and dicts as members: found only if both sides write the same JSON.
    ours = RedisCache(redis_server.location, {"KEY_PREFIX": prefix, "OPTIONS": {"SERIALIZER": "json"}})
    theirs = DjangoRedisCache(redis_server.location, {
        "KEY_PREFIX": prefix, "OPTIONS": {"SERIALIZER": "django_redis.serializers.json.JSONSerializer"}})
    members = [[1, 2], {"k": "v", "n": [3]}, "text", 4, 2.5]
    for writer, reader in ((ours, theirs), (theirs, ours)):
        assert writer.sadd("j", *members) == 5
        assert all(reader.sismember("j", member) for member in members)
        assert reader.smismember("j", [1, 2], [2, 1]) == [True, False]
        assert reader.srem("j", {"k": "v", "n": [3]}) == 1 and writer.scard("j") == 4
        assert writer.zadd("z", {"a": 1, 7: 2}) == 2 and reader.zscore("z", 7) == 2.0
        assert reader.zrange("z", 0, -1) == ["a", 7]
        writer.delete_many(["j", "z"])
    with pytest.raises(ValueError):
        ours.sadd("j", float("nan"))
    with pytest.raises(TypeError):
        ours.sadd("j", {1, 2})
    assert ours.scard("j") == 0


def test_threads_lose_nothing_and_pop_each_member_once(topology, prefix):
    cache = racefree(topology, prefix)

    def add(thread):
        for i in range(200):
            cache.sadd("members", f"{thread}:{i}")
            cache.zincrby("scores", 1, "shared")
            cache.hset("fields", f"{thread}:{i}", i)

    assert run_threads(8, add) == []
    assert cache.scard("members") == 1600
    assert cache.zscore("scores", "shared") == 1600.0
    assert cache.hlen("fields") == 1600
    # 8 threads pop 1,600 members between them: each comes out once.
    popped = []
    assert run_threads(8, lambda _: popped.extend(iter(lambda: cache.spop("members"), None))) == []
    assert len(popped) == 1600 and set(popped) == {f"{t}:{i}" for t in range(8) for i in range(200)}
    cache.zadd("queue", {f"job{i}": i for i in range(400)})
    taken = []
    assert run_threads(8, lambda _: taken.extend(iter(lambda: cache.zpopmin("queue"), None))) == []
    jobs = [job for job, _ in taken]
    assert len(jobs) == 400 and set(jobs) == {f"job{i}" for i in range(400)}


def test_async_twins(topology, prefix):
    cache = racefree(topology, prefix)

    async def run():
        await asyncio.gather(*(cache.asadd("s", i) for i in range(200)))
        assert await cache.ascard("s") == 200 and await cache.asmembers("s") == set(range(200))
        assert await cache.asismember("s", 5) is True
        assert await cache.asmismember("s", 5, 500) == [True, False]
        assert await cache.asscan("s", count=20) == set(range(200))
        assert {m async for m in cache.asscan_iter("s", match="1?")} == set(range(10, 20))
        popped = await asyncio.gather(*(cache.aspop("s") for _ in range(200)))
        assert sorted(popped) == list(range(200)) and await cache.aspop("s") is None
        await asyncio.gather(*(cache.azincrby("z", 1, "m") for _ in range(200)))
        assert await cache.azscore("z", "m") == 200.0
        assert await cache.azadd("z", {"n": 1}) == 1
        assert await cache.azrange("z", 0, -1, withscores=True) == [("n", 1.0), ("m", 200.0)]
        assert await cache.azrangebyscore("z", 2, "+inf") == ["m"]
        assert await cache.azpopmax("z") == ("m", 200.0)
        assert await cache.ahset("h", mapping={"a": 1, "b": [2]}) == 2
        assert await cache.ahget("h", "b") == [2] and await cache.ahgetall("h") == {"a": 1, "b": [2]}
        assert await cache.ahdel("h", "a") == 1 and await cache.ahlen("h") == 1
        await cache.asadd("{t}x", 1, 2)
        await cache.asadd("{t}y", 2, 3)
        assert await cache.asinter("{t}x", "{t}y") == {2}
        assert await cache.asunionstore("{t}z", "{t}x", "{t}y") == 3

    asyncio.run(run())


def test_a_key_of_another_kind_and_bad_input_raise_and_change_nothing(topology, prefix):
    cache = racefree(topology, prefix)
    cache.set("string", "v")
    cache.sadd("s", "a")
    cache.zadd("z", {"a": 1})
    for call in (lambda: cache.sadd("string", 1), lambda: cache.zadd("s", {"a": 1}), lambda: cache.hget("z", "f"),
                 lambda: cache.get("s"), lambda: cache.incr("z")):
        with pytest.raises(TypeError, match="another kind"):
            call()
    assert cache.get("string") == "v" and cache.smembers("s") == {"a"} and cache.zscore("z", "a") == 1.0
    type_errors = [lambda: cache.sadd("s"), lambda: cache.srem("s"), lambda: cache.spop("s", "2"),
                   lambda: cache.spop("s", True), lambda: cache.zadd("z", {"b": None}),
                   lambda: cache.zadd("z", {"b": True}), lambda: cache.zrange("z", "0", 1),
                   lambda: cache.hset("h", ["f"], 1), lambda: cache.hdel("h"), lambda: cache.sinter(),
                   lambda: cache.sscan("s", match=b"a*")]
    value_errors = [lambda: cache.spop("s", -1), lambda: cache.zadd("z", {}), lambda: cache.zadd("z", {"b": 1},
                    nx=True, xx=True), lambda: cache.zadd("z", {"b": 1}, gt=True, lt=True),
                    lambda: cache.zadd("z", {"b": 1, "c": 2}, incr=True), lambda: cache.zadd("z", {"b": float("nan")}),
                    lambda: cache.zcount("z", "low", 1), lambda: cache.zrangebyscore("z", 0, 1, start=1),
                    lambda: cache.hset("h"), lambda: cache.sscan("s", count=0), lambda: cache.zincrby("z", "one", "a")]
    for call in type_errors:
        with pytest.raises(TypeError):
            call()
    for call in value_errors:
        with pytest.raises(ValueError):
            call()
    assert cache.smembers("s") == {"a"} and cache.zrange("z", 0, -1, withscores=True) == [("a", 1.0)]
    assert cache.hlen("h") == 0


def test_signed_members_that_do_not_verify_are_left_out(redis_server, prefix):
    cache = RedisCache(redis_server.location, {"KEY_PREFIX": prefix, "OPTIONS": {"SIGN_VALUES": True}})
    cache.sadd("s", "good", 1)
    key = cache.make_key("s")
    # Written by someone without the signing key: a pickle, and digits.
    redis_server.cli("SADD", key, "12")
    assert cache.smembers("s") == {"good", 1}
    unsigned = RedisCache(redis_server.location, {"KEY_PREFIX": prefix})
    unsigned.sadd("s", pickle.loads(pickle.dumps("forged")))
    assert cache.smembers("s") == {"good", 1} and cache.scard("s") == 4


def test_a_server_that_is_down_raises_or_with_ignore_exceptions_answers_empty():
    location = f"redis://127.0.0.1:{free_port()}"
    down = RedisCache(location, {"OPTIONS": {"CONNECT_TIMEOUT": 0.5}})
    calls = {
        "sadd": (lambda c: c.sadd("s", 1), 0), "smembers": (lambda c: c.smembers("s"), set()),
        "sismember": (lambda c: c.sismember("s", 1), False), "smismember": (lambda c: c.smismember("s", 1, 2),
                                                                             [False, False]),
        "spop": (lambda c: c.spop("s"), None), "spop count": (lambda c: c.spop("s", 2), set()),
        "sinter": (lambda c: c.sinter("a", "b"), set()), "sscan": (lambda c: c.sscan("s"), set()),
        "sscan_iter": (lambda c: list(c.sscan_iter("s")), []),
        "hset": (lambda c: c.hset("h", "f", 1), 0), "hget": (lambda c: c.hget("h", "f", "d"), "d"),
        "hgetall": (lambda c: c.hgetall("h"), {}), "hkeys": (lambda c: c.hkeys("h"), []),
        "zadd": (lambda c: c.zadd("z", {"a": 1}), 0), "zadd incr": (lambda c: c.zadd("z", {"a": 1}, incr=True), None),
        "zscore": (lambda c: c.zscore("z", "a"), None), "zrange": (lambda c: c.zrange("z", 0, -1), []),
        "zpopmax": (lambda c: c.zpopmax("z"), None), "zpopmin count": (lambda c: c.zpopmin("z", 2), []),
        "zrank": (lambda c: c.zrank("z", "a"), None), "zcard": (lambda c: c.zcard("z"), 0),
    }
    for name, (call, _) in calls.items():
        started = time.monotonic()
        with pytest.raises(CacheConnectionError):
            call(down)
        assert time.monotonic() - started < 3, name
    ignoring = RedisCache(location, {"OPTIONS": {"CONNECT_TIMEOUT": 0.5, "IGNORE_EXCEPTIONS": True}})
    assert {name: call(ignoring) for name, (call, _) in calls.items()} == {
        name: empty for name, (_, empty) in calls.items()}

    async def run_async():
        with pytest.raises(CacheConnectionError):
            await down.asmembers("s")
        assert await ignoring.asmembers("s") == set()
        with pytest.raises(CacheConnectionError):
            [m async for m in down.asscan_iter("s")]
        assert [m async for m in ignoring.asscan_iter("s")] == []

    asyncio.run(run_async())
