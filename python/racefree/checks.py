"""Django system checks for racefree's backends in ``settings.CACHES``.

They run with ``manage.py check`` (and before ``runserver``/``migrate``)
once ``"racefree"`` is in INSTALLED_APPS. Settings that cannot work are
errors (a backend refuses them when it is built, too); a server that does
not answer right now is a warning, as it may come up later.

==============  ==============================================================
racefree.E001   a backend cannot be built from its settings (unknown OPTIONS,
                wrong types, a LOCATION that cannot be parsed)
racefree.E002   the database cache is pointed at a database that is not
                PostgreSQL
racefree.E003   the database cache's table does not exist
racefree.E004   the file cache's directory cannot be created or written
racefree.E005   a forwarding cache forwards to an alias missing from CACHES
racefree.W001   a memcached server does not answer
racefree.W002   the database cache's server does not answer
==============  ==============================================================
"""

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from racefree.exceptions import CacheError

if TYPE_CHECKING:
    from django.apps import AppConfig

    from racefree._core import MemcachedClient
    from racefree.backends.db import DatabaseCache

# How long a check waits for a server.
PROBE_TIMEOUT = 1.0


def racefree_caches() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(alias, settings)`` of every CACHES entry with a racefree backend."""
    for alias, config in getattr(settings, "CACHES", {}).items():
        if str(config.get("BACKEND", "")).startswith("racefree."):
            yield alias, config


def check_caches(app_configs: "Sequence[AppConfig] | None" = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for alias, config in racefree_caches():
        try:
            backend_class = import_string(config["BACKEND"])
            backend = backend_class(config.get("LOCATION", ""), config)
        except ImproperlyConfigured as error:
            from racefree.backends.db import NotPostgreSQL

            not_postgresql = isinstance(error, NotPostgreSQL)
            messages.append(
                checks.Error(
                    f"CACHES[{alias!r}]: {error}",
                    hint="Point OPTIONS['DATABASE'] at a PostgreSQL alias of DATABASES, or give OPTIONS['DSN']."
                    if not_postgresql
                    else "See the OPTIONS of this backend in racefree's README.",
                    obj=f"CACHES[{alias!r}]",
                    id="racefree.E002" if not_postgresql else "racefree.E001",
                )
            )
            continue
        except ImportError as error:
            messages.append(
                checks.Error(f"CACHES[{alias!r}]: {error}", obj=f"CACHES[{alias!r}]", id="racefree.E001")
            )
            continue
        messages.extend(backend.system_checks(alias))
    return messages


def unreachable(alias: str, what: str, error: Exception, check_id: str) -> checks.Warning:
    return checks.Warning(
        f"CACHES[{alias!r}]: {what} did not answer: {error}",
        hint="Start it, or fix LOCATION; until it answers every call raises (or misses with IGNORE_EXCEPTIONS).",
        obj=f"CACHES[{alias!r}]",
        id=check_id,
    )


def memcached_reachable(
    alias: str, servers: Iterable[str], client_class: "type[MemcachedClient]"
) -> list[checks.CheckMessage]:
    """A warning per memcached server that does not answer a request."""
    messages: list[checks.CheckMessage] = []
    for server in servers:
        client = client_class([server], connect_timeout=PROBE_TIMEOUT, io_timeout=PROBE_TIMEOUT, pool_size=0)
        try:
            client.has_key("racefree:check")
        except CacheError as error:
            messages.append(unreachable(alias, f"memcached server {server!r}", error, "racefree.W001"))
    return messages


def database_reachable(alias: str, backend: "DatabaseCache") -> list[checks.CheckMessage]:
    """E003 for a missing table, W002 for a server that does not answer."""
    try:
        backend._store.has_key("racefree:check", 0.0)
    except CacheError as error:
        if "does not exist" in str(error):
            return [
                checks.Error(
                    f"CACHES[{alias!r}]: the cache table {backend._table!r} does not exist",
                    hint="Run 'manage.py createcachetable'.",
                    obj=f"CACHES[{alias!r}]",
                    id="racefree.E003",
                )
            ]
        return [unreachable(alias, "the database server", error, "racefree.W002")]
    return []


def directory_writable(alias: str, directory: str) -> list[checks.CheckMessage]:
    """E004 if the directory cannot be created or written by this process."""
    existing = os.path.abspath(directory)
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK):
        return []
    what = "cannot be written" if existing == os.path.abspath(directory) else f"cannot be created in {existing!r}"
    return [
        checks.Error(
            f"CACHES[{alias!r}]: the cache directory {directory!r} {what} by this process",
            hint="Create it and give the user the web server runs as write access.",
            obj=f"CACHES[{alias!r}]",
            id="racefree.E004",
        )
    ]


def forwarded_alias_exists(alias: str, target: str) -> list[checks.CheckMessage]:
    if target in getattr(settings, "CACHES", {}):
        return []
    return [
        checks.Error(
            f"CACHES[{alias!r}] forwards to {target!r}, which is not in CACHES",
            hint="Add that alias to CACHES, or set LOCATION to an alias that is there.",
            obj=f"CACHES[{alias!r}]",
            id="racefree.E005",
        )
    ]
