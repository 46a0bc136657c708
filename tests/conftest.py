"""Test harness: real servers, Django configured, Django's suite importable.

Servers start before test modules are imported (Django's test classes read
their LOCATION at import time) and are stopped by PID at the end. A missing
server binary fails the run; nothing is skipped.
"""

import os
import sys

import django
import pytest
from django.conf import settings
from django.test.utils import setup_databases, setup_test_environment, teardown_databases, teardown_test_environment

sys.path.insert(0, os.path.dirname(__file__))

from support import django_suite  # noqa: E402
from support.servers import Memcached  # noqa: E402

SERVERS = {}
_teardown = []


def pytest_configure(config):
    SERVERS["memcached"] = Memcached()
    sys.path.insert(0, str(django_suite.suite_dir()))
    settings.configure(
        SECRET_KEY="racefree-tests",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "cache"],
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        },
        USE_TZ=False,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()
    setup_test_environment()
    _teardown.append(setup_databases(verbosity=0, interactive=False))


def pytest_unconfigure(config):
    if _teardown:
        teardown_databases(_teardown.pop(), verbosity=0)
        teardown_test_environment()
    for server in SERVERS.values():
        server.stop()


@pytest.fixture(scope="session")
def memcached():
    """The session's memcached (also used by Django's suite)."""
    return SERVERS["memcached"]


@pytest.fixture
def fresh_memcached():
    """A memcached of this test's own, which it may kill or freeze."""
    server = Memcached()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def memcached_cluster():
    """Three memcached servers."""
    servers = [Memcached() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()
