"""TLS between racefree's PostgreSQL cache and real servers: every libpq
sslmode, certificate checks that fail clearly and never downgrade, client
certificates (encrypted keys too), and settings read from a DSN or from a
DATABASES entry's OPTIONS, as psycopg reads them.

``tls_server`` refuses plain TCP (``hostnossl ... reject``) and wants a
client certificate from ``certuser``; the session's server (conftest) has
TLS on without requiring it."""

import asyncio
import time

import psycopg
import pytest
from conftest import PKI, SERVERS
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from support.servers import Postgres

from racefree.backends.db import DatabaseCache
from racefree.exceptions import CacheError


@pytest.fixture(scope="module")
def tls_server(authority):
    server = Postgres(tls=authority, tls_only=True)
    server.create_cache_table()
    yield server
    server.close()


def dsn(server, user="postgres", host="127.0.0.1", **params):
    # The session's server holds the cache tables in Django's test database.
    dbname = connections["default"].settings_dict["NAME"] if server is SERVERS["postgres"] else "postgres"
    words = [f"host={host}", f"port={server.port}", f"user={user}", f"dbname={dbname}"]
    words += [f"{name}='{value}'" for name, value in params.items()]
    return " ".join(words)


def cache_for(dsn_text, table="cache", **options):
    # A short CONNECT_TIMEOUT: a failure must be quick, not merely clear.
    return DatabaseCache(table, {"OPTIONS": {"DSN": dsn_text, "CONNECT_TIMEOUT": 2.0, **options}})


def ssl_of_sessions(server, application_name):
    """Whether each server session of ``application_name`` uses TLS."""
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = %s",
            [application_name],
        ).fetchall()
    return [ssl for (ssl,) in rows]


def round_trip(cache, key="k"):
    cache.set(key, {"value": key})
    assert cache.get(key) == {"value": key}
    assert cache.incr(f"{key}-n", 1) if cache.add(f"{key}-n", 0) else True


def failure_of(cache):
    """The error of a call that must fail, and how long it took."""
    started = time.monotonic()
    with pytest.raises(CacheError) as failure:
        cache.get("k")
    return str(failure.value), time.monotonic() - started


# -- Modes that connect ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["prefer", "require", "allow"])
def test_unverified_modes_connect_over_tls(tls_server, mode):
    name = f"racefree-{mode}"
    round_trip(cache_for(dsn(tls_server, sslmode=mode, application_name=name)))
    # The server refuses plain TCP, so a session is TLS or nothing; shown
    # from the server's side all the same.
    assert ssl_of_sessions(tls_server, name) and all(ssl_of_sessions(tls_server, name))


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_verified_modes_connect_with_the_right_ca(tls_server, authority, mode):
    round_trip(cache_for(dsn(tls_server, sslmode=mode, sslrootcert=authority.cert)))


def test_verify_full_checks_the_host_name_and_verify_ca_does_not(tls_server, authority):
    # hostaddr connects to 127.0.0.1 while the name checked is the host's.
    wrong_name = dsn(tls_server, host="db.invalid", hostaddr="127.0.0.1", sslrootcert=authority.cert)
    round_trip(cache_for(wrong_name + " sslmode=verify-ca"))
    message, took = failure_of(cache_for(wrong_name + " sslmode=verify-full"))
    assert "certificate" in message and "db.invalid" in message, message
    assert "sslmode=verify-full" in message
    assert took < 1.0


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full", "require"])
def test_a_certificate_from_another_ca_is_refused_and_never_downgraded(other_authority, mode):
    # The session's server also takes plain connections: a failed check
    # must still fail, not fall back to plain.
    server = SERVERS["postgres"]
    cache = cache_for(dsn(server, sslmode=mode, sslrootcert=other_authority.cert))
    message, took = failure_of(cache)
    assert "not signed by a CA in sslrootcert" in message, message
    assert took < 1.0


def test_no_sslmode_means_prefer_and_disable_means_plain(table):
    server = SERVERS["postgres"]
    round_trip(cache_for(dsn(server, application_name="racefree-default"), table))
    assert ssl_of_sessions(server, "racefree-default") == [True]
    round_trip(cache_for(dsn(server, sslmode="disable", application_name="racefree-plain"), table))
    assert ssl_of_sessions(server, "racefree-plain") == [False]


def test_prefer_falls_back_to_plain_and_require_refuses_a_server_without_tls(fresh_postgres):
    fresh_postgres.create_cache_table()
    round_trip(cache_for(dsn(fresh_postgres, sslmode="prefer", application_name="p")))
    assert ssl_of_sessions(fresh_postgres, "p") == [False]
    message, _ = failure_of(cache_for(dsn(fresh_postgres, sslmode="require")))
    assert "does not support TLS" in message, message


def test_disable_against_a_tls_only_server_fails_clearly(tls_server):
    message, took = failure_of(cache_for(dsn(tls_server, sslmode="disable")))
    assert "no encryption" in message and "pg_hba.conf" in message, message
    assert took < 1.0


