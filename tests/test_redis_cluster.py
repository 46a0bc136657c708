"""racefree's Redis backend in cluster mode against a real three-node
Redis Cluster: configuration (OPTIONS and URLs), routing, exact counts
under threads, a node that is killed and restarted, a primary failed over
to its replica, a forked child, stats, checks, and a cluster over TLS. Django's own suite runs on a cluster in
test_redis_django_suite.py."""

import asyncio
import os
import threading
import time
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from support.load import timed_threads, wait_until
from support.servers import Redis, RedisCluster, free_port

from racefree.backends.redis import RedisCache
from racefree.exceptions import CacheConnectionError, CacheError


@pytest.fixture(scope="module")
def cluster():
    """A cluster of this module's own: its tests kill and restart nodes."""
    nodes = RedisCluster()
    yield nodes
    nodes.close()


@pytest.fixture
def prefix():
    return uuid.uuid4().hex[:8]


def clustered(cluster, prefix, **options):
    return RedisCache(cluster.locations, {"KEY_PREFIX": prefix, "OPTIONS": {"CLUSTER": True, **options}})


def keys_per_node(cache, cluster, count=3, start=0):
    """``count`` keys (unprefixed) whose entries each node serves: {node: [keys]}."""
    found = {node.port: [] for node in cluster.nodes}
    index = start
    while any(len(keys) < count for keys in found.values()):
        key = f"key-{index}"
        owned = found[cluster.node_for(cache.make_key(key)).port]
        if len(owned) < count:
            owned.append(key)
        index += 1
    return found


def test_keys_go_to_their_slots_primaries(cluster, prefix):
    cache = clustered(cluster, prefix)
    before = [int(node.cli("DBSIZE")) for node in cluster.nodes]
    cache.set_many({f"k{i}": i for i in range(300)})
    for i in range(0, 300, 7):
        assert cache.get(f"k{i}") == i
    added = [int(node.cli("DBSIZE")) - was for node, was in zip(cluster.nodes, before)]
    assert sum(added) == 300 and all(count > 50 for count in added), added
    key = cache.make_key("k1")
    assert cluster.node_for(key).cli("GET", key) == "1"
    assert cache.get_many([f"k{i}" for i in range(300)] + ["absent"]) == {f"k{i}": i for i in range(300)}
    cache.delete_many([f"k{i}" for i in range(300)])
    assert [int(node.cli("DBSIZE")) for node in cluster.nodes] == before


def test_a_cluster_url_is_a_seed(cluster, prefix):
    # One seed (any node) is enough; the URL says cluster, no OPTIONS needed.
    seed = f"redis+cluster://127.0.0.1:{cluster.nodes[2].port}"
    cache = RedisCache(seed, {"KEY_PREFIX": prefix})
    assert cache._options["CLUSTER"] is True
    cache.set_many({f"u{i}": i for i in range(30)})
    assert len(cache.get_many([f"u{i}" for i in range(30)])) == 30
    assert sorted(cache._store.nodes()) == sorted(f"127.0.0.1:{node.port}" for node in cluster.nodes)


def test_every_operation_on_keys_of_every_node(cluster, prefix):
    cache = clustered(cluster, prefix)
    for keys in keys_per_node(cache, cluster, count=1).values():
        key = keys[0]
        assert cache.add(key, 1)
        assert not cache.add(key, 2)
        assert cache.incr(key, 9) == 10
        assert cache.decr(key) == 9
        assert cache.touch(key, 100)
        assert cache.has_key(key)
        with cache.lock(f"{key}-lock"):
            assert cache.get_or_set(f"{key}-computed", lambda: "v") == "v"
        assert cache.delete(key)
        assert cache.get(key) is None
        assert asyncio.run(cache.aset(key, "async")) is None
        assert asyncio.run(cache.aget(key)) == "async"


def test_clear_empties_every_node(cluster, prefix):
    cache = clustered(cluster, prefix)
    cache.set_many({f"c{i}": i for i in range(60)})
    cache.clear()
    assert [node.cli("DBSIZE") for node in cluster.nodes] == ["0", "0", "0"]


def test_eight_threads_of_five_hundred_increments_over_three_nodes_count_exactly(cluster, prefix):
    cache = clustered(cluster, prefix)
    keys = [owned[0] for owned in keys_per_node(cache, cluster, count=1).values()]
    cache.set_many(dict.fromkeys(keys, 0))
    errors = []

    def work():
        try:
            for i in range(500):
                cache.incr(keys[i % 3])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Per thread 167, 167 and 166 increments of the three keys.
    assert cache.get_many(keys) == dict(zip(keys, [8 * 167, 8 * 167, 8 * 166]))


