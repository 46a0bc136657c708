"""COMPRESS on every backend, on the real servers: values are stored
smaller (the raw bytes are read back through the store), only above
COMPRESS_MIN_SIZE and only when smaller, never for integers; reading does
not depend on the option; signed values are compressed, then signed; a
damaged or oversized compressed entry is a logged miss; pymemcache's
CompressedSerde and racefree's zlib read each other's values, and Django's
stock backends fail on what they cannot read instead of returning it."""

import asyncio
import json
import logging
import os
import pickle
import threading
import time
import uuid
import zlib

import pytest
from conftest import backend_builder
from django.core.cache.backends.db import DatabaseCache as StockDatabaseCache
from django.core.cache.backends.memcached import PyMemcacheCache
from django.core.cache.backends.redis import RedisCache as StockRedisCache
from django.core.exceptions import ImproperlyConfigured
from pymemcache.serde import CompressedSerde

from racefree import _core, serialization
from racefree.backends.db import DatabaseCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache
from racefree.serialization import (
    CODEC_MARKS,
    COMPRESSED_MARK,
    FLAG_COMPRESSED,
    FLAG_INTEGER,
    FLAG_PICKLE,
    FLAG_SIGNED,
    FLAG_TEXT,
    FLAG_ZSTD,
)

CODECS = ["zlib", "zstd"]
# JSON-like text: what pages and API responses cached in Django look like.
RECORD = '{"id": %d, "name": "user %d", "email": "user%d@example.com", "active": true, "roles": ["a", "b"]}, '
TEXT = "".join(RECORD % (i, i, i) for i in range(300))  # about 25 KB
OBJECT = {"rows": [{"id": i, "name": f"user {i}", "tags": ["a", "b", "c"]} for i in range(300)]}


@pytest.fixture
def make(request, memcached, redis_server, tmp_path):
    """make(**options) -> a backend of the parametrized kind on one shared
    location, so differently configured instances see each other's
    entries."""
    return backend_builder(request, tmp_path)


backends = pytest.mark.parametrize("make", ["memcached", "redis", "file", "database"], indirect=True)
#: The stores that keep flags beside the bytes (text and bytes stored as
#: they are); Redis and PostgreSQL hold the serialized bytes alone.
flag_stores = pytest.mark.parametrize("make", ["memcached", "file"], indirect=True)
#: The stores whose items are the serialized bytes alone (no flags).
BYTES_STORES = (DatabaseCache, RedisCache)
codecs = pytest.mark.parametrize("codec", CODECS)


def raw(cache, key):
    """What the store holds for ``key``: ``(flags, bytes)``, or the bytes
    alone on Redis and PostgreSQL (there base64 decoded)."""
    return cache._store.get(cache._key(key, None))


def put_raw(cache, key, item):
    """Store ``item`` behind the backend's back, as any other client of
    the server, directory or table could."""
    cache._store.set(cache._key(key, None), item, cache._write_args(None))


def stored_bytes(item):
    return item if isinstance(item, bytes) else item[1]


def compressed_with(item):
    """The codec ``item`` is marked as compressed with, or None."""
    if isinstance(item, bytes):
        return next((codec for codec, mark in CODEC_MARKS.items() if item.startswith(mark)), None)
    flags = item[0]
    if not flags & FLAG_COMPRESSED:
        return None
    return "zstd" if flags & FLAG_ZSTD else "zlib"


# -- Stored smaller, read back exactly ------------------------------------------------------


@pytest.mark.cross_version
@backends
@codecs
def test_compressible_values_are_stored_compressed_and_read_back(make, codec):
    cache = make(COMPRESS=codec)
    values = {"text": TEXT, "object": OBJECT}
    if not isinstance(cache, DatabaseCache):
        values["bytes"] = TEXT.encode()
    for name, value in values.items():
        cache.set(name, value)
        item = raw(cache, name)
        assert compressed_with(item) == codec, name
        plain = len(pickle.dumps(value)) if isinstance(cache, BYTES_STORES) else len(TEXT)
        assert len(stored_bytes(item)) * 5 < plain, (name, len(stored_bytes(item)))
        assert cache.get(name) == value
        assert type(cache.get(name)) is type(value)


