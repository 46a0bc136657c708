"""The raw redis-py client of a racefree ``RedisCache``: django-redis's
``cache.client.get_client(write)``, which its ``get_redis_connection``
calls, for the commands a cache API has no method for (lists, streams,
pub/sub, pipelines).

The client is redis-py's own (installed with Django's ``RedisCache`` or
django-redis), made from the backend's resolved LOCATION and OPTIONS:
the same servers, credentials, database, TLS and timeouts. It has a pool
of its own, one per configuration, server and process (redis-py's pools
reconnect after a fork), and never sends a command twice, as racefree's
store does not: redis-py 6+ retries timed-out commands by default, which
could run an ``LPUSH`` twice.
"""

import random
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from racefree.backends.base import ProcessRegistry

_clients: ProcessRegistry[tuple[object, ...], Any] = ProcessRegistry()
#: The options a connection is made from (the key of a client in _clients).
CONNECTION_OPTIONS = ("USERNAME", "PASSWORD", "DB", "CLIENT_NAME", "IO_TIMEOUT", "CONNECT_TIMEOUT", "MAX_CONNECTIONS",
                      "TLS", "CLUSTER", "SENTINELS", "SENTINEL_KWARGS")


def _import_redis_py() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError(
            "cache.client.get_client() returns a redis-py client: pip install redis (racefree's cache "
            "methods do not need it)"
        ) from None
    return redis


def _host_and_port(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def _tls_keywords(tls: dict[str, Any]) -> dict[str, Any]:
    """OPTIONS TLS (as resolved) as redis-py's ssl_* keywords."""
    if tls.get("server_name") is not None and tls["verify"] == "full":
        # redis-py checks the certificate against the host it dials.
        raise ImproperlyConfigured(
            "TLS SERVER_NAME cannot be given to redis-py's client (it checks the certificate against the "
            "address it connects to): cache.client.get_client() is not available with this configuration"
        )
    keywords: dict[str, Any] = {
        "ssl": True,
        "ssl_cert_reqs": "none" if tls["verify"] == "none" else "required",
        "ssl_check_hostname": tls["verify"] == "full",
        "ssl_ca_certs": tls.get("ca_file"),
        "ssl_certfile": tls.get("cert_file"),
        "ssl_keyfile": tls.get("key_file"),
        "ssl_password": tls.get("key_password"),
    }
    if tls.get("ca_certs"):
        # Roots read from an ssl.SSLContext: DER, which ssl takes concatenated.
        keywords["ssl_ca_data"] = b"".join(tls["ca_certs"])
    return keywords


def _connection_keywords(options: dict[str, Any]) -> dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    keywords: dict[str, Any] = {
        "username": options["USERNAME"],
        "password": options["PASSWORD"],
        "socket_timeout": options["IO_TIMEOUT"],
        "socket_connect_timeout": options["CONNECT_TIMEOUT"],
        "client_name": options["CLIENT_NAME"],
        "retry": Retry(NoBackoff(), 0),
    }
    if options["MAX_CONNECTIONS"] is not None:
        keywords["max_connections"] = options["MAX_CONNECTIONS"]
    if options["TLS"] is not None:
        keywords.update(_tls_keywords(options["TLS"]))
    return keywords


def _build(servers: Sequence[str], options: dict[str, Any], index: int, service: str | None) -> Any:
    redis = _import_redis_py()
    keywords = _connection_keywords(options)
    if service is not None:
        # redis-py's Sentinel client: the Sentinels take their own login,
        # and the same timeouts and TLS as the primary.
        login = {name: value for name, value in (options["SENTINEL_KWARGS"] or {}).items() if value is not None}
        shared = {name: value for name, value in keywords.items() if name not in ("username", "password")}
        sentinel = redis.sentinel.Sentinel([_host_and_port(server) for server in servers],
                                           sentinel_kwargs={**shared, **login}, **keywords)
        return sentinel.master_for(service, db=options["DB"])
    if options["CLUSTER"]:
        nodes = [redis.cluster.ClusterNode(*_host_and_port(server)) for server in servers]
        return redis.RedisCluster(startup_nodes=nodes, **keywords)
    server = servers[index]
    if server.startswith("unix:"):
        return redis.Redis(unix_socket_path=server[len("unix:"):], db=options["DB"], **keywords)
    host, port = _host_and_port(server)
    return redis.Redis(host=host, port=port, db=options["DB"], **keywords)


class RawClient:
    """What django-redis's ``cache.client`` offers for raw access:
    ``get_client(write=True)``, a redis-py ``Redis`` (a ``RedisCluster``
    in cluster mode) on the primary, or with ``write=False`` on a replica
    where LOCATION lists any and READ_FROM_REPLICAS allows it. Keys are
    raw: ``cache.make_key(key)`` gives a cache entry's."""

    def __init__(self, servers: Sequence[str], options: dict[str, Any], sentinel_service: str | None = None) -> None:
        self._servers = list(servers)
        self._options = options
        self._service = sentinel_service

    def _index(self, write: bool) -> int:
        replicas = len(self._servers) - 1
        # With Sentinel the servers are Sentinels: the primary, as the cache's calls.
        sentinel = self._service is not None
        if write or not replicas or sentinel or self._options["CLUSTER"] or not self._options["READ_FROM_REPLICAS"]:
            return 0
        return random.randint(1, replicas)

    def get_client(self, write: bool = True, tried: object = None, show_index: bool = False) -> Any:
        """``tried`` is django-redis's (servers that failed), not used:
        the replicas are picked from as Django's RedisCache picks them."""
        index = self._index(write)
        key = (tuple(self._servers), index, self._service,
               *(repr(self._options[name]) for name in CONNECTION_OPTIONS))
        client = _clients.get(key, lambda: _build(self._servers, self._options, index, self._service))
        return (client, index) if show_index else client

