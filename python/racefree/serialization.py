"""How values become stored bytes and come back.

Defaults are Django's: pickle, so entries are shared with the stock
backends. These options change that, on every backend:

- ``SERIALIZER: "json"``: values other than bytes, str and int are stored
  as JSON; nothing read is ever unpickled.
- ``SIGN_VALUES: True``: every stored value carries an HMAC-SHA256 of the
  full cache key it is stored under (prefix and version included), its
  kind and its bytes, under the first of the signing keys
  (``SIGNING_KEYS``, else Django's ``SECRET_KEY`` followed by
  ``SECRET_KEY_FALLBACKS``); a value that no current key verifies for its
  key is a miss, logged, and is never loaded. So a value copied to another
  key does not verify, and neither does anything unsigned, integers
  included: a signed integer is not digits the server can count with, so
  ``incr`` reads, verifies, adds and signs it again in one atomic update
  (a compare-and-swap on memcached, the shard's lock on the file store,
  the row's lock on PostgreSQL).

- ``COMPRESS: "zlib"`` or ``"zstd"``: a value whose serialized bytes are
  longer than ``COMPRESS_MIN_SIZE`` (400) is stored compressed, in Rust
  with the GIL released, if that makes it smaller; integers never are
  (memcached counts their digits). Compressed bytes are what is signed.
  Reading does not depend on the option: any cache reads compressed
  entries of either codec, so compression can be turned off or changed
  with the cache warm.

The memcached and file stores keep ``(flags, bytes)`` with pymemcache's
flags (bytes as they are, str as UTF-8, int as decimal digits, anything
else pickled; zlib-compressed with pymemcache's ``FLAG_COMPRESSED``, so
its ``CompressedSerde`` and racefree read each other's values); the
PostgreSQL store keeps bytes only, and marks compressed ones with a
prefix no pickle or JSON starts with (``COMPRESSED_MARK``).
"""

import hashlib
import hmac
import json
import logging
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from racefree import _core
from racefree.backends._options import Option, boolean, non_negative_int, optional

logger = logging.getLogger("racefree")

FLAG_BYTES = 0
FLAG_PICKLE = 1 << 0
FLAG_INTEGER = 1 << 1
FLAG_LONG = 1 << 2
# zlib, as pymemcache's CompressedSerde writes and reads it.
FLAG_COMPRESSED = 1 << 3
FLAG_TEXT = 1 << 4
# racefree's own, unused by pymemcache.
FLAG_JSON = 1 << 8
FLAG_SIGNED = 1 << 9
# Always with FLAG_COMPRESSED: the codec is zstd, not zlib. pymemcache's
# CompressedSerde then fails in zlib.decompress instead of returning
# zstd bytes as a value.
FLAG_ZSTD = 1 << 10
COMPRESSION_FLAGS = {"zlib": FLAG_COMPRESSED, "zstd": FLAG_COMPRESSED | FLAG_ZSTD}

FORMATS = ("pickle", "json")
MAC_SIZE = hashlib.sha256().digest_size

CODECS = ("zlib", "zstd")
#: Levels each codec takes (COMPRESS_LEVEL); None is its own default
#: (zlib 6, as Python's zlib.compress; zstd 3).
COMPRESS_LEVELS = {"zlib": range(1, 10), "zstd": range(1, 23)}
#: pymemcache's CompressedSerde default: values longer than this are compressed.
COMPRESS_MIN_SIZE = 400
#: No stored value decompresses to more than this, so an entry crafted to
#: expand (a "zip bomb") costs at most this much memory; larger values are
#: stored uncompressed.
MAX_DECOMPRESSED_SIZE = 128 * 1024 * 1024
#: The PostgreSQL store keeps bytes only: compressed ones start with this,
#: then the codec's byte. No pickle (its first opcode) or JSON document
#: starts with NUL, so Django's DatabaseCache fails to unpickle such a
#: value instead of reading a wrong one.
COMPRESSED_MARK = b"\x00rfz"
CODEC_MARKS = {"zlib": COMPRESSED_MARK + b"\x01", "zstd": COMPRESSED_MARK + b"\x02"}
_MARKED_CODECS = {mark: codec for codec, mark in CODEC_MARKS.items()}
_MARK_SIZE = len(COMPRESSED_MARK) + 1


