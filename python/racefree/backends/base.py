"""What every racefree backend shares, as Django's ``backends/base.py`` is
for Django's: reading OPTIONS, the serializer, get_or_set and lock
settings, key rules, the failure policy, one store per process and
configuration, and Django's cache operations themselves.

The operations are written once, here, against a store of the Rust
extension (``racefree._core``). Every store takes the same calls, each
also as an awaitable ``a``-twin:

- ``get(key)`` -> item or None; ``get_many(keys)`` -> ``{key: item}``
- ``has_key(key)``, ``delete(key)`` -> bool
- ``set(key, item, write)``; ``add(key, item, write)``, ``touch(key, write)`` -> bool
- ``set_many([(key, item), ...], write)`` -> keys not stored
- ``incr(key, delta)`` -> new value, or None if missing
- ``delete_many(keys)``, ``clear()``

An item is what ``_encode`` makes of a value (``(flags, bytes)``, or the
bytes alone for the PostgreSQL store), and ``write`` what ``_write_args``
makes of a timeout: memcached's TTL (its server keeps expiry and evicts),
or ``(expiry, MAX_ENTRIES, CULL_FREQUENCY)`` for the stores that keep
expiry and cull themselves (file, PostgreSQL; they read Python's
``time.time()`` as their clock). A backend supplies the store and, where
they differ, those two and ``_decode_or``. Nothing here is unpacked with
``*``: a starred call costs a few hundred instructions per operation.
"""

import functools
import logging
import math
import os
import threading
from collections.abc import Callable, Generator, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from racefree._keys import KeyMaking
from racefree.backends._failures import FailurePolicy
from racefree.backends._ops import store_operation, with_async_twins
from racefree.backends._options import Option, read_options, store_settings
from racefree.backends._stampede import MISSING, Stampede, StampedeSafe
from racefree.checks import PROBE_TIMEOUT, probe_servers
from racefree.exceptions import CacheError
from racefree.serialization import UnverifiedValue, serializer_from

logger = logging.getLogger("racefree")

if TYPE_CHECKING:
    from django.core.cache.backends.base import BaseCache as _CacheBase
    from django.core.checks import CheckMessage
else:
    _CacheBase = object

_Key = TypeVar("_Key", bound=Hashable)
_Shared = TypeVar("_Shared")


class ProcessRegistry(Generic[_Key, _Shared]):
    """One object per configuration and process, built on first use and
    shared by every backend instance and thread: Django builds a backend
    per thread and per ``override_settings``, and they must share one pool
    (or count, or forwarding state)."""

    def __init__(self) -> None:
        self._items: dict[_Key, _Shared] = {}
        self._lock = threading.Lock()
        # A child forked while another thread held the lock must not
        # inherit it locked.
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def get(self, key: _Key, build: Callable[[], _Shared]) -> _Shared:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = build()
            return item

    def values(self) -> list[_Shared]:
        with self._lock:
            return list(self._items.values())


def backend_path(backend: object) -> str:
    """The dotted path of a backend's class, as in CACHES (for messages)."""
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def is_forever(timeout: float) -> bool:
    """Whether a timeout (or an expiry made from one) that is not None
    means "never expires", as inf does in Django. ValueError for NaN, which
    Django's backends each treat differently."""
    if timeout == math.inf:
        return True
    if timeout != timeout:
        raise ValueError("a cache timeout is a number of seconds or None, not NaN")
    return False


