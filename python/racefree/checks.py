"""Django system checks for racefree's backends in ``settings.CACHES``.

They run with ``manage.py check`` (and before ``runserver``/``migrate``)
once ``"racefree"`` is in INSTALLED_APPS. Each backend checks its own
server or directory (its ``system_checks``); this module builds them. Settings that cannot work are
errors (a backend refuses them when it is built, too); a server that does
not answer right now is a warning, as it may come up later.

==============  ==============================================================
racefree.E001   a backend cannot be built from its settings (unknown OPTIONS,
                wrong types, a LOCATION that cannot be parsed, a TLS file
                that cannot be read)
racefree.E002   the database cache is pointed at a database that is not
                PostgreSQL
racefree.E003   the database cache's table does not exist
racefree.E004   the file cache's directory cannot be created or written
racefree.E005   a forwarding cache forwards to an alias missing from CACHES
racefree.E006   the file cache's directory belongs to another user or others
                may write to it (its entries could be planted)
racefree.W001   a memcached server does not answer (or refuses this
                client's TLS or login)
racefree.W002   the database cache's server does not answer
==============  ==============================================================
"""

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from racefree.exceptions import NotPostgreSQL

if TYPE_CHECKING:
    from django.apps import AppConfig

# How long a check waits for a server.
PROBE_TIMEOUT = 1.0


def racefree_caches() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(alias, settings)`` of every CACHES entry with a racefree backend."""
    for alias, config in getattr(settings, "CACHES", {}).items():
        if str(config.get("BACKEND", "")).startswith("racefree."):
            yield alias, config


def error(alias: str, problem: str, check_id: str, hint: str | None = None) -> checks.Error:
    """An error about ``CACHES[alias]``: ``problem`` follows its name."""
    return checks.Error(f"CACHES[{alias!r}]{problem}", hint=hint, obj=f"CACHES[{alias!r}]", id=check_id)


UNREACHABLE_HINT = "Start it, or fix LOCATION; until it answers every call raises (or misses with IGNORE_EXCEPTIONS)."


def unreachable(alias: str, what: str, failure: Exception, check_id: str, hint: str | None = None) -> checks.Warning:
    return checks.Warning(
        f"CACHES[{alias!r}]: {what} did not answer: {failure}",
        hint=hint or UNREACHABLE_HINT,
        obj=f"CACHES[{alias!r}]",
        id=check_id,
    )


def probe_servers(
    alias: str, servers: Sequence[str], probe: Callable[[str], object], kind: str, login_hint: str
) -> list[checks.CheckMessage]:
    """racefree.W001 for each of ``servers`` where ``probe(server)`` (one
    call on a client of its own, with PROBE_TIMEOUT) raises: it does not
    answer now, or refuses this client's TLS or login (``login_hint``)."""
    from racefree.exceptions import CacheAuthenticationError, CacheError

    messages: list[checks.CheckMessage] = []
    for server in servers:
        try:
            probe(server)
        except CacheAuthenticationError as failure:
            messages.append(unreachable(alias, f"{kind} server {server!r}", failure, "racefree.W001", login_hint))
        except CacheError as failure:
            messages.append(unreachable(alias, f"{kind} server {server!r}", failure, "racefree.W001"))
    return messages


def check_caches(app_configs: "Sequence[AppConfig] | None" = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for alias, config in racefree_caches():
        try:
            backend_class = import_string(config["BACKEND"])
            backend = backend_class(config.get("LOCATION", ""), config)
        except NotPostgreSQL as failure:
            hint = "Point OPTIONS['DATABASE'] at a PostgreSQL alias of DATABASES, or give OPTIONS['DSN']."
            messages.append(error(alias, f": {failure}", "racefree.E002", hint))
        except ImproperlyConfigured as failure:
            hint = "See the OPTIONS of this backend in racefree's README."
            messages.append(error(alias, f": {failure}", "racefree.E001", hint))
        except ImportError as failure:
            messages.append(error(alias, f": {failure}", "racefree.E001"))
        else:
            messages.extend(backend.system_checks(alias))
    return messages
