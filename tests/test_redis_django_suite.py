"""Django's own Redis cache tests (Django's ``RedisCacheTests``, from the
sdist of the installed Django) against racefree's backend, directly and
through its async API, on a real redis-server the harness started, on
a real three-node Redis Cluster, and behind a real Redis Sentinel."""

import pytest
from cache import tests as django_cache_tests
from cache.tests import caches_setting_for_tests, redis_excluded_caches
from conftest import SERVERS, session_sentinel
from django.core import signals
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.test import TestCase, override_settings
from support.django_suite import exclude
from support.servers import RedisCluster

from racefree.backends.redis import RedisCache

# Also run on the newest Django and CPython (make test's second interpreter).
pytestmark = pytest.mark.cross_version

PARAMS = {
    "BACKEND": "racefree.backends.redis.RedisCache",
    "LOCATION": SERVERS["redis"].location,
}


@exclude
@override_settings(CACHES=caches_setting_for_tests(base=PARAMS, exclude=redis_excluded_caches))
class RacefreeRedisCacheTests(django_cache_tests.RedisCacheTests, TestCase):
    # Django skips RedisCacheTests unless its settings name a Redis cache;
    # this class configures its own.
    __unittest_skip__ = False
    __unittest_skip_why__ = ""
    base_params = PARAMS
    server = SERVERS["redis"]
    # A value Redis cannot count with (a pickled None): racefree raises
    # Django's TypeError, not redis-py's ResponseError.
    incr_decr_type_error = TypeError

    def test_close_keeps_pooled_connections(self):
        # Django closes caches after every request; the pool must survive
        # it, so requests do not reconnect.
        cache.set("warm", 1)
        before = int(self.server.info("stats")["total_connections_received"])
        for request in range(50):
            cache.get("warm")
            cache.set(f"r{request}", request)
            signals.request_finished.send(self.__class__)
        # Only the info() connection itself is new.
        self.assertEqual(int(self.server.info("stats")["total_connections_received"]) - before, 1)
        self.assertEqual(cache.get("r49"), 49)

    def test_integers_are_stored_as_digits(self):
        # Replaces test_serializer_dumps: Django's encoding, seen on the server.
        cache.set("answer", 42)
        cache.set("negative", -7)
        cache.set("flag", True)
        key = cache.make_key("answer")
        self.assertEqual(self.server.cli("GET", key), "42")
        self.assertEqual(self.server.cli("GET", cache.make_key("negative")), "-7")
        # A bool is pickled (Django stores exact ints only as digits).
        self.assertGreater(int(self.server.cli("STRLEN", cache.make_key("flag"))), 1)
        self.assertIs(cache.get("flag"), True)
        self.assertEqual(cache.incr("answer", 8), 50)

    @override_settings(CACHES=caches_setting_for_tests(
        base=PARAMS, exclude=redis_excluded_caches, OPTIONS={"db": 5, "socket_timeout": 0.1}))
    def test_db_option_selects_the_database(self):
        # Replaces test_redis_pool_options: what OPTIONS db does on the server.
        cache.set("in-five", "yes")
        key = cache.make_key("in-five")
        self.assertEqual(self.server.cli("-n", "5", "EXISTS", key), "1")
        self.assertEqual(self.server.cli("-n", "0", "EXISTS", key), "0")


# The same tests through the async API (support/through_async.py).
THROUGH_ASYNC = {**PARAMS, "BACKEND": "support.through_async.RedisCacheThroughAsync"}


@exclude
@override_settings(CACHES=caches_setting_for_tests(base=THROUGH_ASYNC, exclude=redis_excluded_caches))
class RacefreeRedisCacheThroughAsyncTests(RacefreeRedisCacheTests):
    base_params = THROUGH_ASYNC


# A cluster of this module's own, started when the module is collected
# (not for every test session); the harness stops it with the others.
if "redis_cluster" not in SERVERS:
    SERVERS["redis_cluster"] = RedisCluster()
CLUSTER = SERVERS["redis_cluster"]
CLUSTER_PARAMS = {
    "BACKEND": "racefree.backends.redis.RedisCache",
    # Two of the three nodes as seeds: the third is found from them.
    "LOCATION": CLUSTER.locations[:2],
    "OPTIONS": {"CLUSTER": True},
}


@exclude
@override_settings(CACHES=caches_setting_for_tests(base=CLUSTER_PARAMS, exclude=redis_excluded_caches))
class RacefreeRedisClusterCacheTests(RacefreeRedisCacheTests):
    base_params = CLUSTER_PARAMS
    server = None

    def test_close_keeps_pooled_connections(self):
        # As on one server: after a warm-up that reaches every node, 50
        # requests open no connection on any node.
        cache.set_many({f"r{request}": request for request in range(50)})

        def received():
            return sum(int(node.info("stats")["total_connections_received"]) for node in CLUSTER.nodes)

        before = received()
        for request in range(50):
            cache.get("warm")
            cache.set(f"r{request}", request)
            signals.request_finished.send(self.__class__)
        # Only the info() connections themselves are new, one per node.
        self.assertEqual(received() - before, len(CLUSTER.nodes))
        self.assertEqual(cache.get("r49"), 49)

    def test_integers_are_stored_as_digits(self):
        cache.set("answer", 42)
        cache.set("flag", True)
        key = cache.make_key("answer")
        self.assertEqual(CLUSTER.node_for(key).cli("GET", key), "42")
        flag = cache.make_key("flag")
        self.assertGreater(int(CLUSTER.node_for(flag).cli("STRLEN", flag)), 1)
        self.assertEqual(cache.incr("answer", 8), 50)

    def test_db_option_selects_the_database(self):
        # Replaced: a cluster has database 0 only (its nodes refuse SELECT).
        with self.assertRaisesMessage(ImproperlyConfigured, "database 0 only"):
            RedisCache(CLUSTER.locations, {"OPTIONS": {"CLUSTER": True, "db": 5}})


# The session's redis-server behind a Sentinel (started when the module
# is collected).
SENTINEL_PARAMS = {
    "BACKEND": "racefree.backends.redis.RedisCache",
    "LOCATION": "redis://suite",
    "OPTIONS": {"SENTINELS": [session_sentinel().address]},
}


@exclude
@override_settings(CACHES=caches_setting_for_tests(base=SENTINEL_PARAMS, exclude=redis_excluded_caches))
class RacefreeRedisSentinelCacheTests(RacefreeRedisCacheTests):
    base_params = SENTINEL_PARAMS