@backends
@codecs
def test_json_values_are_compressed(make, codec):
    cache = make(COMPRESS=codec, SERIALIZER="json")
    cache.set("object", OBJECT)
    cache.set("text", TEXT)
    for name in ("object", "text"):
        assert compressed_with(raw(cache, name)) == codec
    assert cache.get("object") == OBJECT
    assert cache.get("text") == TEXT
    # What was compressed is JSON, never a pickle.
    item = raw(cache, "object")
    data = stored_bytes(item)
    if isinstance(item, bytes):
        data = data[len(CODEC_MARKS[codec]):]
    assert json.loads(_core.decompress(codec, data, 1 << 20)) == OBJECT


@backends
def test_the_default_is_no_compression(make):
    cache = make()
    cache.set("text", TEXT)
    assert compressed_with(raw(cache, "text")) is None
    assert cache._serializer.compression is None


@pytest.mark.parametrize("make", ["memcached", "redis", "file"], indirect=True)
@codecs
def test_integers_stay_digits(make, codec):
    cache = make(COMPRESS=codec, COMPRESS_MIN_SIZE=0)
    big = 10**600  # 601 digits, all but one of them zeros
    cache.set("big", big)
    if isinstance(cache, RedisCache):
        # Django's RedisCache encoding: an int as its digits, no flags.
        assert raw(cache, "big") == str(big).encode()
    else:
        assert raw(cache, "big") == (FLAG_INTEGER, str(big).encode())
    assert cache.get("big") == big
    cache.set("counter", 10**18)
    if isinstance(cache, RedisCache):
        assert raw(cache, "counter") == b"1" + b"0" * 18
    else:
        flags, digits = raw(cache, "counter")
        # (The file store pads a counter with spaces, to count in place.)
        assert (flags, digits.rstrip()) == (FLAG_INTEGER, b"1" + b"0" * 18)
    assert cache.incr("counter", 5) == 10**18 + 5


@backends
@codecs
def test_the_threshold_is_pymemcaches_longer_than(make, codec):
    """Compressed when the serialized value is longer than
    COMPRESS_MIN_SIZE, as pymemcache's ``len(value) > min_compress_len``."""
    value = b"abc" * 200
    size = len(stored_bytes(make()._encode("k", value)))
    at_threshold = make(COMPRESS=codec, COMPRESS_MIN_SIZE=size)
    at_threshold.set("k", value)
    assert compressed_with(raw(at_threshold, "k")) is None
    assert at_threshold.get("k") == value
    below = make(COMPRESS=codec, COMPRESS_MIN_SIZE=size - 1)
    below.set("k", value)
    assert compressed_with(raw(below, "k")) == codec
    assert below.get("k") == value


@flag_stores
def test_the_default_threshold_is_400_bytes(make):
    cache = make(COMPRESS="zlib")
    cache.set("at", "x" * 400)
    cache.set("above", "x" * 401)
    assert raw(cache, "at") == (FLAG_TEXT, b"x" * 400)
    assert compressed_with(raw(cache, "above")) == "zlib"


@backends
@codecs
def test_incompressible_values_are_stored_as_they_are(make, codec):
    cache = make(COMPRESS=codec)
    noise = os.urandom(20_000)
    cache.set("noise", noise)
    item = raw(cache, "noise")
    assert compressed_with(item) is None
    assert item == (make()._encode(cache._key("noise", None), noise))
    assert cache.get("noise") == noise


@backends
@codecs
def test_the_level_is_used(make, codec):
    value = TEXT.encode()
    serialized = stored_bytes(make()._encode("k", value))
    levels = (1, 9 if codec == "zlib" else 19)
    for level in levels:
        cache = make(COMPRESS=codec, COMPRESS_LEVEL=level)
        cache.set(f"level-{level}", value)
        expected = _core.compress(codec, serialized, level)
        assert stored_bytes(raw(cache, f"level-{level}")).endswith(expected)
    assert _core.compress(codec, serialized, levels[0]) != _core.compress(codec, serialized, levels[1])
    assert make(COMPRESS=codec).get("level-1") == value


