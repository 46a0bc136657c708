"""Test runner for Django's ``runtests.py`` that puts racefree under the
tests which configure a cache themselves.

Django's cache middleware and utility tests (``CacheMiddlewareTest``,
``CacheUtils``...) override ``CACHES`` with ``LocMemCache``. Every such
override is rewritten, when it is applied, into the racefree backend under
test, so those tests run on racefree too. Caches that differ in LOCATION
stay separate (a KEY_PREFIX per LOCATION on the servers, a directory per
LOCATION for the file store). Other backends a test names on purpose
(DummyCache, Django's closeable test cache) are left alone.

At the end the runner writes a JSON summary (counts, and which backend
classes Django created) to ``$RACEFREE_RUNTESTS_RESULT``.
"""

import json
import os
from collections import Counter

from django.core.cache import CacheHandler
from django.test.runner import DiscoverRunner
from django.test.utils import override_settings

LOCMEM = "django.core.cache.backends.locmem.LocMemCache"
RACEFREE = {
    "memcached": "racefree.backends.memcached.MemcachedCache",
    "redis": "racefree.backends.redis.RedisCache",
    "file": "racefree.backends.filebased.FileBasedCache",
    "database": "racefree.backends.db.DatabaseCache",
    "forwarding": "racefree.backends.forwarding.ForwardingCache",
}
# What LocMemCache takes in OPTIONS that racefree's memcached and Redis
# backends do not (a server has its own memory limit).
LOCMEM_ONLY_OPTIONS = ("MAX_ENTRIES", "CULL_FREQUENCY")
TABLE = "racefree apps cache"


def _spec():
    return json.loads(os.environ["RACEFREE_RUNTESTS"])


def _racefree_params(backend, params, spec):
    """``params`` of a LocMemCache alias, for the racefree ``backend``."""
    params = dict(params)
    params.pop("BACKEND")
    location = params.pop("LOCATION", "") or ""
    options = dict(params.pop("OPTIONS", None) or {})
    if backend == "file":
        return {
            **params,
            "BACKEND": RACEFREE["file"],
            # LocMemCache stores sharing a LOCATION are one store.
            "LOCATION": os.path.join(spec["file_dir"], location.replace("/", "_") or "default"),
            "OPTIONS": options,
        }
    if location:
        params["KEY_PREFIX"] = f"{params.get('KEY_PREFIX', '')}@{location}"
    if backend in ("memcached", "redis"):
        for name in LOCMEM_ONLY_OPTIONS:
            options.pop(name, None)
        return {**params, "BACKEND": RACEFREE[backend], "LOCATION": spec[backend], "OPTIONS": options}
    if backend == "database":
        return {**params, "BACKEND": RACEFREE["database"], "LOCATION": TABLE, "OPTIONS": options}
    raise ValueError(backend)


def cache_settings(caches):
    """``caches`` with each LocMemCache alias on the backend under test."""
    spec = _spec()
    backend = spec["backend"]
    if backend == "locmem":
        return caches
    result = {}
    for alias, params in caches.items():
        if params.get("BACKEND") != LOCMEM:
            result[alias] = params
        elif backend == "forwarding":
            # A forwarder per alias, to the racefree file store.
            target = f"{alias}__target"
            result[alias] = {"BACKEND": RACEFREE["forwarding"], "LOCATION": target}
            result[target] = _racefree_params("file", params, spec)
        else:
            result[alias] = _racefree_params(backend, params, spec)
    return result


class RacefreeCacheRunner(DiscoverRunner):
    rewritten = 0
    created = Counter()

    def setup_test_environment(self, **kwargs):
        super().setup_test_environment(**kwargs)
        runner = type(self)
        enable = override_settings.enable
        create_connection = CacheHandler.create_connection

        def enable_with_racefree(override):
            caches = override.options.get("CACHES")
            if caches is not None:
                replaced = cache_settings(caches)
                if replaced != caches:
                    runner.rewritten += 1
                override.options = {**override.options, "CACHES": replaced}
            return enable(override)

        def counting_create_connection(handler, alias):
            connection = create_connection(handler, alias)
            cls = type(connection)
            runner.created[f"{cls.__module__}.{cls.__qualname__}"] += 1
            return connection

        override_settings.enable = enable_with_racefree
        CacheHandler.create_connection = counting_create_connection

    def run_suite(self, suite, **kwargs):
        result = super().run_suite(suite, **kwargs)
        summary = {
            "run": result.testsRun,
            "failures": [test.id() for test, _ in result.failures],
            "errors": [str(test) for test, _ in result.errors],
            "skipped": len(result.skipped),
            "expected_failures": len(result.expectedFailures),
            "unexpected_successes": len(result.unexpectedSuccesses),
            "rewritten_overrides": self.rewritten,
            "created": dict(self.created),
        }
        with open(os.environ["RACEFREE_RUNTESTS_RESULT"], "w") as out:
            json.dump(summary, out, indent=1, sort_keys=True)
        return result
