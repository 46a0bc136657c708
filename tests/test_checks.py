"""Django system checks for racefree caches (the optional ``racefree``
app): each misconfiguration gives its check id, on real servers and
directories; a correct configuration gives none."""

import pytest
from django.core import checks
from django.test import override_settings

from racefree.checks import check_caches


def ids(caches):
    with override_settings(CACHES=caches):
        return sorted(message.id for message in check_caches())


def test_good_configurations_pass(memcached, redis_server, tmp_path, table):
    assert ids({
        "mem": {"BACKEND": "racefree.backends.memcached.MemcachedCache", "LOCATION": memcached.location},
        "redis": {"BACKEND": "racefree.backends.redis.RedisCache", "LOCATION": redis_server.location},
        "file": {"BACKEND": "racefree.backends.filebased.FileBasedCache", "LOCATION": str(tmp_path / "new")},
        "db": {"BACKEND": "racefree.backends.db.DatabaseCache", "LOCATION": table},
        "fw": {"BACKEND": "racefree.backends.forwarding.ForwardingCache", "LOCATION": "mem"},
        "stock": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
    }) == []


@pytest.mark.parametrize("config", [
    {"BACKEND": "racefree.backends.memcached.MemcachedCache", "LOCATION": "127.0.0.1:1", "OPTIONS": {"POOL": 3}},
    {"BACKEND": "racefree.backends.memcached.MemcachedCache", "LOCATION": "127.0.0.1:1",
     "OPTIONS": {"IO_TIMEOUT": "1"}},
    {"BACKEND": "racefree.backends.memcached.MemcachedCache", "LOCATION": "127.0.0.1:notaport"},
    {"BACKEND": "racefree.backends.filebased.FileBasedCache", "LOCATION": "/tmp/x", "OPTIONS": {"MAX_ENTRIES": "9"}},
    {"BACKEND": "racefree.backends.db.DatabaseCache", "LOCATION": "t", "OPTIONS": {"POOL_SIZE": 0}},
    {"BACKEND": "racefree.backends.forwarding.ForwardingCache", "LOCATION": "x", "OPTIONS": {"A": 1}},
    {"BACKEND": "racefree.backends.memcached.MemcachedCache", "LOCATION": "127.0.0.1:1",
     "OPTIONS": {"COMPRESS": "gzip"}},
    {"BACKEND": "racefree.backends.filebased.FileBasedCache", "LOCATION": "/tmp/x",
     "OPTIONS": {"COMPRESS": "zlib", "COMPRESS_LEVEL": 10}},
    {"BACKEND": "racefree.backends.db.DatabaseCache", "LOCATION": "t", "OPTIONS": {"COMPRESS_LEVEL": 3}},
    {"BACKEND": "racefree.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1", "OPTIONS": {"POOL": 3}},
    {"BACKEND": "racefree.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1",
     "OPTIONS": {"IO_TIMEOUT": "1"}},
    {"BACKEND": "racefree.backends.redis.RedisCache", "LOCATION": "127.0.0.1:6379"},
    {"BACKEND": "racefree.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1",
     "OPTIONS": {"MAX_ENTRIES": 1000}},
], ids=["unknown option", "wrong type", "bad location", "file wrong type", "db wrong value", "forwarding options",
        "unknown codec", "level out of the codec's range", "level without a codec", "redis unknown option",
        "redis wrong type", "redis location not a URL", "redis refused option"])
def test_settings_that_cannot_work_are_e001(config):
    assert ids({"broken": config}) == ["racefree.E001"]


def test_a_database_cache_on_sqlite_is_e002():
    found = ids({"db": {"BACKEND": "racefree.backends.db.DatabaseCache", "LOCATION": "t",
                        "OPTIONS": {"DATABASE": "sqlite"}}})
    assert found == ["racefree.E002"]


def test_a_missing_cache_table_is_e003_with_the_createcachetable_hint():
    with override_settings(CACHES={"db": {"BACKEND": "racefree.backends.db.DatabaseCache",
                                          "LOCATION": "no_such_table"}}):
        (message,) = check_caches()
    assert message.id == "racefree.E003"
    assert "createcachetable" in message.hint


def test_a_cache_directory_under_a_file_is_e004(tmp_path):
    # Even root cannot create a directory inside a regular file.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert ids({"file": {"BACKEND": "racefree.backends.filebased.FileBasedCache",
                         "LOCATION": str(blocker / "cache")}}) == ["racefree.E004"]


def test_a_cache_directory_others_may_write_to_is_e006(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    with override_settings(CACHES={"file": {"BACKEND": "racefree.backends.filebased.FileBasedCache",
                                            "LOCATION": str(shared)}}):
        (message,) = check_caches()
    assert message.id == "racefree.E006"
    assert "mode 775 lets other users write" in message.msg
    assert "chmod 700" in message.hint


def test_forwarding_to_a_missing_alias_is_e005():
    assert ids({"fw": {"BACKEND": "racefree.backends.forwarding.ForwardingCache", "LOCATION": "gone"}}) == [
        "racefree.E005"
    ]


def test_unreachable_servers_are_warnings(memcached, fresh_memcached, redis_server, fresh_redis, fresh_postgres):
    fresh_memcached.kill()
    fresh_redis.kill()
    fresh_postgres.stop("immediate")
    caches = {
        "mem": {"BACKEND": "racefree.backends.memcached.MemcachedCache",
                "LOCATION": [memcached.location, fresh_memcached.location]},
        # A primary that answers and a replica that does not.
        "redis": {"BACKEND": "racefree.backends.redis.RedisCache",
                  "LOCATION": [redis_server.location, fresh_redis.location]},
        "db": {"BACKEND": "racefree.backends.db.DatabaseCache", "LOCATION": "t",
               "OPTIONS": {"DSN": fresh_postgres.dsn, "CONNECT_TIMEOUT": 1.0}},
    }
    with override_settings(CACHES=caches):
        messages = check_caches()
    assert sorted(m.id for m in messages) == ["racefree.W001", "racefree.W001", "racefree.W002"]
    assert all(m.level == checks.WARNING for m in messages)
    (memcached_warning,) = [m for m in messages if m.id == "racefree.W001" and "memcached" in m.msg]
    assert fresh_memcached.location in memcached_warning.msg and memcached.location not in memcached_warning.msg
    (redis_warning,) = [m for m in messages if m.id == "racefree.W001" and "Redis" in m.msg]
    assert f"127.0.0.1:{fresh_redis.port}" in redis_warning.msg
    assert f"127.0.0.1:{redis_server.port}" not in redis_warning.msg


def test_the_app_registers_the_checks_with_django(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    caches = {"file": {"BACKEND": "racefree.backends.filebased.FileBasedCache", "LOCATION": str(blocker / "c")}}
    from django.conf import settings

    with override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "racefree"], CACHES=caches):
        found = [m.id for m in checks.run_checks(tags=[checks.Tags.caches]) if m.id.startswith("racefree.")]
    assert found == ["racefree.E004"]
