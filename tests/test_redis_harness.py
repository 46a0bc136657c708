"""The Redis servers the harness starts (for the coming Redis backend): a
single server, a primary with a replica, and a three-node cluster, each
real, on loopback and free ports."""

import time

from support.servers import Redis, RedisCluster


def test_a_single_server_answers_and_can_be_frozen_and_killed():
    server = Redis()
    try:
        assert server.cli("set", "k", "v") == "OK" and server.cli("get", "k") == "v"
        assert server.location.startswith("redis://127.0.0.1:")
        server.pause()
        server.resume()
        assert server.cli("get", "k") == "v"
        server.restart()
        assert server.cli("get", "k") == ""  # nothing persisted
    finally:
        server.close()


def test_a_replica_follows_its_primary():
    primary = Redis()
    replica = Redis(replica_of=primary)
    try:
        primary.cli("set", "k", "v")
        deadline = time.monotonic() + 10
        while replica.cli("get", "k") != "v":
            assert time.monotonic() < deadline, replica.info("replication")
            time.sleep(0.05)
        assert replica.info("replication")["role"] == "slave"
    finally:
        replica.close()
        primary.close()


def test_a_three_node_cluster_routes_keys_and_survives_a_node():
    cluster = RedisCluster()
    try:
        owners = {cluster.node_for(f"key-{i}").port for i in range(50)}
        assert owners == {node.port for node in cluster.nodes}
        node = cluster.node_for("alpha")
        assert node.cli("set", "alpha", "1") == "OK"
        other = next(n for n in cluster.nodes if n is not node)
        assert other.cli("set", "alpha", "1").startswith("MOVED")
        key = next(f"key-{i}" for i in range(100) if cluster.node_for(f"key-{i}") is other)
        node.kill()
        # The others keep serving their own slots.
        assert other.cli("set", key, "x") == "OK"
    finally:
        cluster.close()