class UnverifiedValue(ValueError):
    """A stored value this cache must not load (unsigned, signed with an
    unknown key, or of a kind its serializer refuses)."""


def pickle_protocol(value: object) -> int:
    """Option check for PICKLE_PROTOCOL."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= pickle.HIGHEST_PROTOCOL:
        raise ValueError(f"a pickle protocol between 0 and {pickle.HIGHEST_PROTOCOL}")
    return value


def serializer_format(value: object) -> str:
    """Option check for SERIALIZER."""
    if value not in FORMATS:
        raise ValueError(" or ".join(repr(name) for name in FORMATS))
    return value


def compress_codec(value: object) -> str:
    """Option check for COMPRESS."""
    if value not in CODECS:
        raise ValueError(" or ".join(repr(name) for name in CODECS) + " (or None: off)")
    assert isinstance(value, str)
    return value


def compress_level(value: object) -> int:
    """Option check for COMPRESS_LEVEL (the codec's range is checked
    with COMPRESS, in ``serializer_from``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("an integer level (zlib 1-9, zstd 1-22) or None (the codec's default)")
    return value


def signing_keys(value: object) -> list[str | bytes]:
    """Option check for SIGNING_KEYS: the key that signs, then any older
    ones still accepted."""
    if isinstance(value, (str, bytes)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(
        isinstance(key, (str, bytes)) and key for key in value
    ):
        raise ValueError("a non-empty list of non-empty strings (the signing key first, then older ones)")
    return list(value)


def _derived(secret: str | bytes) -> bytes:
    # A key of its own for cache values, so a leaked MAC says nothing
    # about other uses of SECRET_KEY.
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(b"racefree.cache.sign-values:" + raw).digest()


@dataclass(frozen=True)
class Compression:
    """What COMPRESS, COMPRESS_LEVEL and COMPRESS_MIN_SIZE ask for."""

    codec: str
    #: None: the codec's default.
    level: int | None = None
    #: Values whose serialized bytes are longer than this are compressed.
    min_size: int = COMPRESS_MIN_SIZE


class Serializer:
    def __init__(
        self,
        format: str = "pickle",
        pickle_protocol: int = pickle.HIGHEST_PROTOCOL,
        keys: Sequence[str | bytes] | None = None,
        compression: Compression | None = None,
    ) -> None:
        self.format = format
        self.pickle_protocol = pickle_protocol
        self._keys = [_derived(key) for key in keys] if keys else None
        self.compression = compression
        # One comparison per write decides whether to try: without
        # compression no value is longer than this.
        self._compress_above = compression.min_size if compression else sys.maxsize

    # -- the body of a value: pickle or JSON ------------------------------

    def _dump_object(self, value: Any) -> tuple[int, bytes]:
        if self.format == "json":
            try:
                return FLAG_JSON, json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"cannot store a {type(value).__name__} with SERIALIZER 'json': {error}"
                ) from None
        return FLAG_PICKLE, pickle.dumps(value, self.pickle_protocol)

    def _load_object(self, kind: int, data: bytes) -> Any:
        if kind & FLAG_JSON:
            return json.loads(data)
        if kind & FLAG_PICKLE:
            if self.format == "json":
                raise UnverifiedValue("a pickled value, read by a cache with SERIALIZER 'json'")
            return pickle.loads(data)
        raise UnverifiedValue(f"unknown value flags {kind}")

    # -- compression ------------------------------------------------------

    def _compressed(self, data: bytes, overhead: int = 0) -> bytes | None:
        """``data`` compressed, if that saves bytes (``overhead`` counts
        what marks it as compressed); else None. Called only for data
        longer than ``_compress_above``."""
        compression = self.compression
        if compression is None or len(data) > MAX_DECOMPRESSED_SIZE:
            return None
        compressed = _core.compress(compression.codec, data, compression.level)
        return compressed if len(compressed) + overhead < len(data) else None

    @staticmethod
    def _decompressed(codec: str, data: bytes) -> bytes:
        # ValueError for anything that is not one complete stream of the
        # codec: the callers' readers make it a logged miss.
        return _core.decompress(codec, data, MAX_DECOMPRESSED_SIZE)

    # -- signatures -------------------------------------------------------

    @property
    def signs(self) -> bool:
        """Whether values are signed (SIGN_VALUES)."""
        return self._keys is not None

    def _mac(self, secret: bytes, key: str, kind: int, data: bytes) -> bytes:
        # The cache key, length first so that no two (key, data) pairs run
        # together the same way.
        named = key.encode("utf-8", "surrogatepass")
        message = len(named).to_bytes(4, "big") + named + kind.to_bytes(4, "big") + data
        return hmac.new(secret, message, hashlib.sha256).digest()

    def _sign(self, key: str, kind: int, data: bytes) -> bytes:
        assert self._keys is not None
        return self._mac(self._keys[0], key, kind, data) + data

    def _verified(self, key: str, kind: int, signed: bytes) -> bytes:
        assert self._keys is not None
        mac, data = signed[:MAC_SIZE], signed[MAC_SIZE:]
        if len(mac) == MAC_SIZE and any(
            hmac.compare_digest(mac, self._mac(secret, key, kind, data)) for secret in self._keys
        ):
            return data
        raise UnverifiedValue("not signed for this key with a current signing key")

    # -- (flags, bytes): memcached and the file store ---------------------

    def encode(self, key: str, value: Any) -> tuple[int, bytes]:
        """``(flags, bytes)`` for ``value`` stored under ``key``; exact
        types only, so a subclass of str or int is serialized and comes back
        as itself."""
        kind = type(value)
        if kind is int:
            flags, data = FLAG_INTEGER, b"%d" % value
        elif kind is bytes:
            flags, data = FLAG_BYTES, value
        elif kind is str:
            flags, data = FLAG_TEXT, value.encode()
        else:
            flags, data = self._dump_object(value)
        # Integers stay digits, which memcached's incr counts.
        if len(data) > self._compress_above and kind is not int:
            compressed = self._compressed(data)
            if compressed is not None:
                assert self.compression is not None
                flags, data = flags | COMPRESSION_FLAGS[self.compression.codec], compressed
        if self._keys:
            # What is signed is what is stored: a MAC is checked before
            # anything is decompressed.
            return flags | FLAG_SIGNED, self._sign(key, flags, data)
        return flags, data

    def decode(self, key: str, flags: int, data: bytes) -> Any:
        if self._keys:
            if not flags & FLAG_SIGNED:
                raise UnverifiedValue("not signed")
            flags &= ~FLAG_SIGNED
            data = self._verified(key, flags, data)
        elif flags & FLAG_SIGNED:
            raise UnverifiedValue("a signed value, read by a cache without SIGN_VALUES")
        if flags & FLAG_COMPRESSED:
            data = self._decompressed("zstd" if flags & FLAG_ZSTD else "zlib", data)
            flags &= ~(FLAG_COMPRESSED | FLAG_ZSTD)
        if flags & (FLAG_INTEGER | FLAG_LONG):
            return int(data)
        if flags == FLAG_BYTES:
            return data
        if flags & FLAG_TEXT:
            return data.decode()
        return self._load_object(flags, data)

    def decode_item_or(self, default: Any, key: Any, item: tuple[int, bytes]) -> Any:
        """The stored value of ``item`` (``(flags, bytes)``), or ``default``
        (logged) if it cannot be loaded: unverified, a class that moved,
        corrupt bytes. A miss is the safe answer."""
        try:
            return self.decode(key, item[0], item[1])
        except Exception:
            log_unloadable(key)
            return default

    def incremented(self, key: str, delta: int, item: tuple[int, bytes]) -> tuple[int, bytes]:
        """A signed counter's next item: verified, ``delta`` added, signed
        again (TypeError if it is not an integer)."""
        value = self.decode(key, item[0], item[1])
        if type(value) is not int:
            raise TypeError("the cached value is not an integer")
        return self.encode(key, value + delta)

    # -- bytes only: the PostgreSQL store ---------------------------------

    def dumps(self, key: str, value: Any) -> bytes:
        kind, data = self._dump_object(value)
        if len(data) > self._compress_above:
            compressed = self._compressed(data, overhead=_MARK_SIZE)
            if compressed is not None:
                assert self.compression is not None
                data = CODEC_MARKS[self.compression.codec] + compressed
        return self._sign(key, kind, data) if self._keys else data

    def loads(self, key: str, data: bytes) -> Any:
        kind = FLAG_JSON if self.format == "json" else FLAG_PICKLE
        if self._keys:
            data = self._verified(key, kind, data)
        if data.startswith(COMPRESSED_MARK):
            codec = _MARKED_CODECS.get(data[:_MARK_SIZE])
            if codec is None:
                raise ValueError(f"unknown compression mark {data[:_MARK_SIZE]!r}")
            data = self._decompressed(codec, data[_MARK_SIZE:])
        return self._load_object(kind, data)

    def load_or(self, default: Any, key: Any, data: bytes) -> Any:
        """``loads``, or ``default`` (logged): see ``decode_item_or``."""
        try:
            return self.loads(key, data)
        except Exception:
            log_unloadable(key)
            return default


def log_unloadable(key: Any) -> None:
    # Called from an except block: the traceback says why.
    logger.warning("cannot load the cached value of %r; treated as a miss", key, exc_info=True)


def serializer_options() -> list[Option]:
    """The OPTIONS every backend takes for its serializer."""
    return [
        Option("PICKLE_PROTOCOL", pickle.HIGHEST_PROTOCOL, pickle_protocol),
        Option("SERIALIZER", "pickle", serializer_format),
        Option("SIGN_VALUES", False, boolean),
        Option("SIGNING_KEYS", None, optional(signing_keys), secret=True),
        Option("COMPRESS", None, optional(compress_codec)),
        Option("COMPRESS_MIN_SIZE", COMPRESS_MIN_SIZE, non_negative_int),
        Option("COMPRESS_LEVEL", None, optional(compress_level)),
    ]


def serializer_from(backend: str, options: dict[str, Any]) -> Serializer:
    """The serializer the read OPTIONS ask for; ImproperlyConfigured for
    a combination that cannot work."""
    keys: list[str | bytes] | None = None
    if options["SIGN_VALUES"]:
        keys = options["SIGNING_KEYS"]
        if keys is None:
            keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
            if not settings.SECRET_KEY:
                raise ImproperlyConfigured(f"{backend}: SIGN_VALUES needs SIGNING_KEYS or a SECRET_KEY")
    elif options["SIGNING_KEYS"] is not None:
        raise ImproperlyConfigured(f"{backend}: OPTIONS['SIGNING_KEYS'] is set but SIGN_VALUES is not True")
    compression: Compression | None = None
    codec, level = options["COMPRESS"], options["COMPRESS_LEVEL"]
    if codec is not None:
        if level is not None and level not in COMPRESS_LEVELS[codec]:
            levels = COMPRESS_LEVELS[codec]
            raise ImproperlyConfigured(
                f"{backend}: OPTIONS['COMPRESS_LEVEL'] must be from {levels[0]} to {levels[-1]} "
                f"for {codec!r} (or None: its default), not {level!r}"
            )
        compression = Compression(codec, level, options["COMPRESS_MIN_SIZE"])
    elif level is not None:
        raise ImproperlyConfigured(f"{backend}: OPTIONS['COMPRESS_LEVEL'] is set but COMPRESS is not")
    return Serializer(options["SERIALIZER"], options["PICKLE_PROTOCOL"], keys, compression)
