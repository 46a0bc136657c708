"""Pooled, thread-safe memcached backend.

A drop-in for Django's ``PyMemcacheCache`` and ``PyLibMCCache``: the same
LOCATION forms, timeouts and key rules, and the same key→server mapping
and value flags as ``PyMemcacheCache``, so both can share a cluster. One
connection pool per process and configuration, shared by every backend
instance and thread; a connection is reused only after a complete
exchange, so a timed-out or failed call can never hand its reply to a
later one.
"""

import math
import re
import threading
import time
from collections.abc import Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

from racefree._core import MemcachedClient
from racefree._keys import KeyMaking, memcached_key_error
from racefree.backends._failures import FailurePolicy
from racefree.backends._ops import store_operation, with_async_twins
from racefree.backends._options import (
    Option,
    boolean,
    must_be_true,
    non_negative_int,
    non_negative_number,
    optional,
    positive_int,
    positive_number,
    read_options,
)
from racefree.backends._stampede import Stampede, StampedeSafe, stampede_options
from racefree.exceptions import CacheError
from racefree.serialization import serializer_from, serializer_options

if TYPE_CHECKING:
    from django.core.checks import CheckMessage

# Memcached reads expiry times above 30 days as Unix timestamps.
MAX_RELATIVE_TTL = 60 * 60 * 24 * 30


OPTIONS = [
    Option("CONNECT_TIMEOUT", 1.0, positive_number, aliases=("connect_timeout",)),
    Option("IO_TIMEOUT", 1.0, positive_number, aliases=("timeout",)),
    Option("POOL_SIZE", 32, non_negative_int, aliases=("max_pool_size",)),
    Option("MAX_CONNECTIONS", None, optional(positive_int)),
    Option("IDLE_TIMEOUT", 60.0, positive_number, aliases=("pool_idle_timeout",)),
    Option("SPIN_WAIT", 0.00005, non_negative_number),
    Option("COMBINE_GETS", True, boolean),
    Option("IGNORE_EXCEPTIONS", False, boolean, aliases=("ignore_exc",)),
    *serializer_options(),
    *stampede_options(),
    # pymemcache spellings of what racefree always does.
    Option("no_delay", True, must_be_true),
    Option("use_pooling", True, must_be_true),
    Option("allow_unicode_keys", True, must_be_true),
]

UNSUPPORTED = {
    "MAX_ENTRIES": "memcached evicts least recently used items itself",
    "CULL_FREQUENCY": "memcached evicts least recently used items itself",
}

_clients: dict[tuple[object, ...], MemcachedClient] = {}
_clients_lock = threading.Lock()


def shared_client(servers: Iterable[str], options: dict[str, Any]) -> MemcachedClient:
    """The process-wide client for these servers and settings.

    Django builds one backend per thread (and per ``override_settings``);
    they all share one pool, so connections survive both.
    """
    settings = (
        tuple(servers),
        options["CONNECT_TIMEOUT"],
        options["IO_TIMEOUT"],
        options["POOL_SIZE"],
        options["MAX_CONNECTIONS"],
        options["IDLE_TIMEOUT"],
        options["SPIN_WAIT"],
        options["COMBINE_GETS"],
    )
    with _clients_lock:
        client = _clients.get(settings)
        if client is None:
            client = MemcachedClient(
                list(servers),
                connect_timeout=options["CONNECT_TIMEOUT"],
                io_timeout=options["IO_TIMEOUT"],
                pool_size=options["POOL_SIZE"],
                max_connections=options["MAX_CONNECTIONS"],
                idle_timeout=options["IDLE_TIMEOUT"],
                spin_wait=options["SPIN_WAIT"],
                combine_gets=options["COMBINE_GETS"],
            )
            _clients[settings] = client
        return client


def split_location(location: str | Iterable[str]) -> list[str]:
    """LOCATION as a list of servers: a list, or a ``;``/``,``-separated string."""
    if isinstance(location, str):
        return re.split("[;,]", location)
    return list(location)


