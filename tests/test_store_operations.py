"""How a store operation's single definition becomes a sync method and
its async twin (racefree.backends._ops)."""

import asyncio
import inspect
import textwrap

import pytest

from racefree.backends._ops import store_operation, with_async_twins
from racefree.backends.base import RacefreeCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache


class RecordingStore:
    """A store whose calls are recorded; the a-twins return awaitables."""

    def __init__(self):
        self.calls = []

    def get(self, key):
        self.calls.append(("get", key))
        if key == "broken":
            raise ConnectionError(key)
        return key.upper()

    async def aget(self, key):
        self.calls.append(("aget", key))
        await asyncio.sleep(0)
        if key == "broken":
            raise ConnectionError(key)
        return key.upper()


def make_cache_class():
    class Cache:
        def __init__(self):
            self._store = RecordingStore()

        def lookup(self, key, default=None):
            try:
                found = yield self._store.get, (key,)
            except ConnectionError:
                return default
            again = yield self._store.get, (key + "2",)
            return found + again

    Cache.lookup = store_operation(Cache.__dict__["lookup"])
    return with_async_twins(Cache)


def test_sync_and_async_forms_make_the_same_store_calls():
    cache = make_cache_class()()
    assert cache.lookup("a") == "AA2"
    assert cache._store.calls == [("get", "a"), ("get", "a2")]
    cache._store.calls.clear()
    assert asyncio.run(cache.alookup("a")) == "AA2"
    assert cache._store.calls == [("aget", "a"), ("aget", "a2")]


def test_a_store_error_is_raised_at_the_marked_call():
    cache = make_cache_class()()
    assert cache.lookup("broken", default="miss") == "miss"
    assert asyncio.run(cache.alookup("broken", default="miss")) == "miss"


@pytest.mark.parametrize("backend", [MemcachedCache, RedisCache])
def test_backend_methods_run_no_generator(backend):
    # The sync path is a plain function: no generator driver between the
    # caller and the store (it cost 2-3 us per memcached get).
    for name in ("get", "set", "incr", "get_many"):
        method = getattr(backend, name)
        assert not inspect.isgeneratorfunction(method), name
        assert "yield" not in method.__code__.co_names
        assert inspect.iscoroutinefunction(getattr(backend, "a" + name)), name


def test_compiled_methods_keep_their_source_lines():
    # Tracebacks and coverage point at the one definition (base.py).
    for method in (MemcachedCache.get, MemcachedCache.aget):
        lines, first_line = inspect.getsourcelines(method)
        assert lines[0].strip().startswith("def get(self, key")
        assert method.__code__.co_filename == inspect.getsourcefile(RacefreeCache)
    assert MemcachedCache.aget.__code__.co_firstlineno == MemcachedCache.get.__code__.co_firstlineno
    assert MemcachedCache.aget.__qualname__ == "RacefreeCache.aget"


def test_source_unavailable_is_a_clear_import_error():
    namespace = {}
    exec(textwrap.dedent("""
        def lookup(self, key):
            return (yield self._store.get, (key,))
    """), namespace)
    with pytest.raises(ImportError, match="needs the Python source of lookup.*collect racefree as source"):
        store_operation(namespace["lookup"])


def test_a_malformed_mark_is_refused_at_definition():
    def lookup(self, key):
        return (yield self._store.get(key))

    with pytest.raises(TypeError, match="yields \\(store.method, \\(args...\\)\\)"):
        store_operation(lookup)
