"""Test harness: real servers, Django configured, Django's suite importable.

Servers start before test modules are imported (Django's test classes read
their LOCATION at import time) and are stopped by PID at the end. A missing
server binary fails the run; nothing is skipped.
"""

import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict

import django
import pytest
from django.conf import settings
from django.test.utils import setup_databases, setup_test_environment, teardown_databases, teardown_test_environment

sys.path.insert(0, os.path.dirname(__file__))

from support import django_suite  # noqa: E402
from support.certs import Authority  # noqa: E402
from support.load import wait_until  # noqa: E402
from support.servers import Memcached, Postgres, Redis, RedisCluster, RedisSentinel, free_port  # noqa: E402

SERVERS = {}
#: The CA of the session's servers' certificates ("ca").
PKI = {}
_teardown = []


def pytest_configure(config):
    SERVERS["memcached"] = Memcached()
    SERVERS["redis"] = Redis()
    # TLS on but not required: connections without sslmode (libpq's
    # "prefer") use it, and "disable" still connects.
    PKI["ca"] = Authority()
    SERVERS["postgres"] = Postgres(tls=PKI["ca"])
    sys.path.insert(0, str(django_suite.suite_dir()))
    postgres = SERVERS["postgres"]
    settings.configure(
        SECRET_KEY="racefree-tests",
        # Django's own tables and the DB cache's table live on a real
        # PostgreSQL; the test runner creates test_racefree and test_other.
        DATABASES={
            "default": postgres.settings("racefree"),
            "other": postgres.settings("other"),
            # For the DB cache's refusal of anything but PostgreSQL.
            "sqlite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        },
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "cache"],
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        },
        USE_TZ=False,
        # Not UTC on purpose: the DB cache must agree with Django on
        # instants however Django reads and writes its naive datetimes.
        TIME_ZONE="America/Chicago",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    # What Django's module-based settings do for TIME_ZONE (configure() does not).
    os.environ["TZ"] = settings.TIME_ZONE
    time.tzset()
    django.setup()
    setup_test_environment()
    _teardown.append(setup_databases(verbosity=0, interactive=False))


def pytest_unconfigure(config):
    if _teardown:
        teardown_databases(_teardown.pop(), verbosity=0)
        teardown_test_environment()
    for server in SERVERS.values():
        server.close()
    for authority in PKI.values():
        authority.close()


def pytest_report_header(config):
    lines = [f"racefree tests on CPython {platform.python_version()} with Django {django.get_version()}"]
    # The redis-server the harness starts: the first on PATH (Valkey's, in
    # `make test-valkey`).
    binary = shutil.which("redis-server")
    if binary:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
        lines.append(f"redis-server: {binary}: {version}")
    return lines


# Outcomes of Django's own suites and test apps, per test module, for the
# summary at the end (what ran on which Django, per backend).
_django_outcomes = defaultdict(Counter)
_django_details = []


def pytest_runtest_logreport(report):
    module = report.nodeid.split("::", 1)[0]
    if not (module.endswith("_django_suite.py") or module.endswith("test_django_apps.py")):
        return
    # One count per test (subtests, where pytest reports them, are not tests).
    if type(report).__name__ == "TestReport" and (report.when == "call" or report.outcome != "passed"):
        _django_outcomes[module][report.outcome] += 1
    for name, value in report.user_properties:
        if name == "django_summary" and report.when == "call":
            _django_details.append(f"  {report.nodeid.split('::', 1)[1]}: {value}")


def pytest_terminal_summary(terminalreporter):
    if not _django_outcomes:
        return
    terminalreporter.section(f"Django {django.get_version()} suites on CPython {platform.python_version()}")
    for module, outcomes in sorted(_django_outcomes.items()):
        counts = ", ".join(f"{outcomes[name]} {name}" for name in ("passed", "failed", "skipped") if outcomes[name])
        terminalreporter.write_line(f"{module}: {counts}")
    for line in _django_details:
        terminalreporter.write_line(line)


