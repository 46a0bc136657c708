"""racefree's Redis backend behind Redis Sentinel, against real Sentinels
(``redis-server --sentinel``) watching a real primary and replica:
django-redis's settings, routing to the primary, exact counts under
threads, forked processes and async tasks, a failover the Sentinels are told to make,
a primary killed with -9, passwords, raw redis-py access, and settings
that cannot work. Django's own suite runs behind a Sentinel in
test_redis_django_suite.py."""

import asyncio
import os
import threading
import time
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from support.load import timed_threads, wait_until
from support.servers import Redis, RedisSentinel, free_port

from racefree.backends.redis import RedisCache, get_redis_connection
from racefree.exceptions import CacheAuthenticationError, CacheConnectionError, CacheError

SERVICE = "racefree"


class Group:
    """A primary, its replica and three Sentinels (a quorum of two) that
    know both and each other: what a failover needs."""

    def __init__(self, sentinel_password=None, primary_password=None):
        # The primary syncs a new replica at once (by default it waits 5 s).
        self.primary = Redis(extra_args=["--repl-diskless-sync-delay", "0"], password=primary_password)
        extra = ["--masterauth", primary_password] if primary_password else []
        self.replica = Redis(replica_of=self.primary, password=primary_password, extra_args=extra)
        self.sentinels = []
        try:
            wait_until(lambda: self.replica.info("replication").get("master_link_status") == "up",
                       what="the replica's link to its primary")
            self.sentinels = [RedisSentinel(self.primary, SERVICE, quorum=2, password=sentinel_password,
                                            primary_password=primary_password) for _ in range(3)]
            # Sentinels find each other through the primary every 2 s.
            wait_until(lambda: all(sentinel.knows(replicas=1, sentinels=2) for sentinel in self.sentinels),
                       seconds=30, what="the Sentinels' view of the replica and of each other")
        except BaseException:
            self.close()
            raise

    @property
    def addresses(self):
        return [sentinel.address for sentinel in self.sentinels]

    def named_primary_port(self):
        return self.sentinels[0].primary_port()

    def close(self):
        for server in [*self.sentinels, self.replica, self.primary]:
            server.close()


@pytest.fixture(scope="module")
def group():
    """A group for the tests that leave its roles as they found them."""
    servers = Group()
    yield servers
    servers.close()


@pytest.fixture
def own_group():
    """A group of the test's own, which it fails over or kills."""
    servers = Group()
    yield servers
    servers.close()


def behind(servers, db=0, **options):
    """A cache on the service ``servers`` watch, in django-redis's spelling."""
    return RedisCache(f"redis://{SERVICE}/{db}", {"KEY_PREFIX": uuid.uuid4().hex[:8], "OPTIONS": {
        "CLIENT_CLASS": "django_redis.client.SentinelClient",
        "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
        "SENTINELS": servers.addresses, **options}})


def test_every_call_goes_to_the_primary_the_sentinels_name(group):
    cache = behind(group, db=2)
    cache.set("a", 1)
    assert cache.incr("a", 9) == 10
    cache.set_many({"b": "bee", "c": ["see"]})
    assert cache.get_many(["a", "b", "c", "missing"]) == {"a": 10, "b": "bee", "c": ["see"]}
    assert group.primary.cli("-n", "2", "GET", cache.make_key("a")) == "10"
    assert cache.delete_many(["b", "c"]) is None
    assert cache.get("b") is None and cache.has_key("a")
    # Reads too: with the replica frozen, they are still answered at once.
    group.replica.pause()
    try:
        started = time.monotonic()
        for _ in range(20):
            assert cache.get("a") == 10
            assert cache.get_many(["a"]) == {"a": 10}
        assert time.monotonic() - started < 0.5
    finally:
        group.replica.resume()
    assert cache._store.nodes() == [f"127.0.0.1:{group.primary.port}"]
    cache.clear()
    assert group.primary.cli("-n", "2", "DBSIZE") == "0"


