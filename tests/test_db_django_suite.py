"""Django's own database-cache tests (``DBCacheTests``,
``DBCacheWithTimeZoneTests``, ``CreateCacheTableForDBCacheTests`` from the
sdist of the installed Django) against racefree's PostgreSQL backend, plus
replacements for the excluded ones."""

import time

import cache.tests as django_tests
import pytest
from conftest import PKI, SERVERS
from django.core.cache import cache
from django.test import override_settings
from support.django_suite import exclude

# Also run on the newest Django and CPython (make test's second interpreter).
pytestmark = pytest.mark.cross_version

RACEFREE = django_tests.caches_setting_for_tests(
    BACKEND="racefree.backends.db.DatabaseCache",
    # Spaces, as in Django's tests, so the table name must be quoted.
    LOCATION="test cache table",
)


class RoundTripTests:
    """Equivalents of the excluded query-counting tests, on the store's own
    round-trip counter."""

    def round_trips(self, action):
        store = cache._store
        before = store.round_trips
        action()
        return store.round_trips - before

    def test_get_many_is_one_round_trip(self):
        cache.set_many({"a": 1, "b": 2})
        cache.set("expired", "expired", 0.01)
        self.assertEqual(self.round_trips(lambda: self.assertEqual(cache.get_many(["a", "b"]), {"a": 1, "b": 2})), 1)
        time.sleep(0.02)
        self.assertEqual(
            self.round_trips(lambda: self.assertEqual(cache.get_many(["a", "b", "expired"]), {"a": 1, "b": 2})), 1
        )

    def test_delete_many_is_one_round_trip(self):
        cache.set_many({"a": 1, "b": 2, "c": 3})
        self.assertEqual(self.round_trips(lambda: cache.delete_many(["a", "b", "c"])), 1)
        self.assertEqual(cache.get_many(["a", "b", "c"]), {})

    def test_table_is_not_counted_on_every_write(self):
        cache.set("first", 1)  # may count the table once
        self.assertEqual(self.round_trips(lambda: [cache.set(f"k{i}", i) for i in range(50)]), 50)

    def test_has_key_is_one_round_trip(self):
        cache.set("key", "value")
        self.assertEqual(self.round_trips(lambda: self.assertIs(cache.has_key("key"), True)), 1)


@exclude
@override_settings(CACHES=RACEFREE)
class RacefreeDBCacheTests(RoundTripTests, django_tests.DBCacheTests):
    pass


@exclude
@override_settings(CACHES=RACEFREE)
class RacefreeDBCacheWithTimeZoneTests(RoundTripTests, django_tests.DBCacheWithTimeZoneTests):
    pass


def over_tls():
    """The suite's caches with every connection over TLS, the certificate
    and host name checked (the session's server has TLS on)."""
    from django.db import connections

    database = connections["default"].settings_dict
    dsn = (f"host=127.0.0.1 port={SERVERS['postgres'].port} user={database['USER']} dbname={database['NAME']} "
           f"sslmode=verify-full sslrootcert={PKI['ca'].cert} application_name=racefree-suite-tls")
    caches = django_tests.caches_setting_for_tests(
        BACKEND="racefree.backends.db.DatabaseCache", LOCATION="test cache table"
    )
    # Beside each test cache's own OPTIONS (MAX_ENTRIES for the cull tests).
    for params in caches.values():
        params["OPTIONS"] = {**params.get("OPTIONS", {}), "DSN": dsn}
    return caches


@exclude
@override_settings(CACHES=over_tls())
class RacefreeDBCacheOverTLSTests(RoundTripTests, django_tests.DBCacheTests):
    """Django's suite again, over verified TLS; each test checks that the
    cache's sessions were TLS sessions."""

    def tearDown(self):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.application_name = 'racefree-suite-tls'"
            )
            sessions = [ssl for (ssl,) in cursor.fetchall()]
        super().tearDown()
        self.assertTrue(sessions, "the cache opened no session")
        self.assertTrue(all(sessions), "a cache session was not TLS")


# The same tests through the async API (support/through_async.py).
THROUGH_ASYNC = django_tests.caches_setting_for_tests(
    BACKEND="support.through_async.DatabaseCacheThroughAsync", LOCATION="test cache table"
)


@exclude
@override_settings(CACHES=THROUGH_ASYNC)
class RacefreeDBCacheThroughAsyncTests(RoundTripTests, django_tests.DBCacheTests):
    pass


@override_settings(
    CACHES={"default": {"BACKEND": "racefree.backends.db.DatabaseCache", "LOCATION": "my_cache_table"}},
)
class RacefreeCreateCacheTableForDBCacheTests(django_tests.CreateCacheTableForDBCacheTests):
    pass