@with_async_twins
class RacefreeCache(StampedeSafe, KeyMaking, FailurePolicy, _CacheBase):
    """Mixin for a ``BaseCache`` subclass: put it first in the bases."""

    #: The OPTIONS this backend takes, and those it refuses with a reason.
    options_spec: ClassVar[Sequence[Option]] = ()
    refused_options: ClassVar[dict[str, str]] = {}

    _store: Any
    #: (key, value) -> item; (default, key, item) -> the value, or default if it
    #: cannot be loaded; timeout -> what a write tells the store beside key
    #: and item. Bound per instance (no extra frame per call).
    _encode: Callable[[str, Any], Any]
    _decode_or: Callable[[Any, Any, Any], Any]
    _write_args: Callable[[float | None], Any]

    def _configure(self, params: dict[str, Any]) -> dict[str, Any]:
        """Read OPTIONS (``ImproperlyConfigured`` for anything unknown or of
        the wrong type) and set up what they say for every backend: the
        serializer, get_or_set and lock settings, IGNORE_EXCEPTIONS, key
        rules. Returns the options, defaults filled in."""
        path = backend_path(self)
        options = read_options(path, params.get("OPTIONS"), self.options_spec, self.refused_options)
        self._serializer = serializer_from(path, options)
        self._encode = self._serializer.encode
        self._decode_or = self._serializer.decode_item_or
        self._write_args = self._expiry_and_limits
        # incr: the store counts (digits it adds to), or it reads, adds and
        # writes back (see incr); a backend whose store keeps bytes alone
        # says so.
        self._counts_natively = not self._serializer.signs
        self._items_have_flags = True
        self._stampede = Stampede.from_options(options)
        self._ignore_exceptions = options.get("IGNORE_EXCEPTIONS", False)
        # Key rules are racefree's own unless a subclass elsewhere has its own.
        own = next(cls for cls in type(self).__mro__ if cls.__module__.startswith("racefree."))
        self._init_key_making(own)
        return options

    def _expiry_and_limits(self, timeout: float | None) -> tuple[float, int, int]:
        """The write argument of a store that keeps expiry and culls
        itself: the expiry in Unix seconds (0.0: never), MAX_ENTRIES and
        CULL_FREQUENCY, read at every write (Django's tests change them at
        run time)."""
        expires = self.get_backend_timeout(timeout)
        if expires is None or is_forever(expires):
            # 0.0 is "never" to the stores.
            return 0.0, self._max_entries, self._cull_frequency
        # A past expiry must stay distinguishable from "never".
        return max(expires, 1e-6), self._max_entries, self._cull_frequency

    def close(self, **kwargs: Any) -> None:
        """Keep the store: Django calls this after every request, and the
        store (its pool, its mapped count) is per process and thread-safe."""

    async def aclose(self, **kwargs: Any) -> None:
        """See close() (native: Django 6's default would run close() in a thread)."""

    @store_operation
    def get(self, key: Any, default: Any = None, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            item = yield self._store.get, (key,)
        except CacheError as error:
            self._server_failed("get", error)
            return default
        return default if item is None else self._decode_or(default, key, item)

    @store_operation
    def has_key(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            return (yield self._store.has_key, (key,))
        except CacheError as error:
            self._server_failed("has_key", error)
            return False

    @store_operation
    def set(
        self, key: Any, value: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, None]:
        key = self._key(key, version)
        try:
            yield self._store.set, (key, self._encode(key, value), self._write_args(timeout))
        except CacheError as error:
            self._server_failed("set", error)

    @store_operation
    def add(
        self, key: Any, value: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            return (yield self._store.add, (key, self._encode(key, value), self._write_args(timeout)))
        except CacheError as error:
            self._server_failed("add", error)
            return False

    @store_operation
    def touch(
        self, key: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            return (yield self._store.touch, (key, self._write_args(timeout)))
        except CacheError as error:
            self._server_failed("touch", error)
            return False

    @store_operation
    def delete(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            return (yield self._store.delete, (key,))
        except CacheError as error:
            self._server_failed("delete", error)
            return False

    @store_operation
    def _delete_if(self, key: Any, value: Any, version: int | None = None) -> Generator[Any, Any, bool]:
        """Delete ``key`` only while it holds exactly ``value``, atomically
        (a lock's release: never the next holder's). Failures raise."""
        key = self._key(key, version)
        deleted: bool = yield self._store.delete_if, (key, self._encode(key, value))
        return deleted

    @store_operation
    def _touch_if(
        self, key: Any, value: Any, timeout: float | None, version: int | None = None
    ) -> Generator[Any, Any, bool]:
        """Give ``key`` the expiry ``timeout`` only while it holds exactly
        ``value``, atomically (a lock's extension: never the next
        holder's). Failures raise."""
        key = self._key(key, version)
        touched: bool = yield self._store.touch_if, (key, self._encode(key, value), self._write_args(timeout))
        return touched

    @store_operation
    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Generator[Any, Any, Any]:
        """Atomic across threads, processes (and hosts, on a server); keeps
        the key's expiry. A missing key raises ValueError, a value the store
        cannot count with TypeError."""
        key = self._key(key, version)
        try:
            if self._counts_natively:
                value = yield self._store.incr, (key, delta)
            elif self._items_have_flags:
                # Not digits the store can count with (a signed counter):
                # read, verify, add and sign it again in one atomic update.
                item = yield self._store.update, (key, functools.partial(self._serializer.incremented, key, delta))
                value = None if item is None else self._serializer.decode(key, *item)
            else:
                # A store of the serializer's bytes alone (PostgreSQL;
                # Redis with JSON or signatures): the same, on bytes.
                added: list[Any] = []
                change = functools.partial(self._added_to_bytes, key, delta, added)
                value = None if (yield self._store.update, (key, change)) is None else added[-1]
        except UnverifiedValue:
            logger.warning("cannot load the cached value of %r; incr treats it as missing", key)
            value = None
        except CacheError as error:
            self._server_failed("incr", error)
            value = None
        if value is None:
            raise ValueError("Key '%s' not found" % key)
        return value

    def _added_to_bytes(self, key: str, delta: int, added: list[Any], data: bytes) -> bytes:
        """``incr``'s change of a stored value in bytes: the value plus
        ``delta`` (kept in ``added``), serialized. A value that cannot be
        added to raises as in Django's ``BaseCache.incr`` (TypeError)."""
        added.append(self._serializer.loads(key, data) + delta)
        return self._serializer.dumps(key, added[-1])

    @store_operation
    def get_many(self, keys: Iterable[Any], version: int | None = None) -> Generator[Any, Any, dict[Any, Any]]:
        keys = list(keys)
        key_map = dict(zip(self._keys(keys, version), keys))
        if not key_map:
            return {}
        try:
            found = yield self._store.get_many, (list(key_map),)
        except CacheError as error:
            self._server_failed("get_many", error)
            # What the servers that answered returned, where there are several.
            found = getattr(error, "partial", {})
        result: dict[Any, Any] = {}
        for key, item in found.items():
            value = self._decode_or(MISSING, key, item)
            if value is not MISSING:
                result[key_map[key]] = value
        return result

    @store_operation
    def set_many(
        self, data: dict[Any, Any], timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, list[Any]]:
        encode = self._encode
        made_keys = self._keys(data, version)
        original = dict(zip(made_keys, data))
        items = [(made, encode(made, value)) for made, value in zip(made_keys, data.values())]
        if not items:
            return []
        try:
            failed = yield self._store.set_many, (items, self._write_args(timeout))
        except CacheError as error:
            self._server_failed("set_many", error)
            failed = getattr(error, "failed_keys", original)
        return [original[key] for key in failed]

    @store_operation
    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> Generator[Any, Any, None]:
        keys = self._keys(keys, version)
        if not keys:
            return
        try:
            yield self._store.delete_many, (keys,)
        except CacheError as error:
            self._server_failed("delete_many", error)

    @store_operation
    def clear(self) -> Generator[Any, Any, None]:
        try:
            yield self._store.clear, ()
        except CacheError as error:
            self._server_failed("clear", error)


class ServerPools(_CacheBase):
    """Mixin for a backend of network servers, each with a pool of its own
    (memcached, Redis): its system checks and stats. The backend sets
    ``_servers``, ``_options`` and ``_store``, and says which client class
    a probe builds and what to do about a refused login."""

    #: Built as ``client_class([server], settings)``.
    client_class: ClassVar[type[Any]]
    login_hint: ClassVar[str]
    server_kind: str
    options_spec: ClassVar[Sequence[Option]]
    _servers: list[str]
    _options: dict[str, Any]
    _store: Any

    def system_checks(self, alias: str) -> "list[CheckMessage]":
        """racefree.W001 for each server that does not answer now (or
        refuses this client's TLS or login)."""
        probe = {**self._store_settings(), "connect_timeout": PROBE_TIMEOUT, "io_timeout": PROBE_TIMEOUT,
                 "pool_size": 0}

        def answer(server: str) -> object:
            return self._probe(type(self).client_class([server], probe))

        return probe_servers(alias, self._servers, answer, self.server_kind, self.login_hint)

    def _store_settings(self) -> dict[str, Any]:
        """The settings the store was built with."""
        return store_settings(self._options, self.options_spec)

    def _probe(self, client: Any) -> object:
        """One call that only an answering server answers."""
        return client.has_key("racefree:check")

    def stats(self) -> dict[str, Any]:
        """This process's counters for this LOCATION and OPTIONS (every
        backend object and thread shares them): hits, misses, sets,
        deletes, errors, the pool size, and per server (for a Redis Cluster:
        per node this process talked to) its idle and in-use connections."""
        stats: dict[str, Any] = self._store.stats()
        return stats