def test_a_service_name_keeps_its_case_and_an_unknown_one_is_named_in_the_error(group):
    # Sentinel service names are case-sensitive (urlsplit lowercases hosts).
    cache = RedisCache("redis://RaceFree", {"OPTIONS": {"SENTINELS": group.addresses}})
    with pytest.raises(CacheError, match="monitors no service named \"RaceFree\""):
        cache.set("a", 1)
    quiet = RedisCache("redis://RaceFree", {"OPTIONS": {"SENTINELS": group.addresses, "IGNORE_EXCEPTIONS": True}})
    assert quiet.get("a", "default") == "default"


def test_sentinels_listed_as_strings_and_one_that_is_down(group):
    # A Sentinel that refuses connections is passed over.
    down = RedisSentinel(group.primary, SERVICE)
    down_address = f"127.0.0.1:{down.port}"
    down.close()
    cache = RedisCache(f"redis://{SERVICE}", {"OPTIONS": {
        "SENTINELS": [down_address, *(f"{host}:{port}" for host, port in group.addresses)]}})
    cache.set("x", "y")
    assert cache.get("x") == "y"


def test_a_sentinel_that_names_a_replica_is_passed_over_with_a_user_that_may_not_run_role(group):
    # A Sentinel that lags behind a failover names a server that is a
    # replica now: racefree asks it (HELLO, which any ACL user may send,
    # unlike ROLE), and takes the next Sentinel's answer. (This one was
    # told the replica is the primary.) The user here is a cache's: reads,
    # writes and scripts only.
    for server in (group.primary, group.replica):
        server.cli("ACL", "SETUSER", "cache", "on", ">cache-pw", "~*", "+@read", "+@write", "+@scripting")
    assert "NOPERM" in group.primary.cli("--user", "cache", "--pass", "cache-pw", "--no-auth-warning", "ROLE")
    lagging = RedisSentinel(group.replica, SERVICE)
    try:
        location = f"redis://cache:cache-pw@{SERVICE}"
        cache = RedisCache(location, {"OPTIONS": {"SENTINELS": [lagging.address, *group.addresses]}})
        assert lagging.primary_port() == group.replica.port
        cache.set("a", "written")
        assert cache.get("a") == "written"
        assert cache._store.nodes() == [f"127.0.0.1:{group.primary.port}"]
        alone = RedisCache(location, {"OPTIONS": {"SENTINELS": [lagging.address]}})
        with pytest.raises(CacheError, match="not the primary"):
            alone.set("a", "lost")
    finally:
        lagging.close()
    assert cache.get("a") == "written"


def test_no_sentinel_answering_is_a_clear_error_or_a_miss(group):
    gone = RedisSentinel(group.primary, SERVICE)
    address = gone.address
    gone.close()
    cache = RedisCache(f"redis://{SERVICE}", {"OPTIONS": {"SENTINELS": [address]}})
    started = time.monotonic()
    with pytest.raises(CacheConnectionError, match=f"127.0.0.1:{address[1]}"):
        cache.set("a", 1)
    assert time.monotonic() - started < 2
    quiet = RedisCache(f"redis://{SERVICE}", {"OPTIONS": {"SENTINELS": [address], "IGNORE_EXCEPTIONS": True}})
    assert quiet.get("a", "default") == "default"


def test_system_checks_ask_each_sentinel_for_the_primary(group):
    # manage.py check: each Sentinel is asked for the primary, which is
    # asked whether it is one; a Sentinel that does not answer is a
    # warning naming it.
    assert behind(group).system_checks("default") == []
    gone = RedisSentinel(group.primary, SERVICE)
    gone.close()
    cache = RedisCache(f"redis://{SERVICE}", {"OPTIONS": {"SENTINELS": [*group.addresses, gone.address]}})
    (warning,) = cache.system_checks("default")
    assert warning.id == "racefree.W001" and f"127.0.0.1:{gone.port}" in warning.msg
    unknown = RedisCache("redis://nosuch", {"OPTIONS": {"SENTINELS": group.addresses[:1]}})
    (warning,) = unknown.system_checks("default")
    assert "no service named \"nosuch\"" in warning.msg


