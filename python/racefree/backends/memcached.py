"""Pooled, thread-safe memcached backend.

A drop-in for Django's ``PyMemcacheCache`` and ``PyLibMCCache``: the same
LOCATION forms, timeouts and key rules, and the same key→server mapping
and value flags as ``PyMemcacheCache``, so both can share a cluster. One
connection pool per process and configuration, shared by every backend
instance and thread; a connection is reused only after a complete
exchange, so a timed-out or failed call can never hand its reply to a
later one.
"""

import asyncio
import functools
import logging
import math
import re
import time
import unicodedata
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

from racefree._core import MemcachedClient
from racefree._keys import memcached_key_error
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
    store_settings,
)
from racefree.backends._stampede import MISSING, _gave_back, _giving_back, stampede_options, wakeups
from racefree.backends._tls import tls_settings
from racefree.backends.base import ProcessRegistry, RacefreeCache, ServerPools, is_forever
from racefree.exceptions import CacheError
from racefree.serialization import serializer_options

logger = logging.getLogger("racefree")

# Memcached reads expiry times above 30 days as Unix timestamps.
MAX_RELATIVE_TTL = 60 * 60 * 24 * 30
# memcached keeps an absolute expiry in a signed 32-bit number.
MAX_EXPIRY = 2**31 - 1

#: First and longest pause between the re-reads of a get_or_set caller
#: waiting for another's value. A re-read is one small round trip, so the
#: wait stays short: a waiter gets the value at most LONGEST_POLL after it
#: is stored (benchmarks/stampede_bench.py measures the choice).
FIRST_POLL = 0.001
LONGEST_POLL = 0.005


def _unfit(c: str) -> bool:
    # The login is one line, "<user> <password>", and the authfile's
    # "user:password": memcached (1.6.18) matches no password with a space
    # in it, and a line break would end the line.
    return c.isspace() or unicodedata.category(c) == "Cc"


def username(value: object) -> str:
    if not isinstance(value, str) or not value or any(_unfit(c) or c == ":" for c in value):
        raise ValueError("a non-empty str without spaces, control characters or ':'")
    return value


def password(value: object) -> str:
    if not isinstance(value, str) or not value or any(_unfit(c) for c in value):
        raise ValueError("a non-empty str without spaces or control characters")
    return value


