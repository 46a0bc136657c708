"""One computation per miss: ``get_or_set`` and ``lock`` on any backend
with an atomic ``add``.

Django's ``get_or_set`` is get → compute → add, so when a hot entry
expires every caller that misses at once computes it. Here the callers
that miss race to ``add`` a lock entry for the key (memcached's atomic
``add``, the file store's ``add`` under its file lock, the PostgreSQL
store's ``add`` under an advisory lock): the one that adds it computes;
the others poll for its value, backing off; those in the computer's own
process are woken as soon as it gives the lock back. The lock entry
expires after ``LOCK_LEASE`` seconds, so a computer that crashed frees it
without anyone's help, and a caller that has waited ``GET_OR_SET_WAIT``
seconds computes itself rather than hang. A hit costs what Django's costs: one get.

``EARLY_REFRESH`` (seconds, off by default): ``get_or_set`` also writes a
"fresh" marker that expires that long before the value; the first caller
to find the value without its marker recomputes it under the lock while
everyone else keeps reading the old value.
"""

import asyncio
import functools
import hashlib
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol, cast

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from racefree.backends._failures import failures_raised
from racefree.backends._ops import store_operation, with_async_twins
from racefree.backends._options import Option, non_negative_number, positive_number
from racefree.exceptions import CacheError, LockNotAcquired, LockNotOwned

if TYPE_CHECKING:
    from django.core.cache.backends.base import BaseCache as _CacheBase
else:
    _CacheBase = object

logger = logging.getLogger("racefree")

MISSING: Any = object()
#: First and longest pause between polls of a waiting caller.
FIRST_PAUSE = 0.005
LONGEST_PAUSE = 0.05


def stampede_options() -> list[Option]:
    """The OPTIONS every racefree backend takes for get_or_set and lock."""
    return [
        Option("LOCK_LEASE", 10.0, positive_number),
        Option("GET_OR_SET_WAIT", 20.0, positive_number),
        Option("EARLY_REFRESH", 0.0, non_negative_number),
    ]


class Stampede:
    """The get_or_set and lock settings read from OPTIONS."""

    __slots__ = ("lease", "wait", "early_refresh")

    def __init__(self, lease: float = 10.0, wait: float = 20.0, early_refresh: float = 0.0) -> None:
        self.lease = lease
        self.wait = wait
        self.early_refresh = early_refresh

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "Stampede":
        return cls(options["LOCK_LEASE"], options["GET_OR_SET_WAIT"], options["EARLY_REFRESH"])


