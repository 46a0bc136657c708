"""Values as ``(flags, bytes)``, with pymemcache's serializer flags.

Both the memcached and the file store keep values this way: bytes as
they are, str as UTF-8, int as decimal digits (so the stores can count
with them atomically), anything else pickled. The memcached flags are
pymemcache's, so entries are shared with Django's ``PyMemcacheCache``.
"""

import logging
import pickle

logger = logging.getLogger("racefree")

FLAG_BYTES = 0
FLAG_PICKLE = 1 << 0
FLAG_INTEGER = 1 << 1
FLAG_LONG = 1 << 2
FLAG_TEXT = 1 << 4


def encode(value, pickle_protocol):
    """``(flags, bytes)`` for ``value``; exact types only, so a subclass of
    str or int is pickled and comes back as itself."""
    kind = type(value)
    if kind is bytes:
        return FLAG_BYTES, value
    if kind is str:
        return FLAG_TEXT, value.encode()
    if kind is int:
        return FLAG_INTEGER, b"%d" % value
    return FLAG_PICKLE, pickle.dumps(value, pickle_protocol)


def decode(flags, data):
    if flags == FLAG_BYTES:
        return data
    if flags & FLAG_TEXT:
        return data.decode()
    if flags & (FLAG_INTEGER | FLAG_LONG):
        return int(data)
    if flags & FLAG_PICKLE:
        return pickle.loads(data)
    return data


def decode_or(default, key, flags, data):
    """The stored value, or ``default`` (logged) if it cannot be loaded: a
    class that moved, a corrupt pickle. A cache miss is the safe answer."""
    try:
        return decode(flags, data)
    except Exception:
        logger.warning("cannot load the cached value of %r; treated as a miss", key, exc_info=True)
        return default


def decode_found(found, key_map):
    """``get_many``'s result: ``{original key: value}`` from a store's
    ``{made key: (flags, data)}``; values that cannot be loaded are misses."""
    missing = object()
    result = {}
    for key, (flags, data) in found.items():
        value = decode_or(missing, key, flags, data)
        if value is not missing:
            result[key_map[key]] = value
    return result


def pickle_protocol(value):
    """Option check for PICKLE_PROTOCOL."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= pickle.HIGHEST_PROTOCOL:
        raise ValueError(f"a pickle protocol between 0 and {pickle.HIGHEST_PROTOCOL}")
    return value
