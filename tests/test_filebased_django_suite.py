"""Django's own file-based cache tests (``FileBasedCacheTests`` and its
pathlib variant, from the sdist of the installed Django) against
racefree's backend, plus replacements for the excluded tests."""

import os
import time

import cache.tests as django_tests
import pytest
from django.core.cache import cache
from django.test import override_settings
from support.django_suite import exclude

# Also run on the newest Django and CPython (make test's second interpreter).
pytestmark = pytest.mark.cross_version

RACEFREE = django_tests.caches_setting_for_tests(
    BACKEND="racefree.backends.filebased.FileBasedCache",
)


class ReplacementTests:
    """Real-file equivalents of the tests excluded in support/django_suite.py."""

    def test_real_io_error_is_raised(self):
        # For test_get_does_not_ignore_non_filenotfound_exceptions: a
        # directory where the entry file should be is an error, not a miss.
        cache.set("foo", "bar")
        path = cache._key_to_file("foo")
        os.remove(path)
        os.mkdir(path)
        with self.assertRaises(OSError):
            cache.get("foo")
        os.rmdir(path)

    def test_empty_file_reads_as_a_miss_and_is_removed(self):
        # For test_empty_cache_file_considered_expired.
        cache.set("foo", "bar")
        path = cache._key_to_file("foo")
        with open(path, "wb"):
            pass
        self.assertIs(cache.has_key("foo"), False)
        self.assertEqual(cache.get("foo", "default"), "default")
        self.assertIs(os.path.exists(path), False)
        self.assertIs(cache.add("foo", "new"), True)

    def test_has_key_after_the_file_vanished(self):
        # For test_has_key_race_handling: the file removed between two calls.
        self.assertIs(cache.add("key", "value"), True)
        os.remove(cache._key_to_file("key"))
        self.assertIs(cache.has_key("key"), False)

    def test_touch_real_clock(self):
        # For FileBasedCacheTests.test_touch, which fakes the stock
        # module's clock: BaseCacheTests.test_touch with real sleeps.
        django_tests.BaseCacheTests.test_touch(self)

    def test_expiry_uses_the_wall_clock(self):
        cache.set("soon", "x", 1)
        self.assertEqual(cache.get("soon"), "x")
        time.sleep(1.2)
        self.assertIsNone(cache.get("soon"))


@exclude
@override_settings(CACHES=RACEFREE)
class RacefreeFileBasedCacheTests(ReplacementTests, django_tests.FileBasedCacheTests):
    pass


@exclude
@override_settings(CACHES=RACEFREE)
class RacefreeFileBasedCachePathLibTests(ReplacementTests, django_tests.FileBasedCachePathLibTests):
    pass


# The same tests through the async API (support/through_async.py).
THROUGH_ASYNC = django_tests.caches_setting_for_tests(BACKEND="support.through_async.FileBasedCacheThroughAsync")


@exclude
@override_settings(CACHES=THROUGH_ASYNC)
class RacefreeFileBasedCacheThroughAsyncTests(ReplacementTests, django_tests.FileBasedCacheTests):
    pass