@backends
@codecs
def test_get_many_and_set_many(make, codec):
    cache = make(COMPRESS=codec)
    values = {f"k{i}": {"n": i, "text": TEXT} for i in range(5)}
    values["small"] = "tiny"
    assert cache.set_many(values) == []
    assert all(compressed_with(raw(cache, f"k{i}")) == codec for i in range(5))
    assert compressed_with(raw(cache, "small")) is None
    assert cache.get_many([*values, "absent"]) == values


@pytest.mark.cross_version
@backends
@codecs
def test_async_twins(make, codec):
    cache = make(COMPRESS=codec)

    async def main():
        await cache.aset("text", TEXT)
        await cache.aset_many({"object": OBJECT})
        assert await cache.aget("text") == TEXT
        assert await cache.aget_many(["object", "text"]) == {"object": OBJECT, "text": TEXT}
        assert await cache.aget_or_set("computed", lambda: OBJECT) == OBJECT

    asyncio.run(main())
    assert compressed_with(raw(cache, "text")) == codec
    assert compressed_with(raw(cache, "computed")) == codec


# -- Reading does not depend on the option --------------------------------------------------


@backends
@codecs
def test_any_cache_reads_compressed_entries(make, codec):
    """Turning compression off, or changing codec, keeps the cache warm."""
    make(COMPRESS=codec).set_many({"text": TEXT, "object": OBJECT})
    for reader in (make(), make(COMPRESS="zlib"), make(COMPRESS="zstd"), make(COMPRESS=codec, COMPRESS_MIN_SIZE=10**9)):
        assert reader.get("text") == TEXT
        assert reader.get_many(["object"]) == {"object": OBJECT}


# -- Signed values: compressed, then signed ------------------------------------------------


@backends
@codecs
def test_signed_values_are_compressed_then_signed(make, codec):
    cache = make(COMPRESS=codec, SIGN_VALUES=True, SIGNING_KEYS=["k1"])
    cache.set("text", TEXT)
    item = raw(cache, "text")
    data = stored_bytes(item)
    mac_size = serialization.MAC_SIZE
    if isinstance(item, tuple):
        assert item[0] & FLAG_SIGNED and compressed_with(item) == codec
    else:
        assert data[mac_size:].startswith(CODEC_MARKS[codec])
    assert len(data) * 5 < len(TEXT)
    assert cache.get("text") == TEXT
    # Another cache with the key reads it, compressing or not.
    assert make(SIGN_VALUES=True, SIGNING_KEYS=["k1"]).get("text") == TEXT
    assert make(COMPRESS=codec, SIGN_VALUES=True, SIGNING_KEYS=["other"]).get("text") is None


@backends
@codecs
def test_a_tampered_signed_compressed_value_is_a_miss_never_decompressed(make, codec, caplog, monkeypatch):
    cache = make(COMPRESS=codec, SIGN_VALUES=True, SIGNING_KEYS=["k1"])
    cache.set("text", TEXT)
    item = raw(cache, "text")
    data = stored_bytes(item)
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    put_raw(cache, "text", tampered if isinstance(item, bytes) else (item[0], tampered))
    decompressed = []
    real = _core.decompress
    monkeypatch.setattr(_core, "decompress", lambda *args: decompressed.append(args) or real(*args))
    with caplog.at_level(logging.WARNING, logger="racefree"):
        assert cache.get("text", "miss") == "miss"
        assert cache.get_many(["text"]) == {}
    assert decompressed == []  # the MAC failed first
    assert "treated as a miss" in caplog.text


# -- Damaged or hostile entries: a logged miss ----------------------------------------------


