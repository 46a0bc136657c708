"""racefree's backends driven through their async API.

Each class here is the real backend with every sync operation replaced by
its ``a``-twin, awaited on an event loop of the calling thread. Django's
own cache test suite run against these runs every behaviour test through
the async methods (the native ones, not BaseCache's thread hops).
"""

import asyncio
import threading

from racefree.backends.db import DatabaseCache
from racefree.backends.filebased import FileBasedCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache

#: sync method -> the async method it is driven through. BaseCache's
#: composite incr_version/decr_version stay sync, over the routed methods:
#: routing them too would make Django 6.1's aincr_version (which runs an
#: overridden incr_version in a thread) call itself.
ROUTED = {
    name: "a" + name
    for name in (
        "get", "set", "add", "touch", "delete", "get_many", "set_many", "delete_many",
        "has_key", "incr", "decr", "clear", "get_or_set",
    )
}

_loops = threading.local()


def run(awaitable):
    """Await ``awaitable`` on this thread's own event loop."""
    loop = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
    return loop.run_until_complete(awaitable)


class ThroughAsync:
    pass


def _routed(async_name):
    def method(self, *args, **kwargs):
        return run(getattr(self, async_name)(*args, **kwargs))

    return method


for _sync, _async in ROUTED.items():
    setattr(ThroughAsync, _sync, _routed(_async))


class MemcachedCacheThroughAsync(ThroughAsync, MemcachedCache):
    pass


class FileBasedCacheThroughAsync(ThroughAsync, FileBasedCache):
    pass


class DatabaseCacheThroughAsync(ThroughAsync, DatabaseCache):
    pass


class RedisCacheThroughAsync(ThroughAsync, RedisCache):
    pass
