"""Serializer options on every backend, on the real servers: signed values
(SIGN_VALUES, SIGNING_KEYS with rotation) and JSON (SERIALIZER 'json').
A value this cache must not load is a miss, and is never unpickled."""

import logging

import pytest
from conftest import backend_builder
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from racefree.backends.db import DatabaseCache
from racefree.backends.filebased import FileBasedCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache

#: Set by unpickling a Trap: proof that a value was loaded.
sprung = []


def spring(tag):
    sprung.append(tag)
    return tag


class Trap:
    """A value whose unpickling runs code (as a forged pickle would)."""

    def __init__(self, tag):
        self.tag = tag

    def __reduce__(self):
        return spring, (self.tag,)


@pytest.fixture
def make(request, memcached, redis_server, tmp_path):
    """make(options) -> a backend of the parametrized kind on one shared
    location, so differently configured instances see each other's
    entries."""
    sprung.clear()
    return backend_builder(request, tmp_path)


backends = pytest.mark.parametrize("make", ["memcached", "redis", "file", "database"], indirect=True)

VALUES = [{"a": [1, 2.5, None]}, "text", b"\x00bytes", 42, -7, True, [1, "x"], ("t", 1)]


@backends
def test_signed_values_round_trip(make):
    cache = make(SIGN_VALUES=True, SIGNING_KEYS=["k1"])
    for index, value in enumerate(VALUES):
        cache.set(f"v{index}", value)
        assert cache.get(f"v{index}") == value
    assert cache.get_many([f"v{i}" for i in range(len(VALUES))]) == {f"v{i}": v for i, v in enumerate(VALUES)}
    cache.set("n", 10)
    assert cache.incr("n", 5) == 15
    assert cache.decr("n", 3) == 12
    assert cache.get("n") == 12


@backends
def test_unsigned_value_is_a_miss_and_never_unpickled(make, caplog):
    writer = make()  # plain pickle, as a stock backend or an attacker would write
    reader = make(SIGN_VALUES=True, SIGNING_KEYS=["k1"])
    writer.set("forged", Trap("unsigned"))
    assert sprung == []  # (pickling does not run it)
    with caplog.at_level(logging.WARNING, logger="racefree"):
        assert reader.get("forged", "miss") == "miss"
        assert reader.get_many(["forged"]) == {}
    assert sprung == []
    assert "treated as a miss" in caplog.text
    writer.get("forged")  # the same bytes, loaded by a cache that does not sign
    assert sprung == ["unsigned"]


@backends
def test_value_signed_with_another_key_is_a_miss(make):
    make(SIGN_VALUES=True, SIGNING_KEYS=["attacker"]).set("forged", Trap("other key"))
    assert make(SIGN_VALUES=True, SIGNING_KEYS=["k1"]).get("forged") is None
    assert sprung == []


@backends
def test_key_rotation_accepts_older_keys_and_signs_with_the_first(make):
    old = make(SIGN_VALUES=True, SIGNING_KEYS=["old"])
    rotated = make(SIGN_VALUES=True, SIGNING_KEYS=["new", "old"])
    new_only = make(SIGN_VALUES=True, SIGNING_KEYS=["new"])
    old.set("before", {"v": 1})
    assert rotated.get("before") == {"v": 1}
    assert new_only.get("before") is None
    rotated.set("after", {"v": 2})
    assert new_only.get("after") == {"v": 2}
    assert old.get("after") is None


@backends
def test_signing_uses_secret_key_and_its_fallbacks_by_default(make):
    with override_settings(SECRET_KEY="first-secret", SECRET_KEY_FALLBACKS=[]):
        make(SIGN_VALUES=True).set("k", [1])
    with override_settings(SECRET_KEY="second-secret", SECRET_KEY_FALLBACKS=["first-secret"]):
        assert make(SIGN_VALUES=True).get("k") == [1]
    with override_settings(SECRET_KEY="second-secret", SECRET_KEY_FALLBACKS=[]):
        assert make(SIGN_VALUES=True).get("k") is None


