"""PostgreSQL cache that stays correct under any number of workers.

A drop-in for Django's ``DatabaseCache`` on PostgreSQL: the same table
(``createcachetable`` creates it), columns and value encoding, so entries
are shared with Django's backend and switching keeps the cache warm.
Unlike the stock backend, concurrent ``set``s of a new key cannot raise
``IntegrityError`` (an upsert), ``add`` has exactly one winner, ``incr``
and ``decr`` lose no update (advisory and row locks), batches are one
round trip, and the table is not counted on every write.
"""

import os
import threading
import time
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.db import BaseDatabaseCache
from django.core.exceptions import ImproperlyConfigured

from racefree._core import PgStore
from racefree._keys import KeyMaking
from racefree.backends._failures import FailurePolicy
from racefree.backends._ops import store_operation, with_async_twins
from racefree.backends._options import (
    Option,
    boolean,
    non_negative_int,
    optional,
    positive_int,
    positive_number,
    read_options,
)
from racefree.backends._stampede import Stampede, StampedeSafe, stampede_options
from racefree.exceptions import CacheError
from racefree.serialization import UnverifiedValue, logger, serializer_from, serializer_options

if TYPE_CHECKING:
    from django.core.checks import CheckMessage


def text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string")
    return value


OPTIONS = [
    Option("MAX_ENTRIES", 300, positive_int),
    Option("CULL_FREQUENCY", 3, non_negative_int),
    Option("DATABASE", None, optional(text)),
    Option("DSN", None, optional(text)),
    Option("POOL_SIZE", 10, positive_int),
    Option("CONNECT_TIMEOUT", 5.0, positive_number),
    Option("STATEMENT_TIMEOUT", 5.0, optional(positive_number)),
    Option("IGNORE_EXCEPTIONS", False, boolean),
    *serializer_options(),
    *stampede_options(),
]

# Django DATABASES OPTIONS that only concern Django's own connection.
DJANGO_ONLY_OPTIONS = {"pool", "server_side_binding", "isolation_level", "assume_role", "client_encoding"}
# libpq settings racefree passes on to its own connections.
LIBPQ_OPTIONS = {"options", "application_name"}

_stores: dict[tuple[str, tuple[tuple[str, str], ...], str | None, int, float, float | None], PgStore] = {}
_stores_lock = threading.Lock()


class NotPostgreSQL(ImproperlyConfigured):
    """The database cache was pointed at a database that is not PostgreSQL."""


def libpq_params(alias: str) -> dict[str, str]:
    """Connection parameters of ``DATABASES[alias]``, which must be
    PostgreSQL; ``ImproperlyConfigured`` otherwise."""
    from django.db import connections

    if alias not in connections:
        raise ImproperlyConfigured(f"racefree DatabaseCache: DATABASES has no {alias!r} entry")
    connection = connections[alias]
    if connection.vendor != "postgresql":
        raise NotPostgreSQL(
            f"racefree DatabaseCache needs PostgreSQL, but DATABASES[{alias!r}] uses "
            f"{connection.settings_dict['ENGINE']!r}; point OPTIONS['DATABASE'] at a PostgreSQL "
            "alias or give OPTIONS['DSN']"
        )
    settings = connection.settings_dict
    params: dict[str, str] = {}
    host = settings.get("HOST") or (
        "/var/run/postgresql" if os.path.isdir("/var/run/postgresql") else "localhost"
    )
    params["host"] = host
    for name, key in (("port", "PORT"), ("user", "USER"), ("password", "PASSWORD"), ("dbname", "NAME")):
        if settings.get(key):
            params[name] = str(settings[key])
    for name, value in (settings.get("OPTIONS") or {}).items():
        if name in DJANGO_ONLY_OPTIONS:
            continue
        if name in LIBPQ_OPTIONS:
            params[name] = str(value)
        elif name == "sslmode" and value in ("disable", "allow", "prefer"):
            continue
        else:
            raise ImproperlyConfigured(
                f"racefree DatabaseCache cannot use DATABASES[{alias!r}]['OPTIONS'][{name!r}] "
                "(TLS and other libpq settings are not supported yet); give OPTIONS['DSN']"
            )
    return params