OPTIONS = [
    Option("CONNECT_TIMEOUT", 1.0, positive_number, aliases=("connect_timeout",), store=True),
    Option("IO_TIMEOUT", 1.0, positive_number, aliases=("timeout",), store=True),
    Option("POOL_SIZE", 32, non_negative_int, aliases=("max_pool_size",), store=True),
    Option("MAX_CONNECTIONS", None, optional(positive_int), store=True),
    Option("IDLE_TIMEOUT", 60.0, positive_number, aliases=("pool_idle_timeout",), store=True),
    Option("SPIN_WAIT", 0.00005, non_negative_number, store=True),
    Option("COMBINE_GETS", False, boolean, store=True),
    # pymemcache's tls_context: Django's PyMemcacheCache passes an ssl.SSLContext.
    Option("TLS", None, tls_settings, aliases=("tls_context",), store=True, secret=True),
    Option("USERNAME", None, optional(username), store=True),
    Option("PASSWORD", None, optional(password), store=True, secret=True),
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


def _frozen(value: Any) -> Any:
    """``value`` with its dicts (sorted) and lists as tuples, so that a
    configuration, TLS settings included, can key the registry of clients."""
    if isinstance(value, dict):
        return tuple(sorted((key, _frozen(item)) for key, item in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    return value


@with_async_twins
class MemcachedCache(ServerPools, RacefreeCache, BaseCache):
    options_spec = OPTIONS
    refused_options = UNSUPPORTED
    _claim: Callable[[str, int, int | None], Any]
    # The store refuses invalid keys itself, before anything is sent.
    checks_keys_natively = True
    server_kind = "memcached"
    client_class = MemcachedClient
    login_hint = "Set OPTIONS USERNAME and PASSWORD to a user of the server's authfile (memcached -Y)."

    def __init__(self, server: str | Sequence[str], params: dict[str, Any]) -> None:
        options = self._configure(params)
        super().__init__(params)
        # The server keeps expiry (TTLs, on its own clock) and evicts by itself.
        self._write_args = self.get_backend_timeout
        self._servers = split_location(server)
        self._options = options
        path = f"{type(self).__module__}.{type(self).__qualname__}"
        if (options["USERNAME"] is None) != (options["PASSWORD"] is None):
            raise ImproperlyConfigured(f"{path}: OPTIONS['USERNAME'] and OPTIONS['PASSWORD'] go together")
        # get_or_set's placeholder (and an invalidated value) lives a lease.
        self._placeholder_ttl = self.lock_entry_timeout(self._stampede.lease)
        self._refreshes_early = bool(self._stampede.early_refresh)
        config = store_settings(options, OPTIONS)
        try:
            self._client = self._store = _clients.get(
                (tuple(self._servers), *_frozen(config)),
                lambda: MemcachedClient(self._servers, config),
            )
        except ValueError as exc:
            raise ImproperlyConfigured(f"{path}: {exc}") from None
        # get_or_set's read, bound once: a call through a Python method
        # costs a hit more than 1%. (Awaited, it is ``a_claim``.)
        self._claim = self._client.claim

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

    @store_operation
    def get_or_set(
        self, key: Any, default: Any | None, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        """Django's get_or_set, stampede-safe in memcached's own meta
        protocol: one ``mg`` reads the value, or on a miss leaves a
        placeholder (for LOCK_LEASE) and tells exactly one caller to compute
        (``W``); the others re-read until its value is there. An
        invalidated value, or with EARLY_REFRESH one close to expiry, is
        served to everyone while one caller recomputes it. A hit is one
        round trip. If the computation raises, its caller gets the
        exception and the turn passes to the next caller at once."""
        if not callable(default):
            # Django's: a value given outright is added, never waited for.
            value = yield self.get, (key, MISSING, version)
            if value is not MISSING:
                return value
            yield self.add, (key, default, timeout, version)
            return (yield self.get, (key, default, version))
        made = self._key(key, version)
        recache = self._recache_below(timeout) if self._refreshes_early else None
        deadline = 0.0
        while True:
            try:
                item, turn = yield self._claim, (made, self._placeholder_ttl, recache)
            except CacheError as error:
                # Only with IGNORE_EXCEPTIONS: compute, as Django would.
                self._server_failed("get_or_set", error)
                return default()
            if turn is None:
                # A hit (also of an invalidated value, or of one another
                # caller refreshes): serve it.
                value = self._decode_or(MISSING, made, item)
                if value is not MISSING:
                    return value
                # Unreadable (logged): a miss that no one else computes.
                return (yield self._computed, (key, made, default, timeout, version, None, None))
            if turn[0]:
                return (yield self._computed, (key, made, default, timeout, version, item, turn))
            # Another caller computes it: read again shortly.
            if not deadline:
                deadline = time.monotonic() + self._stampede.wait
                pause = FIRST_POLL
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning("get_or_set %r: waited %ss for another caller's value; computing", key,
                               self._stampede.wait)
                return (yield self._computed, (key, made, default, timeout, version, None, None))
            # Until the next poll, or until the caller computing it in this process stored it.
            yield wakeups.sleep, (made, min(pause, left))
            pause = min(pause * 2, LONGEST_POLL)

    async def a_claim(self, key: str, vivify: int, recache: int | None) -> Any:
        """The claim, awaited. If the caller is cancelled while it is in
        flight, a win it brings is given back at once: otherwise every other
        caller of the key would wait out the lease for a computation that
        will never come."""
        claiming = asyncio.ensure_future(self._store.aclaim(key, vivify, recache))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            claiming.add_done_callback(functools.partial(self._give_back_unused, key))
            raise

    def _give_back_unused(self, key: str, claiming: "asyncio.Future[Any]") -> None:
        if claiming.cancelled() or claiming.exception() is not None:
            return
        item, turn = claiming.result()
        if turn is not None and turn[0]:
            _, stale, cas, ttl = turn
            giving = asyncio.ensure_future(self._store.agive_back(key, cas, item, stale, ttl))
            _giving_back.add(giving)
            giving.add_done_callback(_gave_back)

    def _recache_below(self, timeout: float | None) -> int | None:
        """With EARLY_REFRESH, the ``R`` of get_or_set's ``mg``: the
        remaining TTL, in memcached's whole seconds, below which one caller
        refreshes. memcached counts a TTL down on a clock that ticks once a
        second, so one more second keeps a refresh from starting late (it
        may start up to a second early), and a refresh never starts as soon
        as the value is stored."""
        window = self._refresh_window(timeout)
        if not window:
            return None
        below = math.ceil(window) + 1
        ttl = self.get_backend_timeout(timeout)
        if ttl <= MAX_RELATIVE_TTL:
            below = min(below, ttl - 1)
        return below if below >= 1 else None

    @store_operation
    def _computed(
        self,
        key: Any,
        made: str,
        default: Callable[[], Any],
        timeout: float | None,
        version: int | None,
        item: tuple[int, bytes] | None,
        turn: tuple[bool, bool, int, int] | None,
    ) -> Generator[Any, Any, Any]:
        """The value ``default()`` computes, stored (which replaces the
        placeholder or stale item). If it raises, a ``turn`` won with
        ``item`` is given back, so that the next caller computes instead of
        waiting out the lease, and stale readers keep their old value
        meanwhile."""
        try:
            try:
                value = default()
            except BaseException:
                if turn is not None:
                    _, stale, cas, ttl = turn
                    try:
                        yield self._store.give_back, (made, cas, item, stale, ttl)
                    except CacheError as error:
                        logger.warning("get_or_set %r: the computation failed and its turn could not be given "
                                       "back (%s); the next caller computes after LOCK_LEASE", key, error)
                raise
            yield self.set, (key, value, timeout, version)
        finally:
            # This process's waiters read again at once: the value, or the turn given back.
            wakeups.wake(made)
        return value

    @store_operation
    def invalidate(self, key: Any, version: int | None = None) -> Generator[Any, Any, bool]:
        """Mark the value outdated without deleting it (memcached's
        ``md … I``): plain reads (get, get_many, has_key) miss it at once,
        add stores over it, and get_or_set serves it to every caller while
        exactly one recomputes it. It is served so for at most LOCK_LEASE
        seconds. True if the key was there."""
        key = self._key(key, version)
        try:
            invalidated: bool = yield self._store.invalidate, (key, self._placeholder_ttl)
        except CacheError as error:
            self._server_failed("invalidate", error)
            return False
        return invalidated

    def validate_key(self, key: str) -> None:
        error = memcached_key_error(key)
        if error is not None:
            raise error
