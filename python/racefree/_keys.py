"""Cache key rules shared by the Rust binding and the Python backends."""

from django.core.cache.backends.base import (
    MEMCACHE_MAX_KEY_LENGTH,
    InvalidCacheKey,
    memcache_key_warnings,
)


def memcached_key_error(key):
    """The ``InvalidCacheKey`` memcached would need for ``key``, or None.

    Django's own rules and messages come first (length in characters,
    spaces and control characters); memcached also limits the *encoded*
    key to 250 bytes, which non-ASCII keys can exceed.
    """
    for warning in memcache_key_warnings(key):
        return InvalidCacheKey(warning)
    if not key:
        return InvalidCacheKey("Cache key will cause errors if used with memcached: '' (empty)")
    if len(key.encode("utf-8")) > MEMCACHE_MAX_KEY_LENGTH:
        return InvalidCacheKey(
            "Cache key will cause errors if used with memcached: %r "
            "(longer than %s bytes once UTF-8 encoded)" % (key, MEMCACHE_MAX_KEY_LENGTH)
        )
    return None
