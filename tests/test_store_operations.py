"""How a store operation's single definition becomes a sync method and
its async twin (racefree.backends._ops)."""

import asyncio
import inspect
import textwrap

import pytest

from racefree.backends._ops import store_operation, with_async_twins
from racefree.backends.memcached import MemcachedCache


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


def make_cache_class(compile_source):
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

    Cache.lookup = store_operation(Cache.__dict__["lookup"], compile_source=compile_source)
    return with_async_twins(Cache)


@pytest.mark.parametrize("compile_source", [True, False], ids=["compiled", "driven"])
def test_sync_and_async_forms_make_the_same_store_calls(compile_source):
    cache = make_cache_class(compile_source)()
    assert cache.lookup("a") == "AA2"
    assert cache._store.calls == [("get", "a"), ("get", "a2")]
    cache._store.calls.clear()
    assert asyncio.run(cache.alookup("a")) == "AA2"
    assert cache._store.calls == [("aget", "a"), ("aget", "a2")]


@pytest.mark.parametrize("compile_source", [True, False], ids=["compiled", "driven"])
def test_a_store_error_is_raised_at_the_marked_call(compile_source):
    cache = make_cache_class(compile_source)()
    assert cache.lookup("broken", default="miss") == "miss"
    assert asyncio.run(cache.alookup("broken", default="miss")) == "miss"


def test_backend_methods_run_no_generator():
    # The sync path is a plain function: no generator driver between the
    # caller and the store (it cost 2-3 us per memcached get).
    for name in ("get", "set", "incr", "get_many"):
        method = getattr(MemcachedCache, name)
        assert not inspect.isgeneratorfunction(method), name
        assert "yield" not in method.__code__.co_names
        assert inspect.iscoroutinefunction(getattr(MemcachedCache, "a" + name)), name


def test_compiled_methods_keep_their_source_lines():
    # Tracebacks and coverage point at the one definition.
    for method in (MemcachedCache.get, MemcachedCache.aget):
        lines, first_line = inspect.getsourcelines(method)
        assert lines[0].strip().startswith("def get(self, key")
        assert method.__code__.co_filename == inspect.getsourcefile(MemcachedCache)
    assert MemcachedCache.aget.__code__.co_firstlineno == MemcachedCache.get.__code__.co_firstlineno
    assert MemcachedCache.aget.__qualname__ == "MemcachedCache.aget"


def test_source_unavailable_falls_back_to_the_generator():
    namespace = {}
    exec(textwrap.dedent("""
        def lookup(self, key):
            return (yield self._store.get, (key,))
    """), namespace)
    method = store_operation(namespace["lookup"])
    holder = type("Holder", (), {"_store": RecordingStore()})()
    assert method(holder, "x") == "X"
    assert asyncio.run(method.asynchronous(holder, "y")) == "Y"


def test_a_malformed_mark_is_refused_at_definition():
    def lookup(self, key):
        return (yield self._store.get(key))

    with pytest.raises(TypeError, match="yields \\(store.method, \\(args...\\)\\)"):
        store_operation(lookup)