def backend_builder(request, tmp_path):
    """``build(**options)`` -> a racefree backend of the kind
    ``request.param`` names ("memcached", "redis", "file" or "database") on one
    location and key prefix per test, so differently configured instances
    see each other's entries (for indirectly parametrized fixtures)."""
    from racefree.backends.db import DatabaseCache
    from racefree.backends.filebased import FileBasedCache
    from racefree.backends.memcached import MemcachedCache
    from racefree.backends.redis import RedisCache

    kind = request.param
    prefix = uuid.uuid4().hex[:8]
    table = request.getfixturevalue("table") if kind == "database" else None

    def build(**options):
        params = {"KEY_PREFIX": prefix, "OPTIONS": options}
        if kind == "memcached":
            return MemcachedCache(SERVERS["memcached"].location, params)
        if kind == "redis":
            return RedisCache(SERVERS["redis"].location, params)
        if kind == "file":
            return FileBasedCache(str(tmp_path), params)
        return DatabaseCache(table, params)

    return build


@pytest.fixture(scope="module")
def authority():
    """A throwaway certificate authority of the module's own."""
    ca = Authority()
    yield ca
    ca.close()


@pytest.fixture(scope="module")
def other_authority():
    """A CA that nothing else here trusts (a "wrong CA")."""
    ca = Authority("a CA nobody trusts here")
    yield ca
    ca.close()


@pytest.fixture(scope="session")
def memcached():
    """The session's memcached (also used by Django's suite)."""
    return SERVERS["memcached"]


@pytest.fixture
def fresh_memcached():
    """A memcached of this test's own, which it may kill or freeze."""
    server = Memcached()
    yield server
    server.close()


@pytest.fixture(scope="module")
def memcached_cluster():
    """Three memcached servers."""
    servers = [Memcached() for _ in range(3)]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def redis_server():
    """The session's redis-server (also used by Django's suite)."""
    return SERVERS["redis"]


@pytest.fixture(scope="module")
def cluster():
    """A three-node Redis Cluster of the module's own (a module may define
    its own ``cluster``)."""
    nodes = RedisCluster()
    yield nodes
    nodes.close()


def session_sentinel():
    """A Redis Sentinel watching the session's redis-server as the primary
    of the service "suite", started on first use; the harness stops it
    with the others."""
    if "redis_sentinel" not in SERVERS:
        SERVERS["redis_sentinel"] = RedisSentinel(SERVERS["redis"], "suite")
    return SERVERS["redis_sentinel"]


@pytest.fixture(params=["server", "cluster", "sentinel"])
def topology(request, redis_server):
    """LOCATION and OPTIONS of one redis-server, of a three-node cluster,
    or of that server behind a Sentinel: a test taking it runs on each."""
    if request.param == "server":
        return redis_server.location, {}
    if request.param == "sentinel":
        return "redis://suite", {"SENTINELS": [session_sentinel().address]}
    return request.getfixturevalue("cluster").locations, {"CLUSTER": True}


@pytest.fixture
def prefix():
    """A KEY_PREFIX of the test's own."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def replicated():
    """A primary and its replica, the replica's link up."""
    # The primary syncs a new replica at once (by default it waits 5 s for
    # more replicas to share the transfer).
    primary = Redis(extra_args=["--repl-diskless-sync-delay", "0"])
    replica = None
    try:
        replica = Redis(replica_of=primary)
        wait_until(lambda: replica.info("replication").get("master_link_status") == "up",
                   what="the replica's link to its primary")
        yield primary, replica
    finally:
        if replica is not None:
            replica.close()
        primary.close()


@pytest.fixture
def tls_redis(authority):
    """A redis-server with a TLS port besides its plain one (a certificate
    from ``authority``; no client certificate asked): the server and a
    ``rediss://`` LOCATION of its TLS port."""
    cert, key = authority.server("redis-server")
    tls_port = free_port()
    server = Redis(extra_args=["--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file", key,
                               "--tls-ca-cert-file", authority.cert, "--tls-auth-clients", "no"])
    yield server, f"rediss://127.0.0.1:{tls_port}"
    server.close()


@pytest.fixture
def fresh_redis():
    """A redis-server of this test's own, which it may kill or freeze."""
    server = Redis()
    yield server
    server.close()


@pytest.fixture
def fresh_postgres():
    """A PostgreSQL server of this test's own, which it may stop or crash."""
    server = Postgres()
    yield server
    server.close()


@pytest.fixture
def table():
    """A fresh Django cache table (createcachetable's DDL) in the test DB."""
    from django.core.management import call_command
    from django.db import connection

    name = f"cache {uuid.uuid4().hex[:8]}"
    call_command("createcachetable", name, database="default", verbosity=0)
    yield name
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE %s" % connection.ops.quote_name(name))
