"""A minimal replica of the forwarding pattern seed 3 fixed (djblets 0.8's
``ForwardingCacheBackend`` before review request 6644), for the race table.

One backend object is shared by every thread. ``reset_backend()`` closes
the current target and sets it to None; the next access loads a new one
from ``settings.CACHES``. Nothing stops a thread from reaching the None
between another thread's check and its call, or from calling a target that
a reset has just closed. Kept only to show the failure; never use it.
"""

from django.conf import settings
from django.core.cache.backends.base import BaseCache
from django.utils.module_loading import import_string


class UnsafeForwardingCache(BaseCache):
    def __init__(self, location, params):
        super().__init__(params)
        self._alias = location or "forwarded_backend"
        self._backend = None

    @property
    def backend(self):
        if self._backend is None:
            params = dict(settings.CACHES[self._alias])
            backend_class = import_string(params.pop("BACKEND"))
            self._backend = backend_class(params.pop("LOCATION", ""), params)
        return self._backend

    def reset_backend(self):
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def get(self, key, default=None, version=None):
        # The check-then-use of the property is the race: a reset between
        # loading and returning hands back None.
        return self.backend.get(key, default, version)

    def set(self, key, value, timeout=300, version=None):
        return self.backend.set(key, value, timeout, version)

    def clear(self):
        return self.backend.clear()
