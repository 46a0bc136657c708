"""File-system cache safe for many threads and processes on one host.

A drop-in for Django's ``FileBasedCache``: the same LOCATION, TIMEOUT,
MAX_ENTRIES and CULL_FREQUENCY, and Django's semantics. Unlike the stock
backend, a reader never sees a partial file, ``add``/``incr``/``touch``
are atomic across processes, removing an expired file cannot remove a
fresh value another process just wrote, and ``set`` does not list the
directory to decide whether to cull.

Local disks only: on NFS, ``flock`` and ``rename`` do not give these
guarantees. For several hosts, use the memcached or PostgreSQL backends.
"""

import os
from typing import TYPE_CHECKING, Any

from django.core.cache.backends.base import BaseCache

from racefree._core import FileStore
from racefree.backends._options import Option, non_negative_int, positive_int, positive_number, store_settings
from racefree.backends._stampede import stampede_options
from racefree.backends.base import ProcessRegistry, RacefreeCache
from racefree.checks import error
from racefree.serialization import serializer_options

if TYPE_CHECKING:
    from django.core.checks import CheckMessage

OPTIONS = [
    Option("MAX_ENTRIES", 300, positive_int),
    Option("CULL_FREQUENCY", 3, non_negative_int),
    Option("LOCK_TIMEOUT", 5.0, positive_number, store=True),
    *serializer_options(),
    *stampede_options(),
]

# One store per directory and process: they share the mapped count.
_stores: ProcessRegistry[tuple[object, ...], FileStore] = ProcessRegistry()


class FileBasedCache(RacefreeCache, BaseCache):
    options_spec = OPTIONS
    _store: FileStore

    def __init__(self, dir: str | os.PathLike[str], params: dict[str, Any]) -> None:
        options = self._configure(params)
        super().__init__(params)
        self._dir = os.path.abspath(os.fspath(dir))
        settings = store_settings(options, OPTIONS)
        self._store = _stores.get((self._dir, *sorted(settings.items())), lambda: FileStore(self._dir, settings))

    def system_checks(self, alias: str) -> "list[CheckMessage]":
        """racefree.E004 if the directory cannot be created or written by
        this process, E006 if it is not this process user's alone."""
        try:
            self._store.check_directory()
        except PermissionError as failure:
            hint = "chown the directory to the web server's user and chmod 700 it, or choose another LOCATION."
            return [error(alias, f": {failure.strerror}", "racefree.E006", hint)]
        existing = self._dir
        while not os.path.exists(existing):
            parent = os.path.dirname(existing)
            if parent == existing:
                break
            existing = parent
        if os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK):
            return []
        what = "cannot be written" if existing == self._dir else f"cannot be created in {existing!r}"
        hint = "Create it and give the user the web server runs as write access."
        return [error(alias, f": the cache directory {self._dir!r} {what} by this process", "racefree.E004", hint)]

    def stats(self) -> dict[str, int]:
        """This process's counters for this directory (hits, misses, sets,
        deletes, errors) and ``entries``, the cache's exact entry count
        shared by every process."""
        stats = self._store.stats()
        stats["entries"] = self._store.count()
        return stats

    def _key_to_file(self, key: Any, version: int | None = None) -> str:
        """The file that holds ``key`` (as Django's backend offers)."""
        return str(self._store.path_for(self.make_and_validate_key(key, version=version)))
