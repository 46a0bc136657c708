"""Raw Redis access on racefree's Redis backend, as django-redis gives it:
``cache.client.get_client(write)`` and ``get_redis_connection(alias)``
(racefree's, and django-redis's own, which calls the former) return a
redis-py client on the backend's servers, with its credentials, database,
TLS and timeouts; replicas for reads; a cluster client in cluster mode;
never a command sent twice."""

import multiprocessing
import pickle
import re
import subprocess
import sys
import threading
import time

import django_redis
import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from redis.cluster import RedisCluster as RedisPyCluster
from support.load import wait_until
from support.servers import Redis

from racefree.backends.redis import RedisCache, get_redis_connection

pytestmark = pytest.mark.cross_version


def racefree(location, prefix="", **options):
    return RedisCache(location, {"KEY_PREFIX": prefix, "OPTIONS": options})


def test_the_raw_client_shares_the_caches_keys_and_values(topology, prefix):
    location, options = topology
    cache = racefree(location, prefix, **options)
    client = cache.client.get_client()
    assert isinstance(client, RedisPyCluster if options.get("CLUSTER") else redis.Redis)
    # Commands the cache API has no method for, on the cache's keys.
    assert client.rpush(cache.make_key("queue"), b"a", b"b") == 2
    assert client.lrange(cache.make_key("queue"), 0, -1) == [b"a", b"b"]
    # Values in the cache's encoding: ints as digits, the rest pickled.
    cache.set("count", 5)
    cache.set("record", {"id": 7})
    assert client.get(cache.make_key("count")) == b"5"
    assert pickle.loads(client.get(cache.make_key("record"))) == {"id": 7}
    client.set(cache.make_key("count"), b"41")
    assert cache.incr("count") == 42
    # Keys in many slots (the cluster client routes each).
    for n in range(20):
        client.set(cache.make_key(f"raw{n}"), n)
    assert cache.get_many([f"raw{n}" for n in range(20)]) == {f"raw{n}": n for n in range(20)}
    # One client per configuration and process, shared by every backend instance.
    assert racefree(location, prefix, **options).client.get_client() is client


def test_get_redis_connection_racefrees_and_django_redis(redis_server, prefix, tmp_path):
    caches = {
        "default": {"BACKEND": "racefree.backends.redis.RedisCache", "LOCATION": redis_server.location,
                    "KEY_PREFIX": prefix},
        "files": {"BACKEND": "racefree.backends.filebased.FileBasedCache", "LOCATION": str(tmp_path)},
        "forwarding": {"BACKEND": "racefree.backends.forwarding.ForwardingCache", "LOCATION": "default"},
    }
    with override_settings(CACHES=caches):
        from django.core.cache import caches as configured

        configured["default"].set("k", "v")
        ours = get_redis_connection("default")
        theirs = django_redis.get_redis_connection("default")
        assert ours is theirs
        # Through a forwarding backend, the target's.
        assert get_redis_connection("forwarding") is ours
        assert pickle.loads(ours.get(configured["default"].make_key("k"))) == "v"
        with pytest.raises(NotImplementedError, match=re.escape("CACHES['files'] is not a Redis backend")):
            get_redis_connection("files")
        with pytest.raises(NotImplementedError):
            django_redis.get_redis_connection("files")


def test_reads_may_go_to_a_replica_and_writes_to_the_primary(replicated, prefix):
    primary, replica = replicated
    cache = racefree([primary.location, replica.location], prefix)
    writer, index = cache.client.get_client(write=True, show_index=True)
    assert index == 0 and writer.info("replication")["role"] == "master"
    reader, index = cache.client.get_client(write=False, show_index=True)
    assert index == 1 and reader.info("replication")["role"] == "slave"
    with pytest.raises(redis.ReadOnlyError):
        reader.set(cache.make_key("k"), b"1")
    pinned = racefree([primary.location, replica.location], prefix, READ_FROM_REPLICAS=False)
    assert pinned.client.get_client(write=False).info("replication")["role"] == "master"