def _named(kind: str, key: Any) -> str:
    # A fixed-length name: the key's own length limit (memcached's 250
    # bytes) must not be exceeded by a suffix.
    digest = hashlib.blake2b(str(key).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"racefree.{kind}:{digest}"


def _seconds_above_zero(value: object) -> bool:
    """Whether ``value`` is a finite number of seconds above 0."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < math.inf


def _checked_wait(wait: Any) -> float | None:
    if wait is not None and (isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0):
        raise ValueError(f"a lock's wait must be None or a number of seconds >= 0, not {wait!r}")
    return wait


class _LockStore(Protocol):
    """What a CacheLock needs of its cache."""

    def add(self, key: Any, value: Any, timeout: float | None = ..., version: int | None = None) -> bool: ...
    def get(self, key: Any, default: Any | None = None, version: int | None = None) -> Any: ...
    def has_key(self, key: Any, version: int | None = None) -> bool: ...
    def make_key(self, key: Any, version: int | None = None) -> str: ...
    def _delete_if(self, key: Any, value: Any, version: int | None = None) -> bool: ...
    async def a_delete_if(self, key: Any, value: Any, version: int | None = None) -> bool: ...
    def _touch_if(self, key: Any, value: Any, timeout: float, version: int | None = None) -> bool: ...
    async def a_touch_if(self, key: Any, value: Any, timeout: float, version: int | None = None) -> bool: ...
    async def aadd(self, key: Any, value: Any, timeout: float | None = ..., version: int | None = None) -> bool: ...
    def lock_entry_timeout(self, lease: float) -> float: ...


def _settle(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


#: An asyncio task's wait: its loop and the future it awaits.
_WaitingTask = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class _Wakeup:
    """The callers of this process waiting on one key: threads on an
    event, tasks on futures of their own loops."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.futures: list[_WaitingTask] = []
        self.waiters = 0


class Wakeups:
    """Ends the pause of this process's callers waiting on a key when the
    key's holder in this process is done with it (a lock given back, a
    value stored), instead of at their next poll. Callers elsewhere
    (other processes, other hosts) still poll; a wake-up that comes early
    or for nothing costs one more try. Keyed by the stored key, so the
    caches of one configuration share their wake-ups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, _Wakeup] = {}
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        # The parent's waiters are not the child's.
        self._lock = threading.Lock()
        self._waiting = {}

    def _joined(self, key: str, task: "_WaitingTask | None" = None) -> _Wakeup:
        # A wake-up in _waiting has not been woken: wake() takes it out first.
        with self._lock:
            wakeup = self._waiting.get(key)
            if wakeup is None:
                wakeup = self._waiting[key] = _Wakeup()
            wakeup.waiters += 1
            if task is not None:
                wakeup.futures.append(task)
            return wakeup

    def _left(self, key: str, wakeup: _Wakeup) -> None:
        with self._lock:
            wakeup.waiters -= 1
            if not wakeup.waiters and self._waiting.get(key) is wakeup:
                del self._waiting[key]

    def sleep(self, key: str, seconds: float) -> None:
        """Wait up to ``seconds``, or until ``wake(key)``."""
        wakeup = self._joined(key)
        try:
            wakeup.event.wait(seconds)
        finally:
            self._left(key, wakeup)

    async def asleep(self, key: str, seconds: float) -> None:
        """See sleep; the event loop runs meanwhile."""
        loop = asyncio.get_running_loop()
        task: _WaitingTask = (loop, loop.create_future())
        wakeup = self._joined(key, task)
        try:
            await asyncio.wait((task[1],), timeout=seconds)
        finally:
            with self._lock:
                if task in wakeup.futures:
                    wakeup.futures.remove(task)
            self._left(key, wakeup)

    def wake(self, key: str) -> None:
        """End the pause of every caller of this process waiting on ``key``."""
        with self._lock:
            wakeup = self._waiting.pop(key, None)
            if wakeup is None:
                return
            wakeup.event.set()
            futures, wakeup.futures = wakeup.futures, []
        for loop, future in futures:
            try:
                loop.call_soon_threadsafe(_settle, future)
            except RuntimeError:
                pass  # its loop is closed: nobody waits there any more


#: This process's wake-ups, shared by every backend.
wakeups = Wakeups()


#: Give-backs of locks taken by cancelled acquires, kept until done.
_giving_back: set["asyncio.Future[bool]"] = set()


def _give_back(cache: _LockStore, key: str, token: str, version: int | None, adding: "asyncio.Future[bool]") -> None:
    """After a cancelled acquire: if its add took the lock, delete it."""
    if adding.cancelled() or adding.exception() is not None or not adding.result():
        return
    release = asyncio.ensure_future(cache.a_delete_if(key, token, version))
    _giving_back.add(release)
    release.add_done_callback(_gave_back)


def _gave_back(release: "asyncio.Future[bool]") -> None:
    _giving_back.discard(release)
    if not release.cancelled() and release.exception() is not None:
        logger.warning("cache lock: giving back a lock after a cancellation failed, its lease will free it: %s",
                       release.exception())


@with_async_twins
class CacheLock:
    """A lock named by a cache key, shared by every thread, process and
    host using the cache: a cache entry holding a random token, added
    atomically, expiring after ``lease`` seconds so a crashed holder cannot
    keep it (on memcached, whose clock ticks in whole seconds, after
    between ``lease`` and ``lease + 1`` rounded up).

    ``with cache.lock("name"):`` waits up to ``wait`` seconds (None: until
    it is free) and raises ``LockNotAcquired`` after that; ``async with``
    works too. Not reentrant. Give it back only while the lease lasts: a
    release after the lease ran out leaves the next holder's lock alone.
    """

    def __init__(
        self,
        cache: _LockStore,
        name: Any,
        lease: float,
        wait: float | None = None,
        version: int | None = None,
        *,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        sleep: float | None = None,
    ) -> None:
        # django-redis's spellings: blocking_timeout is wait, blocking=False tries once.
        if blocking_timeout is not None:
            if wait is not None:
                raise ValueError("a lock takes wait or blocking_timeout (django-redis's name for it), not both")
            wait = blocking_timeout
        if not blocking:
            wait = 0
        if not _seconds_above_zero(lease):
            raise ValueError(f"a lock's lease must be a number of seconds above 0, not {lease!r}")
        if sleep is not None and not _seconds_above_zero(sleep):
            raise ValueError(f"a lock's sleep must be None or a number of seconds above 0, not {sleep!r}")
        self._cache = cache
        self._key = _named("lock", name)
        self._version = version
        #: Who waits for this lock in this process (see Wakeups).
        self.wake_key = cache.make_key(self._key, version)
        self.name = name
        self.lease = lease
        self.wait = _checked_wait(wait)
        #: The pause between tries while waiting (None: from 5 ms, doubling up to 50 ms).
        self.sleep = sleep
        self._token: str | None = None
        #: When (time.monotonic()) the lease taken or last extended ends.
        self._lease_ends = 0.0

    @property
    def held(self) -> bool:
        """Whether this object took the lock (and has not given it back)."""
        return self._token is not None

    @store_operation
    def try_acquire(self) -> Generator[Any, Any, bool]:
        """Take the lock if it is free, without waiting. A server failure
        raises, even with IGNORE_EXCEPTIONS."""
        if self._token is not None:
            raise RuntimeError(f"the cache lock {self.name!r} is already held by this object")
        token = secrets.token_hex(16)
        won: bool
        started = time.monotonic()
        with failures_raised():
            won = yield self._cache.add, (self._key, token, self._cache.lock_entry_timeout(self.lease), self._version)
        if won:
            self._token, self._lease_ends = token, started + self.lease
        return won

    async def atry_acquire(self) -> bool:
        """See try_acquire. A cancellation while the lock's entry is being
        added leaves no lock behind: the add runs on without the caller,
        and if it took the lock, it is given back at once instead of
        blocking every caller of the key for the whole lease."""
        if self._token is not None:
            raise RuntimeError(f"the cache lock {self.name!r} is already held by this object")
        token = secrets.token_hex(16)
        timeout = self._cache.lock_entry_timeout(self.lease)
        started = time.monotonic()
        with failures_raised():
            adding = asyncio.ensure_future(self._cache.aadd(self._key, token, timeout, self._version))
            try:
                won: bool = await asyncio.shield(adding)
            except asyncio.CancelledError:
                adding.add_done_callback(functools.partial(_give_back, self._cache, self._key, token, self._version))
                raise
        if won:
            self._token, self._lease_ends = token, started + self.lease
        return won

    @store_operation
    def acquire(
        self, wait: float | None = MISSING, blocking: bool | None = None, blocking_timeout: float | None = None
    ) -> Generator[Any, Any, bool]:
        """Take the lock, waiting up to ``wait`` seconds (default: the
        lock's own ``wait``); True if taken. redis-py's spellings (as
        django-redis's locks take them) work too: ``acquire(False)`` or
        ``acquire(blocking=False)`` tries once, ``acquire(True)`` waits the
        lock's own ``wait``, ``blocking_timeout`` is ``wait``."""
        wait = self._wait_for(wait, blocking, blocking_timeout)
        deadline = None if wait is None else time.monotonic() + wait
        pause = FIRST_PAUSE if self.sleep is None else self.sleep
        while True:
            if (yield self.try_acquire, ()):
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            # Until the next poll, or until a holder in this process gives it back.
            yield wakeups.sleep, (self.wake_key, pause if left is None else min(pause, left))
            pause = min(pause * 2, LONGEST_PAUSE) if self.sleep is None else self.sleep

    def _wait_for(self, wait: Any, blocking: bool | None, blocking_timeout: float | None) -> float | None:
        """How long ``acquire`` waits, from its own and redis-py's arguments."""
        if isinstance(wait, bool):
            # redis-py's acquire(blocking).
            wait, blocking = MISSING, wait
        if blocking_timeout is not None:
            if wait is not MISSING:
                raise ValueError("acquire takes wait or blocking_timeout (redis-py's name for it), not both")
            wait = blocking_timeout
        if blocking is False:
            return 0
        return self.wait if wait is MISSING else _checked_wait(wait)

    @store_operation
    def locked(self) -> Generator[Any, Any, bool]:
        """Whether anyone holds the lock now (redis-py's ``locked()``). A
        server failure raises, even with IGNORE_EXCEPTIONS."""
        with failures_raised():
            held: bool = yield self._cache.has_key, (self._key, self._version)
        return held

    @store_operation
    def owned(self) -> Generator[Any, Any, bool]:
        """Whether this object holds the lock and its lease has not run out
        (redis-py's ``owned()``): the lock's entry still holds its token."""
        token = self._token
        if token is None:
            return False
        with failures_raised():
            current = yield self._cache.get, (self._key, None, self._version)
        return bool(current == token)

    @store_operation
    def extend(self, additional_time: float, replace_ttl: bool = False) -> Generator[Any, Any, bool]:
        """Lengthen the lease (redis-py's ``extend``): to end
        ``additional_time`` seconds after it would have, or with
        ``replace_ttl`` that many seconds from now. True; LockNotOwned
        (and nothing changed) if the lease had already run out and the
        lock's entry is gone or someone else's. Atomic: the entry's expiry
        changes only while it holds this object's token."""
        token = self._held_token("extend")
        if not _seconds_above_zero(additional_time):
            raise ValueError(f"extend takes a number of seconds above 0, not {additional_time!r}")
        lease = additional_time
        if not replace_ttl:
            lease += max(self._lease_ends - time.monotonic(), 0.0)
        renewed: bool = yield self._renewed, (token, lease)
        return renewed

    @store_operation
    def reacquire(self) -> Generator[Any, Any, bool]:
        """Make the lease end ``lease`` seconds from now (redis-py's
        ``reacquire``); LockNotOwned as for ``extend``."""
        renewed: bool = yield self._renewed, (self._held_token("reacquire"), self.lease)
        return renewed

    def _held_token(self, operation: str) -> str:
        if self._token is None:
            raise RuntimeError(f"cannot {operation} the cache lock {self.name!r}: this object does not hold it")
        return self._token

    @store_operation
    def _renewed(self, token: str, lease: float) -> Generator[Any, Any, bool]:
        """The lock's entry given ``lease`` more seconds from now, if it
        still holds ``token``. A server failure raises, even with
        IGNORE_EXCEPTIONS."""
        started = time.monotonic()
        with failures_raised():
            renewed = yield self._cache._touch_if, (
                self._key, token, self._cache.lock_entry_timeout(lease), self._version)
        if not renewed:
            raise LockNotOwned(f"the cache lock {self.name!r} was held past its lease, and is gone or "
                               "someone else's now")
        self._lease_ends = started + lease
        return True

    @store_operation
    def release(self) -> Generator[Any, Any, bool]:
        """Give the lock back; False (and a warning) if its lease ran out
        first. A server failure is logged, not raised: the lease frees the
        lock anyway."""
        token, self._token = self._token, None
        if token is None:
            raise RuntimeError(f"the cache lock {self.name!r} is not held by this object")
        try:
            # One atomic compare-and-delete: a read then a delete could
            # remove the next holder's lock if the lease ran out between.
            if (yield self._cache._delete_if, (self._key, token, self._version)):
                wakeups.wake(self.wake_key)
                return True
        except CacheError as error:
            logger.warning("cache lock %r: release failed, its lease will free it: %s", self.name, error)
            return False
        logger.warning("cache lock %r was held past its lease of %ss", self.name, self.lease)
        return False

    if TYPE_CHECKING:
        # The awaitable twins, added by with_async_twins.
        async def aacquire(
            self, wait: float | None = ..., blocking: bool | None = None, blocking_timeout: float | None = None
        ) -> bool: ...
        async def arelease(self) -> bool: ...
        async def alocked(self) -> bool: ...
        async def aextend(self, additional_time: float, replace_ttl: bool = False) -> bool: ...
        async def areacquire(self) -> bool: ...
        async def aowned(self) -> bool: ...

    def __enter__(self) -> "CacheLock":
        if not self.acquire():
            raise LockNotAcquired(f"cache lock {self.name!r} not acquired within {self.wait}s")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    async def __aenter__(self) -> "CacheLock":
        if not await self.aacquire():
            raise LockNotAcquired(f"cache lock {self.name!r} not acquired within {self.wait}s")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.arelease()

    def __repr__(self) -> str:
        return f"<CacheLock {self.name!r} {'held' if self.held else 'free'}>"


class Lockable:
    """Mixin: ``lock()``, for a cache that is a ``_LockStore``."""

    def lock(
        self,
        key: Any,
        timeout: float | None = None,
        wait: float | None = None,
        version: int | None = None,
        *,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        sleep: float | None = None,
        thread_local: bool = False,
    ) -> CacheLock:
        """A lock named ``key``, shared with every user of this cache.

        ``timeout``: its lease in seconds (default: OPTIONS LOCK_LEASE);
        ``wait``: how long ``with`` waits for it (None: until it is free).
        django-redis's spellings work too: ``blocking_timeout`` is
        ``wait``, ``blocking=False`` tries once, ``sleep`` is the pause
        between tries, and ``thread_local=False`` is what racefree's lock
        is anyway (its token belongs to the lock object, so any thread
        holding the object may release it).
        """
        if thread_local is not False:
            raise ValueError("racefree's lock token belongs to the lock object, not to a thread: "
                             "thread_local=False (redis-py's thread_local=True is not supported)")
        lease = self._lock_settings().lease if timeout is None else timeout
        return CacheLock(cast(_LockStore, self), key, lease, wait, version, blocking=blocking,
                         blocking_timeout=blocking_timeout, sleep=sleep)

    def _lock_settings(self) -> Stampede:
        """The settings a lock's default lease comes from."""
        raise NotImplementedError


@with_async_twins
class StampedeSafe(Lockable, _CacheBase):
    """Mixin for a BaseCache subclass: stampede-safe ``get_or_set`` /
    ``aget_or_set`` and ``lock``. The subclass sets ``_stampede``."""

    _stampede = Stampede()

    def _lock_settings(self) -> Stampede:
        return self._stampede

    def lock_entry_timeout(self, lease: float) -> float:
        """The timeout of a lock entry held for at least ``lease`` seconds."""
        return lease

    if TYPE_CHECKING:
        # Each backend's atomic compare-and-delete and compare-and-touch (RacefreeCache's).
        def _delete_if(self, key: Any, value: Any, version: int | None = None) -> bool: ...
        async def a_delete_if(self, key: Any, value: Any, version: int | None = None) -> bool: ...
        def _touch_if(self, key: Any, value: Any, timeout: float, version: int | None = None) -> bool: ...
        async def a_touch_if(self, key: Any, value: Any, timeout: float, version: int | None = None) -> bool: ...

    def _refresh_window(self, timeout: float | None) -> float:
        """The early-refresh window for this timeout, or 0."""
        window = self._stampede.early_refresh
        if not window:
            return 0
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        # A value that never expires needs no early refresh.
        if timeout is None or timeout == math.inf or timeout <= window:
            return 0
        return window

    @store_operation
    def get_or_set(
        self, key: Any, default: Any | None, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        """Django's get_or_set; when several callers miss at once, the
        callable ``default`` runs in one of them and the rest get its value."""
        window = self._refresh_window(timeout) if callable(default) else 0
        if window:
            fresh = _named("fresh", key)
            found = yield self.get_many, ([key, fresh], version)
            if key in found:
                if fresh in found:
                    return found[key]
                # Near expiry: one caller recomputes, the others read on.
                return (yield self._refreshed, (key, found[key], default, timeout, version))
        else:
            value = yield self.get, (key, MISSING, version)
            if value is not MISSING:
                return value
        if not callable(default):
            return (yield self._added, (key, default, timeout, version))
        lock = CacheLock(self, key, self._stampede.lease, version=version)
        deadline = time.monotonic() + self._stampede.wait
        pause = FIRST_PAUSE
        while True:
            try:
                won = yield lock.try_acquire, ()
            except CacheError as error:
                # Only reached with IGNORE_EXCEPTIONS (the get above raised
                # otherwise): compute, as Django would.
                logger.warning("get_or_set %r: no lock (%s); computing without one", key, error)
                return (yield self._added, (key, default(), timeout, version))
            if won:
                try:
                    # The previous holder may have stored it since our miss.
                    value = yield self.get, (key, MISSING, version)
                    if value is MISSING:
                        value = yield self._added, (key, default(), timeout, version)
                finally:
                    yield lock.release, ()
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning("get_or_set %r: waited %ss for another caller's value; computing", key,
                               self._stampede.wait)
                return (yield self._added, (key, default(), timeout, version))
            # The holder gives the lock back once the value is stored.
            yield wakeups.sleep, (lock.wake_key, min(pause, left))
            pause = min(pause * 2, LONGEST_PAUSE)
            value = yield self.get, (key, MISSING, version)
            if value is not MISSING:
                return value

    @store_operation
    def invalidate(self, key: Any, version: int | None = None) -> Generator[Any, Any, bool]:
        """Mark the value outdated, so that get_or_set recomputes it once.
        Here a delete: the next get_or_set callers wait for the one that
        recomputes it (only memcached can serve them the old value
        meanwhile). True if the key was there."""
        deleted: bool = yield self.delete, (key, version)
        return deleted

    if TYPE_CHECKING:

        async def ainvalidate(self, key: Any, version: int | None = None) -> bool: ...

    @store_operation
    def _added(self, key: Any, value: Any, timeout: float | None, version: int | None) -> Generator[Any, Any, Any]:
        """Django's ending: add (someone else's value wins), then read back."""
        yield self.add, (key, value, timeout, version)
        yield self._mark_fresh, (key, timeout, version)
        return (yield self.get, (key, value, version))

    @store_operation
    def _mark_fresh(self, key: Any, timeout: float | None, version: int | None) -> Generator[Any, Any, None]:
        """With EARLY_REFRESH, the marker that expires ``window`` seconds
        before the value."""
        window = self._refresh_window(timeout)
        if window:
            timeout = cast(float, self.default_timeout if timeout is DEFAULT_TIMEOUT else timeout)
            yield self.set, (_named("fresh", key), 1, timeout - window, version)

    @store_operation
    def _refreshed(
        self, key: Any, old: Any, default: Callable[[], Any], timeout: float | None, version: int | None
    ) -> Generator[Any, Any, Any]:
        """The value recomputed by this caller if it gets the lock first,
        else the old one."""
        lock = CacheLock(self, key, self._stampede.lease, version=version)
        try:
            won = yield lock.try_acquire, ()
        except CacheError:
            return old
        if not won:
            return old
        try:
            value = default()
            yield self.set, (key, value, timeout, version)
            yield self._mark_fresh, (key, timeout, version)
        finally:
            yield lock.release, ()
        return value
