"""Cache key rules shared by the Rust binding and the Python backends:
Django's rules, without Django's per-call overhead when the key rules are
the stock ones."""

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.core.cache.backends.base import (
    MEMCACHE_MAX_KEY_LENGTH,
    BaseCache,
    InvalidCacheKey,
    default_key_func,
    memcache_key_warnings,
)

if TYPE_CHECKING:
    from django.core.cache.backends.base import BaseCache as _CacheBase
else:
    _CacheBase = object


def memcached_key_error(key: str) -> InvalidCacheKey | None:
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


# Django's memcached_error_chars_re: what memcached cannot take in a key.
UNPORTABLE = re.compile(r"[\x00-\x20\x7f]")


class KeyMaking(_CacheBase):
    """Mixin for a BaseCache subclass. ``_key(key, version)`` is
    ``make_and_validate_key`` with the default key function inlined.

    ``checks_keys_natively``: the store itself refuses invalid keys (with
    Django's message), so the stock path skips the Python check; otherwise
    the stock path calls ``validate_key`` only for a key that would fail it.
    """

    checks_keys_natively = False

    def _init_key_making(self, base_class: type[BaseCache]) -> None:
        # A subclass with its own make_key or validate_key gets them called.
        cls = type(self)
        self._stock_key_rules = cls.make_key is base_class.make_key and cls.validate_key is base_class.validate_key

    def _key(self, key: object, version: int | None) -> str:
        if self._stock_key_rules and self.key_func is default_key_func:
            key = "%s:%s:%s" % (self.key_prefix, self.version if version is None else version, key)
            if not self.checks_keys_natively and (len(key) > MEMCACHE_MAX_KEY_LENGTH or UNPORTABLE.search(key)):
                self.validate_key(key)
            return key
        return self.make_and_validate_key(key, version=version)

    def _keys(self, keys: Iterable[object], version: int | None) -> list[str]:
        """``_key`` of each of ``keys``, in order: for batches, where the
        per-key call, format and check would cost more than the store's
        share of the call (the rules are checked on all keys at once)."""
        if not (self._stock_key_rules and self.key_func is default_key_func):
            return [self.make_and_validate_key(key, version=version) for key in keys]
        prefix = "%s:%s:" % (self.key_prefix, self.version if version is None else version)
        # Django formats the key with %s: str() of anything else.
        made = [prefix + key if type(key) is str else "%s%s" % (prefix, key) for key in keys]
        if not self.checks_keys_natively and made:
            if max(map(len, made)) > MEMCACHE_MAX_KEY_LENGTH or UNPORTABLE.search("".join(made)):
                for key in made:
                    if len(key) > MEMCACHE_MAX_KEY_LENGTH or UNPORTABLE.search(key):
                        self.validate_key(key)
        return made
