"""Django's own cache test suite, fetched from PyPI at test time.

The sdist of the installed Django version is downloaded with pip (once,
into build/), and its ``tests`` directory extracted: its ``cache`` package
is put on sys.path (see ``suite_dir``), and test_django_apps.py runs its
``runtests.py``. Nothing of Django's is committed here.

Tests that assert a stock client's internals are excluded, each with its
reason, in ``EXCLUDED``; the README lists the same table.
"""

import shutil
import subprocess
import sys
import tarfile
import unittest
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parents[2]

_FILE_BASED = {
    "test_get_does_not_ignore_non_filenotfound_exceptions": (
        "mocks builtins.open, which the stock class reads files with (racefree reads them in Rust); "
        "replaced by test_real_io_error_is_raised"
    ),
    "test_empty_cache_file_considered_expired": (
        "calls the stock class's _is_expired(file) helper; replaced by "
        "test_empty_file_reads_as_a_miss_and_is_removed"
    ),
    "test_has_key_race_handling": (
        "mocks builtins.open to fake a vanished file; replaced by test_has_key_after_the_file_vanished "
        "and the multi-process stress tests"
    ),
    "test_touch": (
        "fakes the clock of django.core.cache.backends.filebased (the stock module); replaced by "
        "test_touch_real_clock, BaseCacheTests.test_touch with real sleeps"
    ),
}

_DATABASE = {
    "test_get_many_num_queries": (
        "counts queries on Django's own connection, which racefree does not use (it has its own "
        "pool); replaced by test_get_many_is_one_round_trip"
    ),
    "test_delete_many_num_queries": (
        "counts queries on Django's connection; replaced by test_delete_many_is_one_round_trip"
    ),
    "test_cull_queries": (
        "counts the COUNT queries on Django's connection (the stock backend counts the table on "
        "every write); replaced by test_table_is_not_counted_on_every_write"
    ),
    "test_has_key_query_columns_quoted": (
        "captures SQL on Django's connection; replaced by test_has_key_is_one_round_trip and the "
        "quoted table name these tests use"
    ),
}

_MEMCACHED = {
    "test_close": (
        "mocks disconnect_all() on the stock client class (cache._class) and expects it "
        "called after every request; racefree keeps its pool instead, see "
        "test_close_keeps_pooled_connections"
    ),
    "test_set_many_returns_failing_keys": (
        "mocks set_multi() on the stock client class (cache._class); replaced by "
        "test_set_many_returns_keys_over_item_size, which makes a real server refuse a key"
    ),
}

_REDIS = {
    "test_incr_write_connection": (
        "mocks RedisCacheClient.get_client of the stock module to see incr ask for the primary; "
        "racefree has no RedisCacheClient; replaced by test_writes_go_to_the_primary"
    ),
    "test_cache_client_class": "asserts cache._class is the stock RedisCacheClient",
    "test_get_connection_pool_index": (
        "asks the stock client for its redis-py pool index; replaced by test_reads_spread_over_the_replicas"
    ),
    "test_get_connection_pool": "asserts the stock client's redis-py ConnectionPool objects",
    "test_get_client": "asserts the stock client's redis.Redis object",
    "test_serializer_dumps": (
        "calls the stock client's serializer (which hands ints to redis-py); replaced by "
        "test_integers_are_stored_as_digits and the interop tests in test_redis.py"
    ),
    "test_redis_pool_options": (
        "reads redis-py pool kwargs (and sets retry_on_timeout, which racefree refuses: a timed-out "
        "command may have run); replaced by test_db_option_selects_the_database and "
        "test_a_frozen_server_fails_within_the_timeout"
    ),
    # Django 6.1's.
    "test_client_driver_info": "asks the stock client's redis.Redis for CLIENT INFO's lib-name (redis-py's)",
}

#: {test class name: {test name: reason}}
EXCLUDED = {
    "RacefreeDBCacheTests": _DATABASE,
    "RacefreeDBCacheWithTimeZoneTests": _DATABASE,
    "RacefreeFileBasedCacheTests": _FILE_BASED,
    "RacefreeFileBasedCachePathLibTests": _FILE_BASED,
    "RacefreeMemcachedCacheTests": _MEMCACHED,
    "RacefreeMemcachedCacheOverTLSTests": _MEMCACHED,
    "ForwardingToMemcachedCacheTests": _MEMCACHED,
    "RacefreeRedisCacheTests": _REDIS,
    "RacefreeRedisClusterCacheTests": _REDIS,
}


def _sdist():
    """The sdist of the installed Django, downloaded once into build/."""
    version = django.get_version()
    downloads = ROOT / "build" / "django-sdist"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / f"django-{version}.tar.gz"
    if not archive.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "--dest", str(downloads), f"Django=={version}"],
            check=True,
        )
        found = sorted(downloads.glob(f"[dD]jango-{version}.tar.gz"))
        if not found:
            raise RuntimeError(f"pip did not download the Django {version} sdist into {downloads}")
        found[0].rename(archive)
    return archive


def runtests_dir():
    """Django's ``tests`` directory (``runtests.py`` and every test app)
    from the sdist of the installed Django."""
    target = ROOT / "build" / "django-tests" / django.get_version() / "tests"
    if (target / "runtests.py").exists():
        return target
    archive = _sdist()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.count("/") > 1 and m.name.split("/")[1] == "tests"]
        if not members:
            raise RuntimeError(f"{archive} has no tests directory")
        for member in members:
            member.name = member.name.split("/", 2)[2]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(staging, members=members, filter="data")
        else:
            tar.extractall(staging, members=members)
    staging.rename(target)
    return target


def suite_dir():
    """A directory holding only Django's ``cache`` test package (importable
    as ``cache``: its models and ``cache.tests.custom_key_func`` need that
    name), so the rest of Django's test apps cannot shadow ours."""
    target = runtests_dir().parent / "cache-only"
    if not (target / "cache").exists():
        target.mkdir(exist_ok=True)
        (target / "cache").symlink_to(runtests_dir() / "cache", target_is_directory=True)
    return target


_LAZY_QUERYSET = (
    "pickles a lazy QuerySet, which runs a query; the native async methods pickle in the caller's "
    "coroutine (on the event loop), where Django refuses queries (SynchronousOnlyOperation) - "
    "evaluate it first; replaced by test_aset_of_an_evaluated_queryset_with_deferred_fields"
)

#: Also excluded when the suite runs through the async API.
EXCLUDED_THROUGH_ASYNC = {
    "test_cache_read_for_model_instance_with_deferred": _LAZY_QUERYSET,
    "test_cache_write_for_model_instance_with_deferred": _LAZY_QUERYSET,
}


def exclude(test_class):
    """Skip, with its reason, each excluded test of ``test_class`` (a
    ``...ThroughAsync...`` class excludes what its sync twin does, and
    ``EXCLUDED_THROUGH_ASYNC``)."""
    name = test_class.__name__
    # The same suite over TLS excludes what it does over plain TCP.
    excluded = dict(EXCLUDED.get(name.replace("ThroughAsync", "").replace("OverTLS", ""), {}))
    if "ThroughAsync" in name:
        excluded.update(EXCLUDED_THROUGH_ASYNC)
    for name, reason in excluded.items():
        if name == "test_client_driver_info" and not hasattr(test_class, name):
            continue  # Django 6.1 and later
        if not hasattr(test_class, name):
            raise AssertionError(f"{test_class.__name__}.{name} is excluded but does not exist")
        setattr(test_class, name, unittest.skip(f"excluded: {reason}")(getattr(test_class, name)))
    return test_class
