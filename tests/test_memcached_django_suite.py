"""Django's own memcached cache tests (Django's ``BaseMemcachedTests``,
from the sdist of the installed Django) against racefree's backend, in
plain text and over TLS with memcached's login."""

import pytest
from cache.tests import BaseMemcachedTests, caches_setting_for_tests, memcached_excluded_caches
from conftest import SERVERS
from django.core import signals
from django.core.cache import cache
from django.test import TestCase, override_settings
from support.django_suite import exclude
from support.secure_memcached import SecureMemcached

# Also run on the newest Django and CPython (make test's second interpreter).
pytestmark = pytest.mark.cross_version

PARAMS = {
    "BACKEND": "racefree.backends.memcached.MemcachedCache",
    "LOCATION": SERVERS["memcached"].location,
}


@exclude
@override_settings(CACHES=caches_setting_for_tests(base=PARAMS, exclude=memcached_excluded_caches))
class RacefreeMemcachedCacheTests(BaseMemcachedTests, TestCase):
    base_params = PARAMS
    server = SERVERS["memcached"]
    # A value memcached cannot count with (here a pickled None).
    incr_decr_type_error = TypeError

    def test_close_keeps_pooled_connections(self):
        # Replaces test_close: Django closes caches after every request;
        # the pool must survive it, so requests do not reconnect.
        cache.set("warm", 1)
        before = self.server.stats()["total_connections"]
        for request in range(50):
            cache.get("warm")
            cache.set(f"r{request}", request)
            signals.request_finished.send(self.__class__)
        # Only the stats() connection itself is new.
        self.assertEqual(self.server.stats()["total_connections"] - before, 1)
        self.assertEqual(cache.get("r49"), 49)

    def test_set_many_returns_keys_over_item_size(self):
        # Replaces test_set_many_returns_failing_keys with a real refusal:
        # memcached's default item size limit is 1 MB.
        cache.set("big", "old value")
        failing = cache.set_many({"big": "x" * (2**20 + 1), "small": "fine"})
        self.assertEqual(failing, ["big"])
        self.assertIsNone(cache.get("big"), "the old value must not survive")
        self.assertEqual(cache.get("small"), "fine")


# The same tests through the async API (support/through_async.py).
THROUGH_ASYNC = {**PARAMS, "BACKEND": "support.through_async.MemcachedCacheThroughAsync"}


@exclude
@override_settings(CACHES=caches_setting_for_tests(base=THROUGH_ASYNC, exclude=memcached_excluded_caches))
class RacefreeMemcachedCacheThroughAsyncTests(RacefreeMemcachedCacheTests):
    base_params = THROUGH_ASYNC


# Over TLS (checked against the server's CA, chain and name) with
# memcached's login: started here, on import, since Django's test classes
# read LOCATION then; the harness stops it with the session's servers.
SERVERS["memcached_tls"] = SECURE = SecureMemcached()
OVER_TLS = {**PARAMS, "LOCATION": SECURE.location, "OPTIONS": SECURE.options()}


@exclude
@override_settings(CACHES=caches_setting_for_tests(base=OVER_TLS, exclude=memcached_excluded_caches))
class RacefreeMemcachedCacheOverTLSTests(RacefreeMemcachedCacheTests):
    base_params = OVER_TLS
    server = SECURE
