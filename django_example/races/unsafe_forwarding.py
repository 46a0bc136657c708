"""A minimal replica of the forwarding pattern seed 3 fixed (djblets 0.8's
``ForwardingCacheBackend`` before review request 6644), for the demo and
the race table.

One backend object is shared by every thread. ``reset_backend()`` sets the
target to None, closes it and loads a new one from ``settings.CACHES``;
every other attribute is looked up on the target. Nothing stops a thread
from meeting the None while the new target loads, or from calling a target
that a reset has just closed.
Kept only to show the failure; never use it.
"""

from django.conf import settings
from django.utils.module_loading import import_string


class UnsafeForwardingCache:
    def __init__(self, location, params):
        self._alias = location or "forwarded_backend"
        self._backend = self._load()

    def _load(self):
        params = dict(settings.CACHES[self._alias])
        backend_class = import_string(params.pop("BACKEND"))
        return backend_class(params.pop("LOCATION", ""), params)

    @property
    def backend(self):
        return self._backend

    def reset_backend(self):
        # The race: while the new target loads, every other thread's call
        # meets None ('NoneType' object has no attribute 'get': a 500), and
        # a call already under way runs on a closed target.
        old, self._backend = self._backend, None
        if old is not None:
            old.close()
        self._backend = self._load()

    def close(self, **kwargs):
        # Django closes every cache after each request; the shared target
        # stays open (as djblets' did), so only resets close it.
        pass

    def __contains__(self, key):
        return key in self._backend

    def __getattr__(self, name):
        return getattr(self._backend, name)
