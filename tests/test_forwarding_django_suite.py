"""Django's own cache tests through ``ForwardingCache``: ``LocMemCacheTests``
(BaseCacheTests plus the locmem-specific ones) forwarding to Django's
``LocMemCache``, and ``BaseMemcachedTests`` forwarding to racefree's
memcached backend (from the sdist of the installed Django).

Every alias of Django's test settings becomes a forwarder whose target is
the original alias's settings under ``<alias>__target``, also for the
settings the tests override themselves.
"""

import inspect

import cache.tests as django_tests
import pytest
from conftest import SERVERS
from django.test import TestCase, override_settings
from support.django_suite import exclude

# Also run on the newest Django and CPython (make test's second interpreter).
pytestmark = pytest.mark.cross_version

FORWARDING = "racefree.backends.forwarding.ForwardingCache"


def forwarded(caches_setting):
    """CACHES where each alias forwards to its original settings."""
    setting = {}
    for alias, params in caches_setting.items():
        setting[alias] = {"BACKEND": FORWARDING, "LOCATION": f"{alias}__target"}
        setting[f"{alias}__target"] = params
    return setting


class Forwarded:
    """Routes the tests' own ``self.settings(CACHES=...)`` through forwarders."""

    def settings(self, **kwargs):
        if "CACHES" in kwargs:
            kwargs["CACHES"] = forwarded(kwargs["CACHES"])
        return super().settings(**kwargs)

    def test_every_alias_is_a_forwarder(self):
        # The suite is only meaningful if the calls really go through one.
        from django.core.cache import cache, caches

        from racefree.backends.forwarding import ForwardingCache

        for alias in ("default", "prefix", "v2", "custom_key"):
            self.assertIsInstance(caches[alias], ForwardingCache)
        self.assertEqual(cache.forwarded_alias, "default__target")
        self.assertGreaterEqual(cache.generation, 1)


def rerouted(test, caches_setting):
    """``test`` without its own CACHES override, under the forwarded one."""
    return override_settings(CACHES=forwarded(caches_setting))(inspect.unwrap(test))


LOCMEM = django_tests.caches_setting_for_tests(BACKEND="django.core.cache.backends.locmem.LocMemCache")
LOCMEM_LIMITED = django_tests.caches_setting_for_tests(
    BACKEND="django.core.cache.backends.locmem.LocMemCache", OPTIONS={"MAX_ENTRIES": 9}
)


@override_settings(CACHES=forwarded(LOCMEM))
class ForwardingToLocMemCacheTests(Forwarded, django_tests.LocMemCacheTests):
    # Methods that override CACHES themselves, rerouted (retry dropped:
    # it retries timing flakes of LocMem's LRU, which has none here).
    test_lru_get = rerouted(django_tests.LocMemCacheTests.test_lru_get, LOCMEM_LIMITED)
    test_lru_set = rerouted(django_tests.LocMemCacheTests.test_lru_set, LOCMEM_LIMITED)
    test_lru_incr = rerouted(django_tests.LocMemCacheTests.test_lru_incr, LOCMEM_LIMITED)
    test_multiple_caches = rerouted(
        django_tests.LocMemCacheTests.test_multiple_caches,
        {
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            "other": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "other"},
        },
    )


MEMCACHED = {"BACKEND": "racefree.backends.memcached.MemcachedCache", "LOCATION": SERVERS["memcached"].location}


@exclude
@override_settings(
    CACHES=forwarded(
        django_tests.caches_setting_for_tests(base=MEMCACHED, exclude=django_tests.memcached_excluded_caches)
    )
)
class ForwardingToMemcachedCacheTests(Forwarded, django_tests.BaseMemcachedTests, TestCase):
    base_params = MEMCACHED
    incr_decr_type_error = TypeError
