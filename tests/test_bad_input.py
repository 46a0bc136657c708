"""Bad keys and values, side by side with Django's stock backend of the
same kind on the same server: every outcome must be the stock one, or a
difference listed in DIFFERENCES with its reason (racefree is stricter or
safer, never looser). The outcomes are written to build/bad_input_table.md,
the table the README shows."""

import os
import pickle
import uuid
import warnings

import pytest
from django.core.cache.backends.db import DatabaseCache as StockDatabaseCache
from django.core.cache.backends.filebased import FileBasedCache as StockFileBasedCache
from django.core.cache.backends.memcached import PyMemcacheCache
from django.core.cache.backends.redis import RedisCache as StockRedisCache

from racefree.backends.db import DatabaseCache
from racefree.backends.filebased import FileBasedCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache

# The key function passes keys through as given, so each key reaches the
# backend's own checks unchanged.
RAW_KEYS = {"KEY_FUNCTION": lambda key, prefix, version: key}

BUILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build")

KEYS = {
    "empty": "",
    "250 chars": "k" * 250,
    "251 chars": "k" * 251,
    "10,000 chars": "k" * 10_000,
    "non-ASCII": "clé-été",
    "200 chars, 400 bytes": "é" * 200,
    "space": "with space",
    "CR/LF": "crlf\r\nflush_all",
    "NUL": "nul\0byte",
    "tab": "tab\tkey",
}


class Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("refuses to be pickled")


class FailsOnLoad:
    def __reduce__(self):
        return (_fail_on_load, ())


def _fail_on_load():
    raise RuntimeError("cannot load")


VALUES = {
    "unpicklable": Unpicklable(),
    "raises when loaded": FailsOnLoad(),
    "2 MB": b"x" * (2 * 1024 * 1024),
}

TIMEOUTS = {
    "timeout inf": float("inf"),
    "timeout -inf": float("-inf"),
    "timeout NaN": float("nan"),
    "timeout 1e12 s": 1e12,
    "timeout 10**20 s": 10**20,
}

#: (kind, input, racefree's outcome, stock's outcome): why they differ.
DIFFERENCES = {
    ("memcached", "empty"): "refused before the wire with Django's exception; pymemcache sends it and fails "
    "on the server's reply",
    ("memcached", "200 chars, 400 bytes"): "refused before the wire: memcached's limit is 250 bytes, "
    "Django counts characters and pymemcache then fails on the server",
    ("memcached", "raises when loaded"): "a value that cannot be loaded reads as a miss (the caller's "
    "default) and is logged; pymemcache returns None whatever the default",
    ("memcached", "2 MB"): "ValueTooLargeError (a ValueError) naming the limit; pymemcache raises "
    "MemcacheServerError; in both the old value is gone",
    ("redis", "raises when loaded"): "a miss, logged; Django's RedisCache raises the loading error to the caller",
    ("file", "raises when loaded"): "a miss, logged; Django's file cache raises the loading error to the caller",
    ("database", "10,000 chars"): "refused with InvalidCacheKey (and Django's warning) before the query: "
    "the key column holds 255 characters; Django's set swallows the database error, so the value is "
    "silently not stored",
    ("database", "NUL"): "refused with InvalidCacheKey (and Django's warning): PostgreSQL text cannot hold "
    "NUL; Django's set swallows the driver's error and its get raises DataError",
    ("database", "raises when loaded"): "a miss, logged; Django's database cache raises the loading error",
    ("memcached", "timeout inf"): "never expires, as Django's file cache reads it; PyMemcacheCache raises "
    "OverflowError from int(inf)",
    ("memcached", "timeout -inf"): "already expired; PyMemcacheCache raises OverflowError",
    ("memcached", "timeout 1e12 s"): "never expires (an expiry beyond memcached's 32-bit timestamps, the year "
    "2038); pymemcache sends a timestamp memcached reads as past, so the value is silently gone",
    ("memcached", "timeout 10**20 s"): "never expires; pymemcache sends a number memcached refuses",
    ("redis", "timeout inf"): "never expires; Django's RedisCache raises OverflowError from int(inf)",
    ("redis", "timeout -inf"): "already expired; Django's RedisCache raises OverflowError",
    ("redis", "timeout 10**20 s"): "never expires (beyond what Redis's 64-bit millisecond expiry holds); "
    "Django's RedisCache sends it and Redis refuses it (ResponseError: nothing stored, the expiry unchanged)",
    ("file", "timeout NaN"): "refused with ValueError on every racefree backend; Django's file cache stores "
    "it for ever, as no comparison with NaN is true",
    ("database", "timeout inf"): "never expires; Django's database cache raises OverflowError making a date of it",
    ("database", "timeout -inf"): "already expired; Django's database cache raises OverflowError",
    ("database", "timeout 1e12 s"): "never expires (later than the table's dates reach); Django's raises "
    "ValueError (year out of range)",
    ("database", "timeout 10**20 s"): "never expires; Django's raises OverflowError",
}


