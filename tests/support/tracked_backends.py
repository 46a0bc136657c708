"""Real cache backends that record how a forwarder treats them.

Each instance counts its close() calls and any call made on it after, or
while, it was closed; the class keeps every instance built, so a test can
check that each replaced target was closed exactly once and never used
after. Targets are built by the forwarder from settings, so these are
named by dotted path in CACHES.
"""

import threading
import time

from django.core.cache.backends.locmem import LocMemCache

from racefree.backends.memcached import MemcachedCache

_lock = threading.Lock()
built = []


def forget():
    with _lock:
        built.clear()


TRACKED_METHODS = ("get", "set", "add", "incr", "decr", "delete", "get_many", "set_many", "has_key", "touch")


class Tracked:
    #: Seconds __init__ sleeps, for tests where a build must take time.
    build_delay = 0.0

    def __init__(self, *args, **kwargs):
        time.sleep(self.build_delay)
        super().__init__(*args, **kwargs)
        self.closes = 0
        self.calls = 0
        self.calls_after_close = 0
        with _lock:
            built.append(self)

    def _note_call(self):
        with _lock:
            self.calls += 1
            if self.closes:
                self.calls_after_close += 1

    def close(self, **kwargs):
        with _lock:
            self.closes += 1
        super().close(**kwargs)


def _tracked_method(name):
    def method(self, *args, **kwargs):
        self._note_call()
        try:
            return getattr(super(Tracked, self), name)(*args, **kwargs)
        finally:
            # Closed while the call was still running counts too.
            self._note_call()

    method.__name__ = name
    return method


for _name in TRACKED_METHODS:
    setattr(Tracked, _name, _tracked_method(_name))


class TrackedLocMemCache(Tracked, LocMemCache):
    pass


class TrackedMemcachedCache(Tracked, MemcachedCache):
    pass


class SlowBuildLocMemCache(TrackedLocMemCache):
    build_delay = 0.2


class BrokenAtBuild(LocMemCache):
    """A backend whose construction fails, as one whose server cannot be
    reached at build time does."""

    def __init__(self, location, params):
        raise ConnectionRefusedError(f"cannot reach {location}")