def shared_store(table: str, params: dict[str, str], dsn: str | None, options: dict[str, Any]) -> PgStore:
    """One pool per process and settings, shared by every backend instance."""
    key = (
        table,
        tuple(sorted(params.items())),
        dsn,
        options["POOL_SIZE"],
        options["CONNECT_TIMEOUT"],
        options["STATEMENT_TIMEOUT"],
    )
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            try:
                store = PgStore(
                    table,
                    params,
                    dsn=dsn,
                    pool_size=options["POOL_SIZE"],
                    connect_timeout=options["CONNECT_TIMEOUT"],
                    statement_timeout=options["STATEMENT_TIMEOUT"],
                )
            except ValueError as exc:
                raise ImproperlyConfigured(f"racefree DatabaseCache: {exc}") from None
            _stores[key] = store
            _close_before_test_databases_drop()
        return store


def close_pools() -> None:
    """Close every pooled connection of this process (they reopen on
    demand), e.g. before the database they point at is dropped."""
    with _stores_lock:
        for store in _stores.values():
            store.close_idle()


_patched = False


def _close_before_test_databases_drop() -> None:
    """Django's test runner drops the test database at the end, which
    PostgreSQL refuses while other sessions (this pool's) are connected."""
    global _patched
    if _patched:
        return
    _patched = True
    try:
        from django.db.backends.postgresql.creation import DatabaseCreation
    except ImportError:  # psycopg missing: Django cannot use PostgreSQL either
        return
    destroy = DatabaseCreation._destroy_test_db  # type: ignore[attr-defined]

    def destroy_after_closing_pools(self: DatabaseCreation, *args: Any, **kwargs: Any) -> Any:
        close_pools()
        return destroy(self, *args, **kwargs)

    DatabaseCreation._destroy_test_db = destroy_after_closing_pools  # type: ignore[attr-defined]


