"""Exceptions raised by racefree's stores.

``CacheError`` and its subclasses mean a cache server could not serve the
call; with ``IGNORE_EXCEPTIONS`` they read as misses instead. Bad input is
never ignored: invalid keys raise Django's ``InvalidCacheKey``, values the
server refuses raise ``ValueTooLargeError``.
"""

from django.core.exceptions import ImproperlyConfigured


class CacheError(Exception):
    """A cache server could not serve the call."""


class CacheConnectionError(CacheError, ConnectionError):
    """The server could not be reached or dropped the connection."""


class CacheAuthenticationError(CacheConnectionError):
    """The server refused the login (memcached's ``-Y`` authfile): the
    credentials were rejected, or it requires some and none are set."""


class CacheTimeoutError(CacheError, TimeoutError):
    """The server did not answer within the configured timeout."""


class LockTimeoutError(CacheTimeoutError):
    """Another process held a cache lock longer than LOCK_TIMEOUT."""


class LockNotAcquired(TimeoutError):
    """``with cache.lock(...)`` waited its ``wait`` seconds and another
    holder still had the lock."""


class LockNotOwned(RuntimeError):
    """A cache lock's ``extend()`` or ``reacquire()`` found that its lease
    had run out: its entry is gone or holds another holder's token, and
    was left as it was."""


class CacheProtocolError(CacheError):
    """The server's reply did not answer the request; the connection was
    discarded so no later call can read it."""


class CacheServerError(CacheError):
    """The server reported an error (e.g. out of memory)."""


class ValueTooLargeError(ValueError):
    """The value is larger than the server accepts; any old value for the
    key was deleted."""


class NotPostgreSQL(ImproperlyConfigured):
    """The database cache was pointed at a database that is not PostgreSQL."""