def test_credentials_database_and_client_name_come_from_the_configuration(prefix):
    server = Redis(password="s3cret")
    try:
        location = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        cache = racefree(location, prefix, CLIENT_NAME="raw-check")
        client = cache.client.get_client()
        cache.set("k", 1)
        assert client.get(cache.make_key("k")) == b"1"
        assert server.cli("-n", "3", "GET", cache.make_key("k")) == "1"
        client.ping()
        listed = server.cli("CLIENT", "LIST").splitlines()
        assert any(" name=raw-check " in line and " db=3 " in line for line in listed), listed
        wrong = racefree(f"redis://:wrong@127.0.0.1:{server.port}/3", prefix)
        with pytest.raises(redis.AuthenticationError):
            wrong.client.get_client().ping()
    finally:
        server.close()


def test_a_unix_socket_location(tmp_path, prefix):
    path = str(tmp_path / "r.sock")
    server = Redis(extra_args=["--unixsocket", path, "--unixsocketperm", "700"])
    try:
        cache = racefree(f"unix://{path}?db=2", prefix)
        cache.set("k", 9)
        assert cache.client.get_client().get(cache.make_key("k")) == b"9"
        assert server.cli("-n", "2", "GET", cache.make_key("k")) == "9"
    finally:
        server.close()


def test_tls_options_carry_over(authority, tls_redis, prefix):
    _, location = tls_redis
    cache = racefree(location, prefix, TLS={"CA_FILE": authority.cert})
    cache.set("k", 3)
    assert cache.client.get_client().get(cache.make_key("k")) == b"3"
    # Checked against the system's CAs, which do not know this one.
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        racefree(location, prefix).client.get_client().ping()
    # Encryption only.
    assert racefree(location, prefix, TLS={"VERIFY": "none"}).client.get_client().ping() is True
    # redis-py checks a certificate against the address it dials; a
    # SERVER_NAME it cannot honour is refused, not dropped.
    named = racefree(location, prefix, TLS={"CA_FILE": authority.cert, "SERVER_NAME": "localhost"})
    with pytest.raises(ImproperlyConfigured, match="SERVER_NAME"):
        named.client.get_client()


def test_a_command_that_timed_out_is_not_sent_again(fresh_redis, prefix):
    # A server that stalls for twice IO_TIMEOUT: redis-py 6+'s default
    # client retries the timed-out RPUSH once the server is back, so it
    # runs twice and answers 2 (checked here with redis-py 8.2); the raw
    # client raises instead and the command runs once.
    cache = racefree(fresh_redis.location, prefix, IO_TIMEOUT=0.3, CONNECT_TIMEOUT=0.3)
    client = cache.client.get_client()
    key = cache.make_key("pushed")
    assert client.ping() is True
    fresh_redis.pause()
    back = threading.Timer(0.6, fresh_redis.resume)
    back.start()
    try:
        with pytest.raises(redis.TimeoutError):
            client.rpush(key, b"once")
    finally:
        back.join()
    wait_until(lambda: fresh_redis.cli("LLEN", key) == "1", what="the stalled RPUSH")
    time.sleep(0.5)
    assert fresh_redis.cli("LLEN", key) == "1"
    assert client.rpush(key, b"again") == 2  # the next call reconnects


def _push_from_child(location, prefix, queue):
    client = racefree(location, prefix).client.get_client()
    queue.put(client.rpush(racefree(location, prefix).make_key("forked"), b"child"))


def test_a_forked_child_uses_connections_of_its_own(redis_server, prefix):
    cache = racefree(redis_server.location, prefix)
    client = cache.client.get_client()
    key = cache.make_key("forked")
    assert client.rpush(key, b"parent") == 1
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_push_from_child, args=(redis_server.location, prefix, queue))
                for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert sorted(queue.get(timeout=5) for _ in children) == [2, 3, 4, 5]
    assert client.rpush(key, b"parent") == 6
    assert client.lrange(key, 0, -1).count(b"child") == 4


def test_without_redis_py_the_error_says_what_to_install(redis_server):
    script = (
        "import sys; sys.modules['redis'] = None\n"
        "import django; from django.conf import settings; settings.configure(); django.setup()\n"
        "from racefree.backends.redis import RedisCache\n"
        f"cache = RedisCache({redis_server.location!r}, {{}})\n"
        "cache.set('k', 1); assert cache.get('k') == 1\n"
        "try:\n"
        "    cache.client.get_client()\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install redis" in done.stdout