def test_a_killed_node_fails_its_keys_only_and_serves_again_after_a_restart(cluster, prefix):
    strict = clustered(cluster, prefix)
    lenient = clustered(cluster, prefix, IGNORE_EXCEPTIONS=True)
    owned = keys_per_node(strict, cluster, count=4)
    victim = cluster.nodes[1]
    dead = owned[victim.port]
    alive = [key for port, keys in owned.items() if port != victim.port for key in keys]
    everything = dead + alive
    strict.set_many(dict.fromkeys(everything, "v"))
    victim.kill()
    try:
        with pytest.raises(CacheConnectionError):
            strict.get(dead[0])
        assert issubclass(CacheConnectionError, CacheError)
        with pytest.raises(CacheError) as raised:
            strict.get_many(everything)
        assert sorted(raised.value.failed_keys) == sorted(strict.make_key(key) for key in dead)
        assert sorted(raised.value.partial) == sorted(strict.make_key(key) for key in alive)
        with pytest.raises(CacheError) as raised:
            strict.set_many(dict.fromkeys(everything, "w"))
        assert sorted(raised.value.failed_keys) == sorted(strict.make_key(key) for key in dead)
        # Under IGNORE_EXCEPTIONS: the others' values, the keys not stored.
        assert lenient.get_many(everything) == dict.fromkeys(alive, "w")
        assert sorted(lenient.set_many(dict.fromkeys(everything, "x"))) == sorted(dead)
        assert lenient.get(dead[0]) is None
        assert asyncio.run(lenient.aget_many(everything)) == dict.fromkeys(alive, "x")
        with pytest.raises(CacheError) as raised:
            asyncio.run(strict.aget_many(everything))
        assert sorted(raised.value.partial) == sorted(strict.make_key(key) for key in alive)
        lenient.delete_many(everything)
        # The others keep serving single keys throughout.
        for key in alive:
            strict.set(key, "still")
            assert strict.get(key) == "still"
    finally:
        victim.restart()
    # Back (empty: nothing persisted), once it has rejoined the cluster.
    wait_until(lambda: "cluster_state:ok" in victim.cli("cluster", "info"), what="the node's rejoining")
    wait_until(lambda: lenient.add(dead[0], "back"), what="the node's serving")
    assert strict.get(dead[0]) == "back"
    strict.set_many(dict.fromkeys(everything, "again"))
    assert strict.get_many(everything) == dict.fromkeys(everything, "again")


def _in_forked_child(cache, keys):
    # The child's own map and pools (the parent's sockets are never read).
    try:
        ok = cache.get_many(keys) == {key: key for key in keys}
        cache.set_many({f"{key}-child": key for key in keys})
        ok = ok and cache.get_many([f"{key}-child" for key in keys]) == {f"{key}-child": key for key in keys}
    except BaseException:
        ok = False
    os._exit(0 if ok else 1)


def test_frozen_seeds_fail_many_callers_at_once_not_one_after_another(prefix):
    # Seeds that accept connections but answer nothing (SIGSTOP), before
    # any slot map is known: one caller waits out the timeouts, and the 16
    # threads that called meanwhile take its error instead of each asking
    # again in turn (which would take 16 × 0.6 s for the last).
    seeds = [Redis(cluster=True), Redis(cluster=True)]
    try:
        cache = RedisCache([seed.location for seed in seeds], {"KEY_PREFIX": prefix, "OPTIONS": {
            "CLUSTER": True, "IO_TIMEOUT": 0.3, "CONNECT_TIMEOUT": 0.3}})
        for seed in seeds:
            seed.pause()
        errors, slowest = timed_threads(16, lambda: cache.get("a"))
        assert len(errors) == 16 and all(isinstance(error, CacheError) for error in errors)
        assert "did not answer in time" in str(errors[0])
        assert slowest < 2.0, f"the slowest caller took {slowest:.1f} s"
    finally:
        for seed in seeds:
            seed.close()


def test_a_forked_child_builds_its_own_map_and_pools(cluster, prefix):
    cache = clustered(cluster, prefix)
    keys = [key for owned in keys_per_node(cache, cluster, count=2).values() for key in owned]
    cache.set_many({key: key for key in keys})
    pid = os.fork()
    if pid == 0:
        _in_forked_child(cache, keys)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.get_many([f"{key}-child" for key in keys]) == {f"{key}-child": key for key in keys}


def test_stats_list_a_pool_per_node(cluster, prefix):
    cache = clustered(cluster, prefix, POOL_SIZE=3)
    cache.set_many({f"s{i}": i for i in range(30)})
    stats = cache.stats()
    assert sorted(stats["servers"]) == sorted(f"127.0.0.1:{node.port}" for node in cluster.nodes)
    assert all(pool["connects"] >= 1 and pool["in_use"] == 0 for pool in stats["servers"].values())
    assert stats["sets"] >= 30