def test_frozen_sentinels_fail_many_callers_at_once_not_one_after_another(own_group):
    # Sentinels that accept connections but answer nothing (SIGSTOP), before
    # any primary is known: one caller waits out the timeouts, and the 16
    # threads that called meanwhile take its error instead of each asking
    # again in turn (which would take 16 × 0.6 s for the last).
    servers = own_group
    cache = behind(servers, IO_TIMEOUT=0.3, CONNECT_TIMEOUT=0.3)
    for sentinel in servers.sentinels:
        sentinel.pause()
    try:
        errors, slowest = timed_threads(16, lambda: cache.get("a"))
    finally:
        for sentinel in servers.sentinels:
            sentinel.resume()
    assert len(errors) == 16 and all(isinstance(error, CacheError) for error in errors)
    assert "did not answer in time" in str(errors[0])
    assert slowest < 2.0, f"the slowest caller took {slowest:.1f} s"
    # Once they answer again (after 250 ms), so does the cache.
    time.sleep(0.3)
    cache.set("a", 1)
    assert cache.get("a") == 1


def test_stats_list_the_sentinels_and_the_primary(group):
    cache = behind(group)
    cache.set("a", 1)
    assert cache.get("a") == 1
    stats = cache.stats()
    assert stats["sets"] == 1 and stats["hits"] == 1
    # Every Sentinel's pool (only the first was needed), and the primary's.
    assert set(stats["servers"]) == {f"127.0.0.1:{port}" for port in
                                     [group.primary.port, *(sentinel.port for sentinel in group.sentinels)]}
    assert stats["servers"][f"127.0.0.1:{group.primary.port}"]["idle"] >= 1