@with_async_twins
class MemcachedCache(StampedeSafe, KeyMaking, FailurePolicy, BaseCache):
    # The store refuses invalid keys itself, before anything is sent.
    checks_keys_natively = True
    server_kind = "memcached"

    def __init__(self, server: str | Sequence[str], params: dict[str, Any]) -> None:
        backend = f"{type(self).__module__}.{type(self).__qualname__}"
        options = read_options(backend, params.get("OPTIONS"), OPTIONS, UNSUPPORTED)
        super().__init__(params)
        self._servers = split_location(server)
        self._options = options
        try:
            self._client = shared_client(self._servers, options)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{backend}: {exc}") from None
        self._ignore_exceptions = options["IGNORE_EXCEPTIONS"]
        self._serializer = serializer_from(backend, options)
        self._stampede = Stampede.from_options(options)
        self._init_key_making(MemcachedCache)

    @property
    def client_servers(self) -> list[str]:
        return self._servers

    def get_backend_timeout(self, timeout: float | None = DEFAULT_TIMEOUT) -> int:
        """Memcached's expiry: 0 for never, -1 for already expired, and
        an absolute timestamp beyond 30 days."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return 0
        timeout = int(timeout)
        if timeout <= 0:
            return -1
        if timeout > MAX_RELATIVE_TTL:
            timeout += int(time.time())
        return timeout

    def lock_entry_timeout(self, lease: float) -> int:
        # Memcached's clock ticks in whole seconds: a TTL of n ends within
        # (n - 1, n] seconds, so one more keeps a lock at least its lease.
        return math.ceil(lease) + 1

    def validate_key(self, key: str) -> None:
        error = memcached_key_error(key)
        if error is not None:
            raise error

    @store_operation
    def get(self, key: Any, default: Any = None, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            item = yield self._client.get, (key,)
        except CacheError as error:
            self._server_failed("get", error)
            return default
        if item is None:
            return default
        return self._serializer.decode_or(default, key, *item)

    @store_operation
    def has_key(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            return (yield self._client.has_key, (key,))
        except CacheError as error:
            self._server_failed("has_key", error)
            return False

    @store_operation
    def set(
        self, key: Any, value: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, None]:
        key = self._key(key, version)
        flags, data = self._serializer.encode(value)
        try:
            yield self._client.set, (key, flags, data, self.get_backend_timeout(timeout))
        except CacheError as error:
            self._server_failed("set", error)

    @store_operation
    def add(
        self, key: Any, value: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        flags, data = self._serializer.encode(value)
        try:
            return (yield self._client.add, (key, flags, data, self.get_backend_timeout(timeout)))
        except CacheError as error:
            self._server_failed("add", error)
            return False

    @store_operation
    def touch(
        self, key: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            return (yield self._client.touch, (key, self.get_backend_timeout(timeout)))
        except CacheError as error:
            self._server_failed("touch", error)
            return False

    @store_operation
    def delete(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            return (yield self._client.delete, (key,))
        except CacheError as error:
            self._server_failed("delete", error)
            return False

    @store_operation
    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Generator[Any, Any, Any]:
        """Memcached's atomic increment. A missing key raises ValueError;
        a value memcached cannot count with raises TypeError; as in
        memcached, decrementing stops at 0."""
        key = self._key(key, version)
        try:
            if delta < 0:
                value = yield self._client.decr, (key, -delta)
            else:
                value = yield self._client.incr, (key, delta)
        except CacheError as error:
            self._server_failed("incr", error)
            value = None
        if value is None:
            raise ValueError("Key '%s' not found" % key)
        return value

    @store_operation
    def get_many(self, keys: Iterable[Any], version: int | None = None) -> Generator[Any, Any, dict[Any, Any]]:
        key_map = {self._key(key, version): key for key in keys}
        if not key_map:
            return {}
        try:
            found = yield self._client.get_many, (list(key_map),)
        except CacheError as error:
            self._server_failed("get_many", error)
            found = getattr(error, "partial", {})
        return self._serializer.decode_found(found, key_map)

    @store_operation
    def set_many(
        self, data: dict[Any, Any], timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, list[Any]]:
        original_keys: dict[str, Any] = {}
        items: list[tuple[str, int, bytes]] = []
        for key, value in data.items():
            made = self._key(key, version)
            original_keys[made] = key
            items.append((made, *self._serializer.encode(value)))
        if not items:
            return []
        try:
            failed = yield self._client.set_many, (items, self.get_backend_timeout(timeout))
        except CacheError as error:
            self._server_failed("set_many", error)
            failed = getattr(error, "failed_keys", list(original_keys))
        return [original_keys[key] for key in failed]

    @store_operation
    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> Generator[Any, Any, None]:
        keys = [self._key(key, version) for key in keys]
        if not keys:
            return
        try:
            yield self._client.delete_many, (keys,)
        except CacheError as error:
            self._server_failed("delete_many", error)

    @store_operation
    def clear(self) -> Generator[Any, Any, None]:
        """Empty every server of LOCATION (memcached ``flush_all``)."""
        try:
            yield self._client.flush_all, ()
        except CacheError as error:
            self._server_failed("clear", error)


    def system_checks(self, alias: str) -> "list[CheckMessage]":
        """racefree.W001 for each server that does not answer now."""
        from racefree.checks import memcached_reachable

        return memcached_reachable(alias, self._servers, MemcachedClient)

    def stats(self) -> dict[str, Any]:
        """This process's counters for this LOCATION and OPTIONS (every
        backend object and thread shares them): hits, misses, sets,
        deletes, errors, the pool size, and per server its idle and
        in-use connections."""
        return self._client.stats()

    def close(self, **kwargs: Any) -> None:
        """Keep the pooled connections: Django calls this after every
        request, and reconnecting each time is what makes the stock
        pymemcache backend slow. Pools are per process and thread-safe."""

    async def aclose(self, **kwargs: Any) -> None:
        """See close() (native: Django 6's default would run close() in a thread)."""
