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
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

from racefree._core import MemcachedClient
from racefree._keys import memcached_key_error
from racefree.backends._options import (
    Option,
    boolean,
    must_be_true,
    non_negative_int,
    non_negative_number,
    optional,
    positive_int,
    positive_number,
    store_settings,
)
from racefree.backends._stampede import stampede_options
from racefree.backends.base import ProcessRegistry, RacefreeCache, is_forever
from racefree.checks import PROBE_TIMEOUT, unreachable
from racefree.exceptions import CacheError
from racefree.serialization import serializer_options

if TYPE_CHECKING:
    from django.core.checks import CheckMessage

# Memcached reads expiry times above 30 days as Unix timestamps.
MAX_RELATIVE_TTL = 60 * 60 * 24 * 30
# memcached keeps an absolute expiry in a signed 32-bit number.
MAX_EXPIRY = 2**31 - 1


OPTIONS = [
    Option("CONNECT_TIMEOUT", 1.0, positive_number, aliases=("connect_timeout",), store=True),
    Option("IO_TIMEOUT", 1.0, positive_number, aliases=("timeout",), store=True),
    Option("POOL_SIZE", 32, non_negative_int, aliases=("max_pool_size",), store=True),
    Option("MAX_CONNECTIONS", None, optional(positive_int), store=True),
    Option("IDLE_TIMEOUT", 60.0, positive_number, aliases=("pool_idle_timeout",), store=True),
    Option("SPIN_WAIT", 0.00005, non_negative_number, store=True),
    Option("COMBINE_GETS", False, boolean, store=True),
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

_clients: ProcessRegistry[tuple[object, ...], MemcachedClient] = ProcessRegistry()


def split_location(location: str | Iterable[str]) -> list[str]:
    """LOCATION as a list of servers: a list, or a ``;``/``,``-separated string."""
    if isinstance(location, str):
        return re.split("[;,]", location)
    return list(location)


class MemcachedCache(RacefreeCache, BaseCache):
    options_spec = OPTIONS
    refused_options = UNSUPPORTED
    # The store refuses invalid keys itself, before anything is sent.
    checks_keys_natively = True
    server_kind = "memcached"

    def __init__(self, server: str | Sequence[str], params: dict[str, Any]) -> None:
        options = self._configure(params)
        super().__init__(params)
        # The server keeps expiry (TTLs, on its own clock) and evicts by itself.
        self._write_args = self.get_backend_timeout
        self._servers = split_location(server)
        self._options = options
        config = store_settings(options, OPTIONS)
        try:
            self._client = self._store = _clients.get(
                (tuple(self._servers), *sorted(config.items())), lambda: MemcachedClient(self._servers, config)
            )
        except ValueError as exc:
            raise ImproperlyConfigured(f"{type(self).__module__}.{type(self).__qualname__}: {exc}") from None

    @property
    def client_servers(self) -> list[str]:
        return self._servers

    def get_backend_timeout(self, timeout: float | None = DEFAULT_TIMEOUT) -> int:
        """Memcached's expiry: 0 for never, -1 for already expired, and
        an absolute timestamp beyond 30 days."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None or is_forever(timeout):
            return 0
        # Under a second (once truncated) is already expired; so is -inf.
        if timeout < 1:
            return -1
        timeout = int(timeout)
        if timeout > MAX_RELATIVE_TTL:
            timeout += int(time.time())
            # Beyond memcached's 32-bit expiry (the year 2038): never, as
            # Django's other backends treat such a timeout.
            if timeout > MAX_EXPIRY:
                return 0
        return timeout

    def lock_entry_timeout(self, lease: float) -> int:
        # Memcached's clock ticks in whole seconds: a TTL of n ends within
        # (n - 1, n] seconds, so one more keeps a lock at least its lease.
        return math.ceil(lease) + 1

    def validate_key(self, key: str) -> None:
        error = memcached_key_error(key)
        if error is not None:
            raise error

    def system_checks(self, alias: str) -> "list[CheckMessage]":
        """racefree.W001 for each server that does not answer now."""
        probe = {**store_settings(self._options, OPTIONS), "connect_timeout": PROBE_TIMEOUT,
                 "io_timeout": PROBE_TIMEOUT, "pool_size": 0}
        messages: list[CheckMessage] = []
        for server in self._servers:
            try:
                MemcachedClient([server], probe).has_key("racefree:check")
            except CacheError as error:
                messages.append(unreachable(alias, f"memcached server {server!r}", error, "racefree.W001"))
        return messages

    def stats(self) -> dict[str, Any]:
        """This process's counters for this LOCATION and OPTIONS (every
        backend object and thread shares them): hits, misses, sets,
        deletes, errors, the pool size, and per server its idle and
        in-use connections."""
        return self._client.stats()