def outcome(call):
    """What a call did: its result kind, and a warning class if any."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call()
        except Exception as error:
            what = type(error).__name__
            for base in ("InvalidCacheKey", "ValueError", "TypeError", "PicklingError"):
                if any(cls.__name__ == base for cls in type(error).__mro__) and what != base:
                    what = f"{what} ({base})"
                    break
        else:
            shown = repr(result) if len(repr(result)) < 40 else f"{len(result):,} {type(result).__name__}"
            what = "ok" if result in (True, None) else f"returned {shown}"
    names = sorted({w.category.__name__ for w in caught if w.category.__name__ == "CacheKeyWarning"})
    return what + (" + " + names[0] if names else "")


def key_outcome(cache, key):
    stored = outcome(lambda: cache.set(key, "v"))
    read = outcome(lambda: cache.get(key))
    if stored == "ok" and read == "returned 'v'":
        return "ok"
    return f"set: {stored}; get: {read}"


def value_outcome(cache, value):
    cache.set("value-key", "old")
    stored = outcome(lambda: cache.set("value-key", value))
    read = outcome(lambda: cache.get("value-key", "miss"))
    return f"set: {stored}; get: {read}"


def timeout_outcome(cache, timeout):
    """set, get, then touch and get again, with ``timeout``."""
    cache.delete("timeout-key")
    stored = outcome(lambda: cache.set("timeout-key", "v", timeout))
    read = outcome(lambda: cache.get("timeout-key", "miss"))
    cache.set("timeout-key", "v")
    touched = outcome(lambda: cache.touch("timeout-key", timeout))
    read_after_touch = outcome(lambda: cache.get("timeout-key", "miss"))
    return f"set: {stored}; get: {read}; touch: {touched}; get: {read_after_touch}"


@pytest.fixture(params=["memcached", "redis", "file", "database"])
def pair(request, memcached, redis_server, tmp_path):
    """(kind, racefree backend, stock backend) on one server."""
    kind = request.param
    prefix = uuid.uuid4().hex[:6]
    if kind == "memcached":
        ours = MemcachedCache(memcached.location, {"KEY_PREFIX": prefix, **RAW_KEYS})
        stock = PyMemcacheCache(memcached.location, {"KEY_PREFIX": prefix + "s", **RAW_KEYS})
    elif kind == "redis":
        # RAW_KEYS drops the prefix: each its own database on the one server.
        ours = RedisCache(redis_server.location + "/1", dict(RAW_KEYS))
        stock = StockRedisCache(redis_server.location + "/2", dict(RAW_KEYS))
    elif kind == "file":
        ours = FileBasedCache(str(tmp_path / "ours"), dict(RAW_KEYS))
        stock = StockFileBasedCache(str(tmp_path / "stock"), dict(RAW_KEYS))
    else:
        table = request.getfixturevalue("table")
        ours = DatabaseCache(table, dict(RAW_KEYS))
        stock = StockDatabaseCache(table, dict(RAW_KEYS))
    return kind, ours, stock


TABLE = []


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    """The outcomes as the markdown table the README carries, in build/."""
    yield
    os.makedirs(BUILD, exist_ok=True)
    with open(os.path.join(BUILD, "bad_input_table.md"), "w") as out:
        out.write("| store | input | racefree | stock |\n|---|---|---|---|\n")
        for kind, name, mine, theirs in TABLE:
            out.write(f"| {kind} | {name} | {mine} | {theirs} |\n")


def compared(kind, name, mine, theirs):
    """Record an outcome pair for the table: a difference from stock must
    be listed in DIFFERENCES, and a listed one must still be there."""
    TABLE.append((kind, name, mine, theirs))
    if mine != theirs:
        assert (kind, name) in DIFFERENCES, f"{kind} {name!r}: racefree {mine!r}, stock {theirs!r}"
    else:
        assert (kind, name) not in DIFFERENCES, "a listed difference is gone: update DIFFERENCES"


@pytest.mark.parametrize("name", KEYS)
def test_bad_keys_as_the_stock_backend_or_a_listed_difference(pair, name):
    kind, ours, stock = pair
    mine, theirs = key_outcome(ours, KEYS[name]), key_outcome(stock, KEYS[name])
    compared(kind, name, mine, theirs)
    if mine != theirs:
        # Stricter, never looser: a difference is always racefree refusing
        # what stock mishandles, with Django's own exception.
        assert mine.startswith("set: InvalidCacheKey"), mine


@pytest.mark.parametrize("name", VALUES)
def test_bad_values_as_the_stock_backend_or_a_listed_difference(pair, name, caplog):
    kind, ours, stock = pair
    compared(kind, name, value_outcome(ours, VALUES[name]), value_outcome(stock, VALUES[name]))
    # Whatever happened, nothing crashed and the cache still works.
    ours.set("after", 1)
    assert ours.get("after") == 1


@pytest.mark.parametrize("name", TIMEOUTS)
def test_bad_timeouts_as_the_stock_backend_or_a_listed_difference(pair, name):
    kind, ours, stock = pair
    mine, theirs = timeout_outcome(ours, TIMEOUTS[name]), timeout_outcome(stock, TIMEOUTS[name])
    compared(kind, name, mine, theirs)
    # Every backend the same way: no end is "never" (Django's meaning of
    # None, and its file cache's of inf), NaN is refused, -inf is expired.
    if TIMEOUTS[name] != TIMEOUTS[name]:
        assert mine == "set: ValueError; get: returned 'miss'; touch: ValueError; get: returned 'v'", mine
    elif TIMEOUTS[name] < 0:
        assert mine == "set: ok; get: returned 'miss'; touch: ok; get: returned 'miss'", mine
    else:
        assert mine == "set: ok; get: returned 'v'; touch: ok; get: returned 'v'", mine


BATCHES = {
    "all fine": ["a", "b", 3],
    "space, tuple and tab": ["a", "with space", 3, ("t", 1), "tab\tkey", "b"],
}


def batch_outcome(cache, keys):
    """set_many, get_many and delete_many of ``keys``: each one's result
    (or exception) and the warnings it gave, in order."""
    outcomes = []
    for name, call in [
        ("set_many", lambda: cache.set_many(dict.fromkeys(keys, "v"))),
        ("get_many", lambda: cache.get_many(keys)),
        ("delete_many", lambda: cache.delete_many(keys)),
    ]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = call()
                what = sorted(map(repr, result.items())) if isinstance(result, dict) else repr(result)
            except Exception as error:
                what = f"{type(error).__name__}: {error}"
        outcomes.append((name, what, [str(w.message) for w in caught]))
    return outcomes


@pytest.fixture(params=["memcached", "redis", "file", "database"])
def stock_keyed_pair(request, memcached, redis_server, tmp_path):
    """(kind, racefree backend, stock backend, a stock backend reading
    racefree's store or None) with Django's own key function and one
    KEY_PREFIX, so that both make the same keys."""
    kind = request.param
    options = {"KEY_PREFIX": uuid.uuid4().hex[:6]}
    if kind == "memcached":
        ours = MemcachedCache(memcached.location, dict(options))
        yield kind, ours, PyMemcacheCache(memcached.location, dict(options)), None
        ours.clear()
    elif kind == "redis":
        ours = RedisCache(redis_server.location + "/3", dict(options))
        reader = StockRedisCache(redis_server.location + "/3", dict(options))
        yield kind, ours, StockRedisCache(redis_server.location + "/4", dict(options)), reader
    elif kind == "file":
        # racefree's file store has a format of its own: no reader.
        ours = FileBasedCache(str(tmp_path / "ours"), dict(options))
        yield kind, ours, StockFileBasedCache(str(tmp_path / "stock"), dict(options)), None
    else:
        table = request.getfixturevalue("table")
        stock = StockDatabaseCache(table, dict(options))
        yield kind, DatabaseCache(table, dict(options)), stock, stock


@pytest.mark.parametrize("batch", BATCHES)
def test_batches_check_and_make_keys_as_the_stock_backend(stock_keyed_pair, batch):
    # The batch operations check and make all their keys at once: the same
    # keys (non-str ones through %s, as Django's key function), and the same
    # warnings, one per bad key in order, or the same exception.
    kind, ours, stock, reader = stock_keyed_pair
    keys = BATCHES[batch]
    mine, theirs = batch_outcome(ours, keys), batch_outcome(stock, keys)
    assert mine == theirs
    if batch == "space, tuple and tab" and kind != "memcached":
        assert [len(warned) for _, _, warned in mine] == [3, 3, 3]
    if reader is not None:
        # Stored under the stock backend's keys: the stock one reads them.
        ours.set_many(dict.fromkeys(keys, "v"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert reader.get_many(keys) == dict.fromkeys(keys, "v")