def damaged_entries(cache, codec):
    """Items marked compressed with ``codec`` whose bytes are not a
    complete stream of it."""
    good = stored_bytes(raw(cache, "good"))
    if isinstance(cache, BYTES_STORES):
        mark = CODEC_MARKS[codec]
        return [mark + b"not compressed", good[: len(good) // 2], mark, COMPRESSED_MARK + b"\x09" + good[5:]]
    flags = raw(cache, "good")[0]
    return [(flags, b"not compressed"), (flags, good[: len(good) // 2]), (flags, b""), (flags ^ FLAG_ZSTD, good)]


@backends
@codecs
def test_a_damaged_compressed_entry_is_a_logged_miss(make, codec, caplog):
    cache = make(COMPRESS=codec)
    cache.set("good", TEXT)
    for item in damaged_entries(cache, codec):
        put_raw(cache, "bad", item)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="racefree"):
            assert cache.get("bad", "miss") == "miss"
            assert cache.get_many(["bad", "good"]) == {"good": TEXT}
        assert [record.levelname for record in caplog.records] == ["WARNING", "WARNING"], item
        assert "treated as a miss" in caplog.records[0].getMessage()
        assert caplog.records[0].exc_info[0] is ValueError


@backends
@codecs
def test_decompression_stops_at_the_limit(make, codec, caplog, monkeypatch):
    """An entry that expands past MAX_DECOMPRESSED_SIZE is a miss, and a
    value larger than it is stored uncompressed (so always readable)."""
    monkeypatch.setattr(serialization, "MAX_DECOMPRESSED_SIZE", 100_000)
    cache = make(COMPRESS=codec)
    cache.set("large", "x" * 200_000)
    assert compressed_with(raw(cache, "large")) is None
    assert cache.get("large") == "x" * 200_000
    cache.set("fits", "x" * 50_000)
    assert compressed_with(raw(cache, "fits")) == codec
    # A bomb: 100,001 bytes, marked as compressed text (or a pickle).
    bomb = _core.compress(codec, b"y" * 100_001)
    if isinstance(cache, BYTES_STORES):
        put_raw(cache, "bomb", CODEC_MARKS[codec] + bomb)
    else:
        put_raw(cache, "bomb", (FLAG_TEXT | serialization.COMPRESSION_FLAGS[codec], bomb))
    with caplog.at_level(logging.WARNING, logger="racefree"):
        assert cache.get("bomb", "miss") == "miss"
    assert "decompresses to more than 100000 bytes" in caplog.text


# -- Stock backends -------------------------------------------------------------------------

INTEROP_VALUES = {"text": TEXT, "bytes": TEXT.encode(), "object": OBJECT, "small": "tiny", "int": 42}


def stock_compressed(location, prefix):
    """Django's PyMemcacheCache with pymemcache's compressing serde."""
    return PyMemcacheCache(location, {"KEY_PREFIX": prefix, "OPTIONS": {"serde": CompressedSerde()}})


@pytest.mark.cross_version
def test_pymemcache_compressed_serde_reads_racefree_zlib(memcached):
    ours = MemcachedCache(memcached.location, {"KEY_PREFIX": "z1", "OPTIONS": {"COMPRESS": "zlib"}})
    theirs = stock_compressed(memcached.location, "z1")
    ours.set_many(INTEROP_VALUES)
    assert compressed_with(raw(ours, "text")) == "zlib"
    assert raw(ours, "text")[0] == FLAG_TEXT | 8  # pymemcache's FLAG_COMPRESSED
    assert raw(ours, "object")[0] == FLAG_PICKLE | 8
    for name, value in INTEROP_VALUES.items():
        assert theirs.get(name, "MISSING") == value, name
    assert theirs.get_many(list(INTEROP_VALUES)) == INTEROP_VALUES
    assert theirs.incr("int") == 43


@pytest.mark.cross_version
def test_racefree_reads_pymemcache_compressed_serde(memcached):
    theirs = stock_compressed(memcached.location, "z2")
    theirs.set_many(INTEROP_VALUES)
    for options in ({"COMPRESS": "zlib"}, {"COMPRESS": "zstd"}, {}):
        ours = MemcachedCache(memcached.location, {"KEY_PREFIX": "z2", "OPTIONS": options})
        assert compressed_with(raw(ours, "text")) == "zlib"
        for name, value in INTEROP_VALUES.items():
            assert ours.get(name, "MISSING") == value, (options, name)
        assert ours.get_many(list(INTEROP_VALUES)) == INTEROP_VALUES
    assert ours.incr("int") == 43


def test_racefree_and_pymemcache_compress_the_same_values(memcached):
    """The same threshold (longer than 400 bytes) and the same rule for
    a compressed value that is not smaller: it is stored as it is."""
    ours = MemcachedCache(memcached.location, {"KEY_PREFIX": "z3", "OPTIONS": {"COMPRESS": "zlib"}})
    theirs = stock_compressed(memcached.location, "z4")
    values = {"at": "x" * 400, "above": "x" * 401, "noise": os.urandom(2_000), "text": TEXT}
    ours.set_many(values)
    theirs.set_many(values)
    for name in values:
        stock_flags = ours._store.get(theirs.make_and_validate_key(name))[0]
        assert raw(ours, name)[0] == stock_flags, name
    # Both are Python's zlib format: each decompresses the other's bytes.
    assert zlib.decompress(raw(ours, "text")[1]) == TEXT.encode()


@pytest.mark.parametrize("value", [TEXT, TEXT.encode(), OBJECT], ids=["str", "bytes", "object"])
def test_pymemcache_raises_on_racefree_zstd_instead_of_returning_it(memcached, value):
    ours = MemcachedCache(memcached.location, {"KEY_PREFIX": "z5", "OPTIONS": {"COMPRESS": "zstd"}})
    theirs = stock_compressed(memcached.location, "z5")
    ours.set("k", value)
    assert compressed_with(raw(ours, "k")) == "zstd"
    with pytest.raises(zlib.error):
        theirs.get("k")


def test_pymemcache_without_compressed_serde_misreads_compressed_values(memcached):
    """Why a compressing cache is shared only with CompressedSerde readers
    (docs/values.md): pymemcache's plain serde ignores flag 8, as it does
    for pymemcache's own compressed values."""
    ours = MemcachedCache(memcached.location, {"KEY_PREFIX": "z6", "OPTIONS": {"COMPRESS": "zlib"}})
    plain = PyMemcacheCache(memcached.location, {"KEY_PREFIX": "z6"})
    ours.set_many({"bytes": TEXT.encode(), "text": TEXT, "object": OBJECT, "small": "tiny"})
    assert zlib.decompress(plain.get("bytes")) == TEXT.encode()  # the stored bytes, not the value
    assert plain.get("object", "default") is None
    with pytest.raises(UnicodeDecodeError):
        plain.get("text")
    assert plain.get("small") == "tiny"


@pytest.mark.cross_version
def test_django_database_cache_raises_on_compressed_rows(table):
    ours = DatabaseCache(table, {"OPTIONS": {"COMPRESS": "zlib"}})
    theirs = StockDatabaseCache(table, {})
    ours.set("text", TEXT)
    ours.set("small", "tiny")
    assert raw(ours, "text").startswith(CODEC_MARKS["zlib"])
    with pytest.raises(pickle.UnpicklingError):
        theirs.get("text")
    # Values under the threshold are stock pickles still.
    assert theirs.get("small") == "tiny"
    # And racefree reads everything the stock backend writes.
    theirs.set("theirs", TEXT)
    assert ours.get("theirs") == TEXT


@pytest.mark.cross_version
def test_django_redis_cache_raises_on_compressed_values(redis_server):
    prefix = uuid.uuid4().hex[:8]
    ours = RedisCache(redis_server.location, {"KEY_PREFIX": prefix, "OPTIONS": {"COMPRESS": "zlib"}})
    theirs = StockRedisCache(redis_server.location, {"KEY_PREFIX": prefix})
    ours.set("text", TEXT)
    ours.set("small", "tiny")
    ours.set("int", 42)
    assert raw(ours, "text").startswith(CODEC_MARKS["zlib"])
    with pytest.raises(pickle.UnpicklingError):
        theirs.get("text")
    # Values under the threshold are Django's encoding still.
    assert theirs.get("small") == "tiny"
    assert theirs.incr("int") == 43
    # And racefree reads everything the stock backend writes.
    theirs.set("theirs", TEXT)
    assert ours.get("theirs") == TEXT


def test_compressed_pickles_and_json_never_start_like_the_mark():
    # Every pickle starts with an opcode and every JSON document with
    # a value or whitespace: never NUL.
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for value in (0, "", b"", None, [], {}, OBJECT, 2**100, 1.5):
            assert not pickle.dumps(value, protocol).startswith(b"\x00")
    assert not any(json.dumps(value).startswith("\x00") for value in (0, "", None, [], {}, OBJECT))


# -- The extension's functions --------------------------------------------------------------


def test_zlib_is_pythons_format_both_ways():
    data = TEXT.encode()
    assert zlib.decompress(_core.compress("zlib", data)) == data
    assert _core.decompress("zlib", zlib.compress(data), len(data)) == data
    for level in range(1, 10):
        assert zlib.decompress(_core.compress("zlib", data, level)) == data


def longest_pause_while_compressing(codec, data, level):
    """(the longest gap another thread saw between its steps, the
    compression's time) while ``data`` is compressed on a thread."""
    done = threading.Event()
    timing = {}

    def compress():
        started = time.perf_counter()
        _core.compress(codec, data, level)
        timing["took"] = time.perf_counter() - started
        done.set()

    worker = threading.Thread(target=compress)
    longest_pause, last = 0.0, time.perf_counter()
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        longest_pause, last = max(longest_pause, now - last), now
    worker.join()
    return longest_pause, timing["took"]


@pytest.mark.parametrize("codec", CODECS)
def test_compression_releases_the_gil(codec):
    """Another thread runs Python while a value is compressed: the
    longest pause it sees is a fraction of the compression's time (with
    the GIL held it would be all of it)."""
    level = 9 if codec == "zlib" else 19
    # From 10 MB, four times more until the compression takes long enough
    # to tell, however fast this machine is.
    for repeats in (400, 1600, 6400):
        longest_pause, took = longest_pause_while_compressing(codec, (TEXT * repeats).encode(), level)
        if took > 0.2:
            break
    assert took > 0.1, "too little work to tell"
    assert longest_pause < took / 2, (longest_pause, took)


def test_the_extension_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="unknown codec"):
        _core.compress("gzip", b"x")
    with pytest.raises(ValueError, match="zlib level 10 is not from 1 to 9"):
        _core.compress("zlib", b"x", 10)
    with pytest.raises(ValueError, match="not a valid zstd stream"):
        _core.decompress("zstd", b"garbage", 100)
    with pytest.raises(ValueError, match="more than 10 bytes"):
        _core.decompress("zlib", zlib.compress(b"y" * 11), 10)


# -- Options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"COMPRESS": "gzip"}, "OPTIONS\\['COMPRESS'\\] must be 'zlib' or 'zstd'"),
        ({"COMPRESS": True}, "OPTIONS\\['COMPRESS'\\] must be"),
        ({"COMPRESS": "zlib", "COMPRESS_LEVEL": 0}, "from 1 to 9 for 'zlib'"),
        ({"COMPRESS": "zlib", "COMPRESS_LEVEL": 10}, "from 1 to 9 for 'zlib'"),
        ({"COMPRESS": "zstd", "COMPRESS_LEVEL": 23}, "from 1 to 22 for 'zstd'"),
        ({"COMPRESS": "zstd", "COMPRESS_LEVEL": "3"}, "OPTIONS\\['COMPRESS_LEVEL'\\] must be an integer"),
        ({"COMPRESS": "zstd", "COMPRESS_LEVEL": True}, "OPTIONS\\['COMPRESS_LEVEL'\\] must be an integer"),
        ({"COMPRESS_LEVEL": 3}, "COMPRESS_LEVEL'\\] is set but COMPRESS is not"),
        ({"COMPRESS": "zlib", "COMPRESS_MIN_SIZE": -1}, "OPTIONS\\['COMPRESS_MIN_SIZE'\\] must be an integer >= 0"),
        ({"COMPRESS": "zlib", "COMPRESS_MIN_SIZE": "400"}, "OPTIONS\\['COMPRESS_MIN_SIZE'\\] must be"),
    ],
)
@backends
def test_bad_options_are_refused_at_creation(make, options, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        make(**options)


@backends
def test_good_options(make):
    for codec in CODECS:
        cache = make(COMPRESS=codec, COMPRESS_LEVEL=1, COMPRESS_MIN_SIZE=0)
        assert cache._serializer.compression == serialization.Compression(codec, 1, 0)
    assert make(COMPRESS="zstd")._serializer.compression == serialization.Compression("zstd", None, 400)