def test_eight_threads_four_processes_and_two_hundred_tasks_count_exactly(group):
    cache = behind(group)
    cache.set("n", 0)

    def count(times):
        for _ in range(times):
            cache.incr("n")

    threads = [threading.Thread(target=count, args=(500,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.get("n") == 4000
    # Forked children make their own view of the Sentinels and pools.
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                count(250)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    assert all(os.waitpid(pid, 0)[1] == 0 for pid in children)
    assert cache.get("n") == 5000

    async def tasks():
        # Native async: 200 tasks × 5 aincr.
        async def count_async():
            for _ in range(5):
                await cache.aincr("n")

        await asyncio.gather(*(count_async() for _ in range(200)))

    asyncio.run(tasks())
    assert cache.get("n") == 6000


def test_a_failover_moves_every_call_to_the_new_primary(own_group):
    # SENTINEL FAILOVER promotes the replica. The old primary goes on
    # taking writes until the Sentinels demote it (about 10 s later), and
    # those are lost: racefree asks the Sentinels once a second, so its
    # calls move within about a second of the promotion; a thread of calls
    # sees no error throughout. A cache whose checks are an hour apart
    # learns of the failover only at the demotion: the Sentinels close the
    # old primary's client connections, the next call's new connection
    # finds a replica (HELLO), nothing was sent, and the call runs once on
    # the primary the Sentinels name now.
    servers = own_group
    cache = behind(servers)
    idle = behind(servers, SENTINEL_CHECK_INTERVAL=3600)
    cache.set("before", "kept")
    idle.set("counter", 1)
    for key in (cache.make_key("before"), idle.make_key("counter")):
        wait_until(lambda key=key: servers.replica.cli("EXISTS", key) == "1", what="replication")
    errors, calls, stop = [], [0], threading.Event()

    def work():
        index = 0
        while not stop.is_set():
            try:
                cache.set(f"k{index % 50}", index)
                cache.get(f"k{index % 50}")
                calls[0] += 1
            except Exception as error:  # noqa: BLE001 - the test counts every kind
                errors.append(error)
            index += 1
            time.sleep(0.002)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        servers.sentinels[0].cli("SENTINEL", "FAILOVER", SERVICE)
        wait_until(lambda: servers.named_primary_port() == servers.replica.port, what="the promotion")
        promoted = time.monotonic()

        def lands_on_the_new_primary():
            probe = uuid.uuid4().hex
            cache.set(probe, 1)
            return servers.replica.cli("EXISTS", cache.make_key(probe)) == "1"

        wait_until(lands_on_the_new_primary, seconds=5, what="a write on the new primary")
        moved_after = time.monotonic() - promoted
        wait_until(lambda: servers.primary.info("replication")["role"] == "slave", seconds=30,
                   what="the old primary's demotion")
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    assert errors == []
    assert calls[0] > 100
    assert moved_after < 2.5, f"calls moved {moved_after:.2f} s after the promotion"
    assert cache.get("before") == "kept"
    assert cache.incr("counter", 1, ignore_key_check=True) == 1
    assert servers.replica.cli("GET", cache.make_key("counter")) == "1"
    assert cache._store.nodes() == [f"127.0.0.1:{servers.replica.port}"]
    # The idle cache: still on the old primary until its next call, a
    # read (so that no READONLY refusal is what moves it).
    assert idle._store.nodes() == [f"127.0.0.1:{servers.primary.port}"], "the view changed before the call"
    assert idle.get("counter") == 1
    assert idle._store.nodes() == [f"127.0.0.1:{servers.replica.port}"]
    assert idle.incr("counter") == 2
    assert servers.replica.cli("GET", idle.make_key("counter")) == "2"


def test_a_primary_killed_fails_calls_clearly_until_the_sentinels_promote_its_replica(own_group):
    # kill -9: calls fail with CacheError (never hang past the timeouts,
    # never a wrong value) until the Sentinels agree the primary is down
    # (1 s without an answer) and promote the replica; then the calls go
    # there, and every value written before is read back.
    servers = own_group
    cache = behind(servers, IO_TIMEOUT=0.5, CONNECT_TIMEOUT=0.5)
    values = {f"v{index}": ("value", index) for index in range(20)}
    cache.set_many(values)
    wait_until(lambda: servers.replica.cli("DBSIZE") == "20", what="replication")
    servers.primary.kill()
    killed = time.monotonic()
    failures, wrong, slowest = 0, [], 0.0
    while True:
        started = time.monotonic()
        try:
            found = cache.get_many(list(values))
        except CacheError:
            failures += 1
        else:
            if found == values:
                break
            wrong.append(found)
        slowest = max(slowest, time.monotonic() - started)
        assert time.monotonic() - killed < 30, "the replica was not promoted and found within 30 s"
        time.sleep(0.05)
    assert failures > 0 and wrong == []
    assert slowest < 3, f"a call took {slowest:.1f} s"
    assert cache.incr("counter", 1, ignore_key_check=True) == 1
    assert servers.replica.info("replication")["role"] == "master"


def test_passwords_of_the_sentinels_and_of_the_primary():
    servers = Group(sentinel_password="sentinel-secret", primary_password="primary-secret")
    try:
        location = f"redis://:primary-secret@{SERVICE}/1"
        cache = RedisCache(location, {"OPTIONS": {"SENTINELS": servers.addresses,
                                                  "SENTINEL_KWARGS": {"password": "sentinel-secret"}}})
        cache.set("a", "b")
        assert cache.get("a") == "b"
        assert servers.primary.cli("-n", "1", "EXISTS", cache.make_key("a")) == "1"
        wrong = RedisCache(location, {"OPTIONS": {"SENTINELS": servers.addresses,
                                                  "SENTINEL_KWARGS": {"password": "nope"}}})
        with pytest.raises(CacheAuthenticationError, match="refused the login"):
            wrong.get("a")
        # The primary's password is not the Sentinels'.
        mixed = RedisCache(f"redis://{SERVICE}/1", {"OPTIONS": {"SENTINELS": servers.addresses,
                                                                "SENTINEL_KWARGS": {"password": "sentinel-secret"}}})
        with pytest.raises(CacheAuthenticationError):
            mixed.get("a")
    finally:
        servers.close()


def test_sentinels_and_primary_over_tls(authority, tls_redis):
    # rediss:// speaks TLS to the Sentinels and to the primary they name
    # (at its TLS port), both checked against the CA.
    primary, location = tls_redis
    cert, key = authority.server("redis-sentinel")
    tls_port = free_port()
    sentinel = RedisSentinel(primary, SERVICE, primary_port=int(location.rsplit(":", 1)[1]), config=[
        f"tls-port {tls_port}", f"tls-cert-file {cert}", f"tls-key-file {key}",
        f"tls-ca-cert-file {authority.cert}", "tls-replication yes", "tls-auth-clients no"])
    try:
        assert sentinel.primary_port() == int(location.rsplit(":", 1)[1])
        cache = RedisCache(f"rediss://{SERVICE}/4", {"OPTIONS": {"SENTINELS": [("127.0.0.1", tls_port)],
                                                                 "TLS": {"CA_FILE": authority.cert}}})
        cache.set("a", "over tls")
        assert cache.get("a") == "over tls"
        assert primary.cli("-n", "4", "EXISTS", cache.make_key("a")) == "1"
        # Without the CA, the Sentinel's certificate is refused.
        untrusted = RedisCache(f"rediss://{SERVICE}/4", {"OPTIONS": {"SENTINELS": [("127.0.0.1", tls_port)]}})
        with pytest.raises(CacheError, match="TLS"):
            untrusted.get("a")
    finally:
        sentinel.close()


def test_raw_redis_py_access_goes_to_the_primary(group):
    import django_redis

    caches = {"default": {"BACKEND": "racefree.backends.redis.RedisCache", "LOCATION": f"redis://{SERVICE}/3",
                          "OPTIONS": {"SENTINELS": group.addresses}}}
    with override_settings(CACHES=caches):
        # Reads too, as the cache's own calls.
        ours = get_redis_connection("default", write=False)
        assert django_redis.get_redis_connection("default") is ours
    key = uuid.uuid4().hex
    assert ours.rpush(key, "x", "y") == 2
    assert group.primary.cli("-n", "3", "LLEN", key) == "2"


@pytest.mark.parametrize("options, location, message", [
    ({"SENTINELS": "127.0.0.1:26379"}, "redis://s", "list of \\(host, port\\) pairs"),
    ({"SENTINELS": [("127.0.0.1", "port")]}, "redis://s", "a number for each port"),
    ({"SENTINELS": [("127.0.0.1", 1), "127.0.0.1:1"]}, "redis://s", "names each Sentinel once"),
    ({"SENTINELS": [("h", 1)], "SENTINEL_KWARGS": {"ssl": True}}, "redis://s", "username and password"),
    ({"SENTINELS": [("h", 1)], "SENTINEL_KWARGS": {"username": "u"}}, "redis://s", "a password for its username"),
    ({"SENTINELS": [("h", 1)]}, "redis://s:6379", "without a port"),
    ({"SENTINELS": [("h", 1)]}, "redis://s,redis://t", "one URL naming the service"),
    ({"SENTINELS": [("h", 1)]}, "unix:///tmp/redis.sock", "one URL naming the service"),
    ({"SENTINELS": [("h", 1)], "CLUSTER": True}, "redis://s", "SENTINELS or CLUSTER"),
    ({"CLIENT_CLASS": "django_redis.client.SentinelClient"}, "redis://127.0.0.1", "need OPTIONS\\['SENTINELS'\\]"),
    ({"SENTINEL_KWARGS": {"password": "p"}}, "redis://127.0.0.1", "need OPTIONS\\['SENTINELS'\\]"),
    ({"SENTINEL_CHECK_INTERVAL": 5}, "redis://127.0.0.1", "need OPTIONS\\['SENTINELS'\\]"),
    ({"SENTINELS": [("h", 1)], "SENTINEL_CHECK_INTERVAL": 0}, "redis://s", "above 0"),
    ({"CONNECTION_FACTORY": "django_redis.pool.ConnectionFactory"}, "redis://127.0.0.1", "its own pool"),
    ({"CLIENT_CLASS": "django_redis.client.ShardClient"}, "redis://127.0.0.1", "sharded and herd"),
])
def test_sentinel_settings_that_cannot_work_are_refused(options, location, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        RedisCache(location, {"OPTIONS": options})