def test_cluster_settings_that_cannot_work_are_refused(cluster):
    seeds = cluster.locations
    cases = [
        (seeds, {"CLUSTER": True, "DB": 2}, "database 0 only"),
        ([f"redis+cluster://127.0.0.1:{cluster.nodes[0].port}/3"], {}, "database 0 only"),
        (["unix:///tmp/redis.sock"], {"CLUSTER": True}, "TCP addresses"),
        ([f"redis+cluster://127.0.0.1:{cluster.nodes[0].port}", seeds[1]], {}, "mixes cluster"),
        (["redis+unix:///tmp/x"], {}, r"redis\+cluster://"),
    ]
    for location, options, message in cases:
        with pytest.raises(ImproperlyConfigured, match=message):
            RedisCache(location, {"OPTIONS": options})


def test_a_rediss_cluster_url_turns_on_tls_and_cluster():
    cache = RedisCache("rediss+cluster://user:pw@127.0.0.1:7000", {})
    assert cache._options["CLUSTER"] is True
    assert cache._options["TLS"]["verify"] == "full"  # the system's CAs
    assert (cache._options["USERNAME"], cache._options["PASSWORD"]) == ("user", "pw")


def test_system_checks_ask_each_seed_for_the_slot_map(cluster):
    nobody = f"redis://127.0.0.1:{free_port()}"
    cache = RedisCache([*cluster.locations, nobody], {"OPTIONS": {"CLUSTER": True}})
    warnings = cache.system_checks("clustered")
    assert [warning.id for warning in warnings] == ["racefree.W001"]
    assert nobody.removeprefix("redis://") in warnings[0].msg


def test_a_cluster_over_tls(authority):
    # The nodes tell a TLS client their TLS ports; each is checked against
    # the CA as the address the cluster reports (127.0.0.1).
    cert, key = authority.server("redis-server")
    tls_cluster = RedisCluster(tls=(cert, key, *authority.client("redis-node"), authority.cert))
    try:
        cache = RedisCache(f"rediss+cluster://127.0.0.1:{tls_cluster.tls_ports[1]}",
                           {"OPTIONS": {"TLS": {"CA_FILE": authority.cert}}})
        cache.set_many({f"t{i}": i for i in range(60)})
        assert cache.get_many([f"t{i}" for i in range(60)]) == {f"t{i}": i for i in range(60)}
        assert cache.incr("t7") == 8
        assert sorted(cache.stats()["servers"]) == sorted(f"127.0.0.1:{port}" for port in tls_cluster.tls_ports)
        assert sum(int(node.cli("DBSIZE")) for node in tls_cluster.nodes) == 60
        # The raw redis-py cluster client (cache.client) over TLS too.
        raw = cache.client.get_client()
        assert [raw.get(cache.make_key(f"t{i}")) for i in (3, 7, 50)] == [b"3", b"8", b"50"]
        assert raw.rpush(cache.make_key("raw list"), b"x") == 1
    finally:
        tls_cluster.close()


def test_a_killed_primary_is_replaced_by_its_replica_without_losing_a_value(prefix):
    # Three primaries with a replica each: a primary killed with -9 is
    # failed over to its replica by the cluster; its keys fail meanwhile
    # (never a wrong value), the other nodes' keys keep being served, and
    # once the replica is promoted racefree finds it (a refused connection
    # asks for the slot map again) and reads back every value written before.
    nodes = RedisCluster(replicas=1)
    try:
        cache = clustered(nodes, prefix)
        keys = [f"f{index}" for index in range(60)]
        values = {key: (key, index) for index, key in enumerate(keys)}
        cache.set_many(values)
        cache.set("counter", 0)
        victim = nodes.node_for(cache.make_key(keys[0]))
        replica = nodes.replica_of(victim)
        dead = [key for key in keys if nodes.node_for(cache.make_key(key)) is victim]
        alive = [key for key in keys if key not in dead]
        assert dead and alive
        wait_until(lambda: replica.cli("dbsize") == victim.cli("dbsize"), what="the replica's copy")
        victim.kill()
        wrong, alive_errors, failed_reads = [], [], 0
        deadline = time.monotonic() + 30
        while True:
            for key in alive:
                try:
                    if cache.get(key) != values[key]:
                        wrong.append(key)
                except CacheError as error:
                    alive_errors.append((key, error))
            try:
                found = cache.get_many(dead)
            except CacheError as error:
                failed_reads += 1
                # Every one of these keys is on the killed node.
                assert error.partial == {}
            else:
                assert found == {key: values[key] for key in dead}
                break
            assert time.monotonic() < deadline, "the replica was not found within 30 s"
            time.sleep(0.1)
        assert failed_reads > 0, "the killed primary's keys never failed: was it their owner?"
        assert wrong == [] and alive_errors == []
        assert replica.info("replication")["role"] == "master"
        # Writes go to the promoted replica, async too.
        assert cache.incr("counter") == 1
        cache.set(dead[0], "new")
        assert asyncio.run(cache.aget(dead[0])) == "new"
        assert replica.cli("exists", cache.make_key(dead[0])) == "1"
    finally:
        nodes.close()
