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
import threading
import time
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from racefree._core import FileStore
from racefree._keys import KeyMaking
from racefree.backends._ops import store_operation, with_async_twins
from racefree.backends._options import Option, non_negative_int, positive_int, positive_number, read_options
from racefree.backends._stampede import Stampede, StampedeSafe, stampede_options
from racefree.serialization import serializer_from, serializer_options

if TYPE_CHECKING:
    from django.core.checks import CheckMessage

OPTIONS = [
    Option("MAX_ENTRIES", 300, positive_int),
    Option("CULL_FREQUENCY", 3, non_negative_int),
    Option("LOCK_TIMEOUT", 5.0, positive_number),
    *serializer_options(),
    *stampede_options(),
]

_stores: dict[tuple[str, float], FileStore] = {}
_stores_lock = threading.Lock()


def shared_store(directory: str, lock_timeout: float) -> FileStore:
    """One store per directory and process: they share the mapped count."""
    with _stores_lock:
        store = _stores.get((directory, lock_timeout))
        if store is None:
            store = _stores[(directory, lock_timeout)] = FileStore(directory, lock_timeout=lock_timeout)
        return store


@with_async_twins
class FileBasedCache(StampedeSafe, KeyMaking, BaseCache):
    def __init__(self, dir: str | os.PathLike[str], params: dict[str, Any]) -> None:
        backend = f"{type(self).__module__}.{type(self).__qualname__}"
        options = read_options(backend, params.get("OPTIONS"), OPTIONS)
        super().__init__(params)
        self._dir = os.path.abspath(os.fspath(dir))
        self._store = shared_store(self._dir, options["LOCK_TIMEOUT"])
        self._serializer = serializer_from(backend, options)
        self._stampede = Stampede.from_options(options)
        self._init_key_making(FileBasedCache)

    def system_checks(self, alias: str) -> "list[CheckMessage]":
        """racefree.E004 if the directory cannot be created or written."""
        from racefree.checks import directory_writable

        return directory_writable(alias, self._dir)

    def stats(self) -> dict[str, int]:
        """This process's counters for this directory (hits, misses, sets,
        deletes, errors) and ``entries``, the cache's exact entry count
        shared by every process."""
        stats = self._store.stats()
        stats["entries"] = self._store.count()
        return stats

    def close(self, **kwargs: Any) -> None:
        """Nothing to close: no file stays open between calls."""

    async def aclose(self, **kwargs: Any) -> None:
        """See close() (native: Django 6's default would run close() in a thread)."""

    def _expiry(self, timeout: float | None) -> float:
        """Absolute expiry in Unix seconds; 0.0 means never."""
        expires = self.get_backend_timeout(timeout)
        if expires is None:
            return 0.0
        # A past expiry must stay distinguishable from "never".
        return max(expires, 1e-6)

    def _key_to_file(self, key: Any, version: int | None = None) -> str:
        """The file that holds ``key`` (as Django's backend offers)."""
        return str(self._store.path_for(self.make_and_validate_key(key, version=version)))

    @store_operation
    def get(self, key: Any, default: Any = None, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        item = yield self._store.get, (key, time.time())
        if item is None:
            return default
        return self._serializer.decode_or(default, key, *item)

    @store_operation
    def has_key(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        return (yield self._store.has_key, (key, time.time()))

    @store_operation
    def set(
        self, key: Any, value: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, None]:
        key = self._key(key, version)
        flags, data = self._serializer.encode(value)
        yield self._store.set, (
            key, flags, data, self._expiry(timeout), time.time(), self._max_entries, self._cull_frequency
        )

    @store_operation
    def add(
        self, key: Any, value: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        flags, data = self._serializer.encode(value)
        return (yield self._store.add, (
            key, flags, data, self._expiry(timeout), time.time(), self._max_entries, self._cull_frequency
        ))

    @store_operation
    def touch(
        self, key: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        return (yield self._store.touch, (key, self._expiry(timeout), time.time()))

    @store_operation
    def delete(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        return (yield self._store.delete, (key, time.time()))

    @store_operation
    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Generator[Any, Any, Any]:
        """Atomic across threads and processes; keeps the key's expiry. A
        missing key raises ValueError, a non-integer value TypeError."""
        key = self._key(key, version)
        value = yield self._store.incr, (key, delta, time.time())
        if value is None:
            raise ValueError("Key '%s' not found" % key)
        return value

    @store_operation
    def get_many(self, keys: Iterable[Any], version: int | None = None) -> Generator[Any, Any, dict[Any, Any]]:
        key_map = {self._key(key, version): key for key in keys}
        if not key_map:
            return {}
        found = yield self._store.get_many, (list(key_map), time.time())
        return self._serializer.decode_found(found, key_map)

    @store_operation
    def set_many(
        self, data: dict[Any, Any], timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, list[Any]]:
        items = [
            (self._key(key, version), *self._serializer.encode(value))
            for key, value in data.items()
        ]
        if items:
            yield self._store.set_many, (
                items, self._expiry(timeout), time.time(), self._max_entries, self._cull_frequency
            )
        return []

    @store_operation
    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> Generator[Any, Any, None]:
        keys = [self._key(key, version) for key in keys]
        if keys:
            yield self._store.delete_many, (keys, time.time())

    @store_operation
    def clear(self) -> Generator[Any, Any, None]:
        """Remove every entry; other files in the directory stay."""
        yield self._store.clear, ()
