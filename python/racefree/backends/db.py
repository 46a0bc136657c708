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
from typing import TYPE_CHECKING, Any

from django.core.cache.backends.db import BaseDatabaseCache
from django.core.exceptions import ImproperlyConfigured

from racefree._core import PgStore
from racefree.backends._ops import with_async_twins
from racefree.backends._options import (
    Option,
    boolean,
    non_negative_int,
    optional,
    positive_int,
    positive_number,
    store_settings,
)
from racefree.backends._stampede import stampede_options
from racefree.backends.base import ProcessRegistry, RacefreeCache
from racefree.checks import error, unreachable
from racefree.exceptions import CacheError, NotPostgreSQL
from racefree.serialization import serializer_options

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
    Option("DSN", None, optional(text), secret=True),
    Option("POOL_SIZE", 10, positive_int, store=True),
    Option("CONNECT_TIMEOUT", 5.0, positive_number, store=True),
    Option("STATEMENT_TIMEOUT", 5.0, optional(positive_number), store=True),
    # Above STATEMENT_TIMEOUT: the server cancels a slow statement first
    # where it can, and the connection stays usable.
    Option("IO_TIMEOUT", 6.0, positive_number, store=True),
    Option("IDLE_TIMEOUT", 300.0, positive_number, store=True),
    Option("IGNORE_EXCEPTIONS", False, boolean),
    *serializer_options(),
    *stampede_options(),
]

# Django DATABASES OPTIONS that only concern Django's own connection.
DJANGO_ONLY_OPTIONS = {"pool", "server_side_binding", "isolation_level", "assume_role", "client_encoding"}
# libpq settings racefree passes on to its own connections; so are the TLS
# ones (ssl*), which the store checks itself.
LIBPQ_OPTIONS = {"options", "application_name"}


def is_libpq_option(name: str) -> bool:
    return name in LIBPQ_OPTIONS or name.startswith("ssl")


_stores: ProcessRegistry[tuple[object, ...], PgStore] = ProcessRegistry()


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
        if is_libpq_option(name):
            # As psycopg takes them: paths may be Path objects.
            params[name] = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        else:
            raise ImproperlyConfigured(
                f"racefree DatabaseCache cannot use DATABASES[{alias!r}]['OPTIONS'][{name!r}]: a libpq "
                "setting it does not support; give OPTIONS['DSN'] without it"
            )
    return params


def shared_store(table: str, params: dict[str, str], options: dict[str, Any]) -> PgStore:
    """One pool per process and settings, shared by every backend instance."""
    settings = store_settings(options, OPTIONS)

    def build() -> PgStore:
        try:
            store = PgStore(table, params, options["DSN"], settings)
        except ValueError as exc:
            raise ImproperlyConfigured(f"racefree DatabaseCache: {exc}") from None
        _close_before_test_databases_drop()
        return store

    return _stores.get((table, tuple(sorted(params.items())), options["DSN"], *sorted(settings.items())), build)


def close_pools() -> None:
    """Close every pooled connection of this process (they reopen on
    demand), e.g. before the database they point at is dropped."""
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
class DatabaseCache(RacefreeCache, BaseDatabaseCache):
    options_spec = OPTIONS
    _store: PgStore
    server_kind = "PostgreSQL cache"
    _table: str  # set by BaseDatabaseCache.__init__

    def __init__(self, table: str, params: dict[str, Any]) -> None:
        options = self._configure(params)
        statement_timeout = options["STATEMENT_TIMEOUT"]
        if statement_timeout is not None and options["IO_TIMEOUT"] <= statement_timeout:
            raise ImproperlyConfigured(
                f"racefree DatabaseCache: OPTIONS['IO_TIMEOUT'] ({options['IO_TIMEOUT']} s) must be longer than "
                f"STATEMENT_TIMEOUT ({statement_timeout} s), so that the server cancels a slow statement "
                "before the client gives up on its connection"
            )
        super().__init__(table, params)
        # The table holds the serializer's bytes only (base64, as Django's).
        self._encode = self._serializer.dumps
        self._decode_or = self._serializer.load_or
        # PostgreSQL cannot count in a pickle: incr reads, adds and writes
        # back with the key locked (advisory and row locks).
        self._counts_natively = self._items_have_flags = False
        if options["DSN"]:
            params_for_store: dict[str, str] = {}
        else:
            from django.db import router

            alias = options["DATABASE"] or router.db_for_write(self.cache_model_class)
            params_for_store = libpq_params(alias)
        self._store = shared_store(self._table, params_for_store, options)

    def system_checks(self, alias: str) -> "list[CheckMessage]":
        """racefree.E003 for a missing table, W002 for a server that does
        not answer now."""
        try:
            self._store.has_key("racefree:check")
        except CacheError as failure:
            if "does not exist" in str(failure):
                problem = f": the cache table {self._table!r} does not exist"
                return [error(alias, problem, "racefree.E003", "Run 'manage.py createcachetable'.")]
            return [unreachable(alias, "the database server", failure, "racefree.W002")]
        return []

    def stats(self) -> dict[str, int]:
        """This process's counters for this table and connection settings
        (hits, misses, sets, deletes, errors, round_trips) and its pool
        (pool_size, connections, idle, in_use, connects)."""
        return self._store.stats()