@pytest.mark.parametrize("make", ["memcached", "redis", "file"], indirect=True)
def test_tampered_bytes_or_flags_are_misses(make):
    cache = make(SIGN_VALUES=True, SIGNING_KEYS=["k1"])
    cache.set("k", "a text value")
    key = cache._key("k", None)
    # Written behind the backend's back, through its store.
    item = cache._store.get(key)
    if isinstance(item, bytes):
        # Redis holds the signed bytes alone: no flags to change.
        tampered = item[:-1] + bytes([item[-1] ^ 1])
        cache._store.set(key, tampered, cache._write_args(None))
        assert cache.get("k") is None
        return
    flags, data = item
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    # Same signed bytes under other flags (text -> pickle), then flipped bytes.
    for new_flags, new_data in ((flags ^ (1 << 4) | 1, data), (flags, tampered)):
        cache._store.set(key, (new_flags, new_data), cache._write_args(None))
        assert cache.get("k") is None


@backends
def test_json_round_trip_and_refusal_of_other_values(make):
    cache = make(SERIALIZER="json")
    # bytes are kept raw by the (flags, bytes) stores; JSON has no bytes.
    raw = [b"raw"] if not isinstance(cache, (DatabaseCache, RedisCache)) else []
    for value in ({"a": [1, 2.5, None, "x"]}, [1, 2], "text", 3, *raw):
        cache.set("k", value)
        assert cache.get("k") == value
    cache.set("kept", {"v": 1})
    with pytest.raises(TypeError, match="SERIALIZER 'json'"):
        cache.set("kept", object())
    with pytest.raises(TypeError, match="SERIALIZER 'json'"):
        cache.set_many({"kept": {1, 2}})
    assert cache.get("kept") == {"v": 1}  # nothing lost
    cache.set("n", 1)
    assert cache.incr("n", 2) == 3


@backends
def test_json_cache_never_unpickles(make):
    make().set("pickled", Trap("json reader"))
    assert make(SERIALIZER="json").get("pickled", "miss") == "miss"
    assert sprung == []


@backends
def test_signed_json(make):
    cache = make(SERIALIZER="json", SIGN_VALUES=True, SIGNING_KEYS=["k1"])
    cache.set("k", {"nested": {"ok": True}})
    assert cache.get("k") == {"nested": {"ok": True}}
    assert make(SERIALIZER="json", SIGN_VALUES=True, SIGNING_KEYS=["k2"]).get("k") is None


@backends
def test_unverified_value_cannot_be_incremented(make):
    make().set("n", Trap("incr"))
    cache = make(SIGN_VALUES=True, SIGNING_KEYS=["k1"])
    # A signed counter is read and verified before it is counted: an
    # unverified value is missing (ValueError), and never loaded.
    with pytest.raises(ValueError, match="not found"):
        cache.incr("n")
    assert sprung == []
    cache.set("s", "text")
    with pytest.raises(TypeError):
        cache.incr("s")


def raw_copy(cache, source, target):
    """Copy a stored entry's raw item to another key, as any other client
    of the server (or user of the directory or table) could."""
    item = cache._store.get(cache._key(source, None))
    cache._store.set(cache._key(target, None), item, cache._write_args(None))


@backends
def test_a_signed_value_copied_to_another_key_is_a_miss(make, caplog):
    """``perm:alice``'s signed bytes and flags, copied to ``perm:bob``."""
    cache = make(SIGN_VALUES=True, SIGNING_KEYS=["k1"])
    cache.set("perm:alice", {"admin": True})
    raw_copy(cache, "perm:alice", "perm:bob")
    with caplog.at_level(logging.WARNING, logger="racefree"):
        assert cache.get("perm:bob", "miss") == "miss"
        assert cache.get_many(["perm:bob"]) == {}
    assert "treated as a miss" in caplog.text
    assert cache.get("perm:alice") == {"admin": True}
    # Another version of the same key is another key, too.
    cache.set("perm:carol", {"admin": True}, version=2)
    item = cache._store.get(cache._key("perm:carol", 2))
    cache._store.set(cache._key("perm:carol", 1), item, cache._write_args(None))
    assert cache.get("perm:carol", "miss", version=1) == "miss"