@with_async_twins
class DatabaseCache(StampedeSafe, KeyMaking, FailurePolicy, BaseDatabaseCache):
    server_kind = "PostgreSQL cache"
    _table: str  # set by BaseDatabaseCache.__init__

    def __init__(self, table: str, params: dict[str, Any]) -> None:
        backend = f"{type(self).__module__}.{type(self).__qualname__}"
        options = read_options(backend, params.get("OPTIONS"), OPTIONS)
        super().__init__(table, params)
        self._options = options
        self._ignore_exceptions = options["IGNORE_EXCEPTIONS"]
        self._serializer = serializer_from(backend, options)
        self._stampede = Stampede.from_options(options)
        self._init_key_making(DatabaseCache)
        if options["DSN"]:
            params_for_store: dict[str, str] = {}
        else:
            from django.db import router

            alias = options["DATABASE"] or router.db_for_write(self.cache_model_class)
            params_for_store = libpq_params(alias)
        self._store = shared_store(self._table, params_for_store, options["DSN"], options)

    def system_checks(self, alias: str) -> "list[CheckMessage]":
        """racefree.E003 for a missing table, W002 for a server that does
        not answer now."""
        from racefree.checks import database_reachable

        return database_reachable(alias, self)

    def stats(self) -> dict[str, int]:
        """This process's counters for this table and connection settings
        (hits, misses, sets, deletes, errors, round_trips) and its pool
        (pool_size, connections, idle, in_use, connects)."""
        return self._store.stats()

    def close(self, **kwargs: Any) -> None:
        """Keep the pooled connections: Django calls this after every
        request, and the pool is per process and thread-safe."""

    async def aclose(self, **kwargs: Any) -> None:
        """See close() (native: Django 6's default would run close() in a thread)."""

    def _expiry(self, timeout: float | None) -> float:
        """Absolute expiry in Unix seconds; 0.0 means never."""
        expires = self.get_backend_timeout(timeout)
        return 0.0 if expires is None else max(expires, 1e-6)

    @store_operation
    def get(self, key: Any, default: Any = None, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            data = yield self._store.get, (key, time.time())
        except CacheError as error:
            self._server_failed("get", error)
            return default
        return default if data is None else self._serializer.load_or(default, key, data)

    @store_operation
    def get_many(self, keys: Iterable[Any], version: int | None = None) -> Generator[Any, Any, dict[Any, Any]]:
        key_map = {self._key(key, version): key for key in keys}
        if not key_map:
            return {}
        try:
            found = yield self._store.get_many, (list(key_map), time.time())
        except CacheError as error:
            self._server_failed("get_many", error)
            return {}
        missing = object()
        result: dict[Any, Any] = {}
        for key, data in found.items():
            value = self._serializer.load_or(missing, key, data)
            if value is not missing:
                result[key_map[key]] = value
        return result

    @store_operation
    def has_key(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            return (yield self._store.has_key, (key, time.time()))
        except CacheError as error:
            self._server_failed("has_key", error)
            return False

    @store_operation
    def set(
        self, key: Any, value: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, None]:
        key = self._key(key, version)
        data = self._serializer.dumps(value)
        try:
            yield self._store.set, (
                key, data, self._expiry(timeout), time.time(), self._max_entries, self._cull_frequency
            )
        except CacheError as error:
            self._server_failed("set", error)

    @store_operation
    def add(
        self, key: Any, value: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        data = self._serializer.dumps(value)
        try:
            return (yield self._store.add, (
                key, data, self._expiry(timeout), time.time(), self._max_entries, self._cull_frequency
            ))
        except CacheError as error:
            self._server_failed("add", error)
            return False

    @store_operation
    def set_many(
        self, data: dict[Any, Any], timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, list[Any]]:
        items = [(self._key(key, version), self._serializer.dumps(value)) for key, value in data.items()]
        if not items:
            return []
        try:
            yield self._store.set_many, (
                items, self._expiry(timeout), time.time(), self._max_entries, self._cull_frequency
            )
        except CacheError as error:
            self._server_failed("set_many", error)
            return list(data)
        return []

    @store_operation
    def touch(
        self, key: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            return (yield self._store.touch, (key, self._expiry(timeout), time.time()))
        except CacheError as error:
            self._server_failed("touch", error)
            return False

    @store_operation
    def delete(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        try:
            return (yield self._store.delete, (key, time.time()))
        except CacheError as error:
            self._server_failed("delete", error)
            return False

    @store_operation
    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> Generator[Any, Any, None]:
        keys = [self._key(key, version) for key in keys]
        if not keys:
            return
        try:
            yield self._store.delete_many, (keys,)
        except CacheError as error:
            self._server_failed("delete_many", error)

    @store_operation
    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Generator[Any, Any, Any]:
        """Atomic across every worker: the key is locked (advisory and row
        locks) while ``value + delta`` is computed and written. Keeps the
        key's expiry. A missing key raises ValueError."""
        key = self._key(key, version)
        results: list[Any] = []

        def add_delta(data: bytes) -> bytes:
            value = self._serializer.loads(data) + delta
            results.append(value)
            return self._serializer.dumps(value)

        try:
            written = yield self._store.update, (key, time.time(), add_delta)
        except UnverifiedValue:
            # Not this cache's value to count with (logged by nothing
            # else): as if missing. The transaction was rolled back.
            logger.warning("cannot load the cached value of %r; incr treats it as missing", key)
            written = None
        except CacheError as error:
            self._server_failed("incr", error)
            written = None
        if written is None:
            raise ValueError("Key '%s' not found" % key)
        return results[-1]

    @store_operation
    def clear(self) -> Generator[Any, Any, None]:
        try:
            yield self._store.clear, ()
        except CacheError as error:
            self._server_failed("clear", error)
