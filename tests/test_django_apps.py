"""Django's own test apps that use the cache, run by Django's
``tests/runtests.py`` (from the sdist of the installed Django) with the
default cache, and every cache the tests configure themselves, on each
racefree backend and on real servers.

Each racefree run must pass with exactly the counts of the same run on
LocMemCache (tests run, skipped, expected failures), must have created
racefree backends and no LocMemCache at all, and must have rewritten the
tests' own CACHES overrides (tests/django_runtests/racefree_runtests_runner.py).
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import SERVERS
from support.django_suite import runtests_dir

# Also run on the newest Django and CPython (make test's second interpreter).
pytestmark = pytest.mark.cross_version

HERE = os.path.dirname(os.path.abspath(__file__))

LABELS = [
    "sessions_tests",
    "template_tests.syntax_tests.test_cache",
    "sitemaps_tests",
    "responses",
    "async",
    *(
        f"cache.tests.{name}"
        for name in (
            "CacheMiddlewareTest",
            "CacheHEADTest",
            "CacheI18nTest",
            "PrefixedCacheI18nTest",
            "TestWithTemplateResponse",
            "CacheUtils",
            "PrefixedCacheUtils",
            "CacheClosingTests",
        )
    ),
]

RACEFREE_CLASSES = {
    "memcached": {"racefree.backends.memcached.MemcachedCache"},
    "redis": {"racefree.backends.redis.RedisCache"},
    "file": {"racefree.backends.filebased.FileBasedCache"},
    "database": {"racefree.backends.db.DatabaseCache"},
    "forwarding": {"racefree.backends.forwarding.ForwardingCache", "racefree.backends.filebased.FileBasedCache"},
}


def run_django_tests(backend, tmp_path):
    """Run LABELS through runtests.py with ``backend`` as the cache; return
    the runner's summary and its output."""
    result_path = tmp_path / f"{backend}.json"
    spec = {
        "backend": backend,
        "memcached": SERVERS["memcached"].location,
        "redis": SERVERS["redis"].location,
        "postgres_port": SERVERS["postgres"].port,
        "file_dir": str(tmp_path / "file-cache"),
    }
    env = dict(
        os.environ,
        RACEFREE_RUNTESTS=json.dumps(spec),
        RACEFREE_RUNTESTS_RESULT=str(result_path),
        PYTHONPATH=os.path.join(HERE, "django_runtests"),
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    tests = runtests_dir()
    command = [sys.executable, str(tests / "runtests.py"), "--settings=racefree_runtests_settings",
               "--parallel=1", "--noinput", "--verbosity=1", *LABELS]
    completed = subprocess.run(command, cwd=tests, env=env, capture_output=True, text=True, timeout=900)
    output = completed.stdout + completed.stderr
    assert result_path.exists(), f"runtests.py wrote no summary (exit {completed.returncode}):\n{output[-6000:]}"
    summary = json.loads(result_path.read_text())
    summary["returncode"] = completed.returncode
    return summary, output


@pytest.fixture(scope="module")
def locmem_counts(tmp_path_factory):
    summary, output = run_django_tests("locmem", tmp_path_factory.mktemp("locmem"))
    assert summary["returncode"] == 0, output[-6000:]
    assert summary["run"] > 500, summary
    return summary


@pytest.mark.parametrize("backend", ["memcached", "redis", "file", "database", "forwarding"])
def test_djangos_cache_using_apps_pass_on_racefree(backend, locmem_counts, tmp_path, record_property):
    summary, output = run_django_tests(backend, tmp_path)
    record_property(
        "django_summary",
        f"{summary['run']} run, {len(summary['failures']) + len(summary['errors'])} failed, "
        f"{summary['skipped']} skipped, {summary['rewritten_overrides']} CACHES overrides rewritten "
        f"(LocMemCache: {locmem_counts['run']} run, {locmem_counts['skipped']} skipped)",
    )
    assert summary["failures"] == [] and summary["errors"] == [], output[-8000:]
    assert summary["returncode"] == 0, output[-8000:]
    for count in ("run", "skipped", "expected_failures", "unexpected_successes"):
        assert summary[count] == locmem_counts[count], (count, summary, locmem_counts)
    created = set(summary["created"])
    assert RACEFREE_CLASSES[backend] <= created, created
    assert "django.core.cache.backends.locmem.LocMemCache" not in created, created
    # The middleware and utility tests configure their caches themselves.
    assert summary["rewritten_overrides"] >= 8, summary