@backends
def test_an_unsigned_integer_never_replaces_a_signed_value(make):
    """Another client writes a plain integer over a signed dict."""
    cache = make(SIGN_VALUES=True, SIGNING_KEYS=["k1"])
    cache.set("perm:dave", {"admin": False})
    make().set("perm:dave", 7)  # unsigned, as a plain client would write it
    assert cache.get("perm:dave", "miss") == "miss"
    with pytest.raises(ValueError, match="not found"):
        cache.incr("perm:dave")


@backends
def test_signed_counters_count_exactly_from_threads(make):
    """Signed integers are counted by atomic read-verify-add-sign updates:
    8 threads x 100 increments, none lost."""
    from support.load import run_threads

    cache = make(SIGN_VALUES=True, SIGNING_KEYS=["k1"])
    cache.set("n", 0)
    assert run_threads(8, lambda index: [cache.incr("n") for _ in range(100)]) == []
    assert cache.get("n") == 800
    # The counter stays signed: a plain cache cannot read it as digits.
    assert make().get("n", "miss") == "miss"


@backends
def test_signed_counters_count_from_async_tasks(make):
    import asyncio

    cache = make(SIGN_VALUES=True, SIGNING_KEYS=["k1"])
    cache.set("n", 0)

    async def count():
        await asyncio.gather(*(cache.aincr("n") for _ in range(100)))

    asyncio.run(count())
    assert cache.get("n") == 100


@pytest.mark.parametrize("options, message", [
    ({"SERIALIZER": "yaml"}, "SERIALIZER"),
    ({"SIGN_VALUES": "yes"}, "SIGN_VALUES"),
    ({"SIGNING_KEYS": ["k"]}, "SIGN_VALUES is not True"),
    ({"SIGN_VALUES": True, "SIGNING_KEYS": []}, "SIGNING_KEYS"),
    ({"SIGN_VALUES": True, "SIGNING_KEYS": ["ok", ""]}, "SIGNING_KEYS"),
])
def test_bad_serializer_options_fail_at_startup(tmp_path, options, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        FileBasedCache(str(tmp_path), {"OPTIONS": options})


def test_signing_without_any_key_fails_at_startup(tmp_path):
    with override_settings(SECRET_KEY=""), pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
        FileBasedCache(str(tmp_path), {"OPTIONS": {"SIGN_VALUES": True}})


@pytest.mark.parametrize("backend, options", [
    (FileBasedCache, {"SIGN_VALUES": True, "SIGNING_KEYS": ["hunter2-signing-key", 7]}),
    (MemcachedCache, {"SIGN_VALUES": True, "SIGNING_KEYS": ("hunter2-signing-key", None)}),
    (RedisCache, {"SIGN_VALUES": True, "SIGNING_KEYS": ("hunter2-signing-key", None)}),
    (RedisCache, {"PASSWORD": b"hunter2-redis"}),
    (DatabaseCache, {"DSN": b"host=db password=hunter2-database"}),
], ids=["signing keys", "signing keys on memcached", "signing keys on redis", "redis password", "dsn"])
def test_secrets_in_bad_options_are_never_shown(backend, options, tmp_path):
    """A malformed secret-bearing option is refused without its value in the
    message (which ends up in logs and in manage.py check)."""
    from racefree.checks import check_caches

    location = {FileBasedCache: str(tmp_path), MemcachedCache: "127.0.0.1:1", RedisCache: "redis://127.0.0.1:1",
                DatabaseCache: "t"}[backend]
    with pytest.raises(ImproperlyConfigured) as refused:
        backend(location, {"OPTIONS": options})
    assert "hunter2" not in str(refused.value)
    assert "not shown: it may hold a secret" in str(refused.value)
    path = f"{backend.__module__}.{backend.__name__}"
    with override_settings(CACHES={"c": {"BACKEND": path, "LOCATION": location, "OPTIONS": options}}):
        (message,) = check_caches()
    assert message.id == "racefree.E001" and "hunter2" not in message.msg + (message.hint or "")