def test_a_revoked_server_certificate_is_refused(tls_server, authority):
    server_cert = f"{authority.dir}/postgres-server.pem"
    params = {"sslmode": "verify-full", "sslrootcert": authority.cert}
    round_trip(cache_for(dsn(tls_server, **params, sslcrl=authority.revocation_list())))
    message, took = failure_of(cache_for(dsn(tls_server, **params, sslcrl=authority.revocation_list([server_cert]))))
    assert "revoked" in message, message
    assert took < 1.0


# -- Client certificates -----------------------------------------------------------------


def test_a_client_certificate_user_connects_only_with_its_certificate(tls_server, authority, other_authority):
    cert, key = authority.client(Postgres.CERT_USER)
    message, _ = failure_of(cache_for(dsn(tls_server, user=Postgres.CERT_USER, sslmode="require")))
    assert "certificate" in message, message
    round_trip(cache_for(dsn(tls_server, user=Postgres.CERT_USER, sslmode="verify-full",
                             sslrootcert=authority.cert, sslcert=cert, sslkey=key)))
    # A certificate for the same name from a CA the server does not trust.
    stranger_cert, stranger_key = other_authority.client(Postgres.CERT_USER)
    message, _ = failure_of(cache_for(dsn(tls_server, user=Postgres.CERT_USER, sslmode="require",
                                          sslcert=stranger_cert, sslkey=stranger_key)))
    assert "refused" in message or "certificate" in message, message


def test_an_encrypted_client_key_needs_its_password(tls_server, authority):
    cert, key = authority.client(Postgres.CERT_USER)
    locked = authority.encrypted(key, "open sesame")
    params = {"user": Postgres.CERT_USER, "sslmode": "verify-full", "sslrootcert": authority.cert,
              "sslcert": cert, "sslkey": locked}
    round_trip(cache_for(dsn(tls_server, **params, sslpassword="open sesame")))
    with pytest.raises(ImproperlyConfigured, match="wrong password") as refused:
        cache_for(dsn(tls_server, **params, sslpassword="guess"))
    assert "guess" not in str(refused.value)
    with pytest.raises(ImproperlyConfigured, match="encrypted: give its password"):
        cache_for(dsn(tls_server, **params))


# -- Settings ----------------------------------------------------------------------------


@pytest.fixture
def database_alias():
    """Add a DATABASES alias (a copy of "default" with other OPTIONS) for
    the test, as a site's settings would have it."""
    added = []

    def add(name, **options):
        connections.settings[name] = {**connections.settings["default"], "OPTIONS": options}
        added.append(name)
        return name

    yield add
    for name in added:
        del connections.settings[name]
        if name in connections:
            del connections[name]


def test_databases_options_are_read_as_psycopg_reads_them(table, database_alias):
    ca = PKI["ca"]
    alias = database_alias("tls", sslmode="verify-full", sslrootcert=ca.cert, application_name="racefree-alias")
    cache = DatabaseCache(table, {"OPTIONS": {"DATABASE": alias}})
    round_trip(cache)
    assert ssl_of_sessions(SERVERS["postgres"], "racefree-alias") == [True]
    wrong = database_alias("wrong-ca", sslmode="verify-full", sslrootcert=ca.cert + ".missing")
    with pytest.raises(ImproperlyConfigured, match="sslrootcert .* does not exist"):
        DatabaseCache(table, {"OPTIONS": {"DATABASE": wrong}})
    refused = database_alias("crldir", sslmode="require", sslcrldir="/etc/crls")
    with pytest.raises(ImproperlyConfigured, match="sslcrldir"):
        DatabaseCache(table, {"OPTIONS": {"DATABASE": refused}})


@pytest.mark.parametrize(
    ("params", "complaint"),
    [
        ({"sslmode": "sometimes"}, "invalid sslmode"),
        ({"sslmode": "verify-full"}, "needs the root certificate"),
        ({"sslmode": "require", "sslcert": "/nonexistent/c.pem", "sslkey": "/nonexistent/c.key"}, "sslcert"),
    ],
)
def test_bad_tls_settings_are_refused_when_the_cache_is_built(params, complaint):
    with pytest.raises(ImproperlyConfigured, match=complaint):
        cache_for(dsn(SERVERS["postgres"], **params))


def test_a_url_dsn_carries_tls_parameters(tls_server, authority):
    url = (f"postgresql://postgres@127.0.0.1:{tls_server.port}/postgres"
           f"?sslmode=verify-full&sslrootcert={authority.cert}&application_name=racefree-url")
    round_trip(cache_for(url))
    assert all(ssl_of_sessions(tls_server, "racefree-url"))


def test_async_calls_over_tls(tls_server, authority):
    cache = cache_for(dsn(tls_server, sslmode="verify-full", sslrootcert=authority.cert))

    async def run():
        await asyncio.gather(*(cache.aset(f"a{i}", i) for i in range(20)))
        return await cache.aget_many([f"a{i}" for i in range(20)])

    assert asyncio.run(run()) == {f"a{i}": i for i in range(20)}
