"""django-redis's set, hash and sorted-set methods on racefree's Redis backend.

Code written against django-redis (``cache.sadd(...)``, ``cache.zadd(...)``,
``cache.hset(...)``) runs unchanged: the same names, arguments and return
values, members encoded as django-redis encodes them (integers as digits,
except in sorted sets, everything else pickled), so both read each other's
entries on one server. Each call is one Redis command, atomic on the
server; each has a native async twin (``asadd`` ...). Keys of a command
that names several (``sinter``, ``smove``, ``sunionstore`` ...) must share
a slot in a cluster: give them one hash tag (``"{user:7}:a"``).

Where racefree differs from django-redis 7, it says so in the method:
``sscan`` returns every member (not one page) and its ``match`` is a
shell pattern over str members, ``smove`` applies ``version`` to both keys,
and ``hget``/``hgetall`` read what ``hset`` wrote. With SIGN_VALUES, members and hash values are signed, but not tied
to the key holding them, since Redis moves them between keys.
"""

import fnmatch
import json
import math
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from racefree._core import RedisClient
from racefree.backends._ops import store_operation, with_async_twins
from racefree.exceptions import CacheError
from racefree.serialization import Serializer

#: What signs members and hash values (in place of the key a value is
#: signed for), so a member moved to another key still verifies.
MEMBER_CONTEXT = "racefree:member"
#: A member that could not be loaded (logged); left out of results.
_UNLOADABLE = object()
#: A stored value that may be an integer written as digits.
DIGIT_START = frozenset(b"-0123456789")
#: Members asked for per SSCAN round trip (django-redis's default count).
SSCAN_COUNT = 10


def _whole(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    return value


def _score(name: str, value: object, bound: bool = False) -> str:
    """A score as Redis reads it: a number, or a str Redis takes ("inf",
    "-inf", "+inf", and for range ``bound``s an exclusive "(1.5")."""
    if isinstance(value, str):
        number = value[1:] if bound and value.startswith("(") else value
        try:
            if not math.isnan(float(number)):
                return value
        except ValueError:
            pass
        raise ValueError(f"{name} must be a number, 'inf', '-inf'{' or (number' if bound else ''}, not {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{name} cannot be NaN")
    return repr(value) if isinstance(value, float) else str(value)


def _field(value: object) -> str:
    """A hash field name: a str, or a number (sent as its text, as redis-py does)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    raise TypeError(f"a hash field is a str, not {value!r}")


def _pairs(flat: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """A flat ``[member, score, ...]`` reply as pairs."""
    it = iter(flat)
    return zip(it, it)


@with_async_twins
class RedisDataStructures:
    """Mixin for racefree's RedisCache, which provides what is declared
    here."""

    _store: RedisClient
    _serializer: Serializer
    _counts_natively: bool
    _writes_plain_pickles: bool
    _member_protocol: int

    if TYPE_CHECKING:
        def _key(self, key: object, version: int | None) -> str: ...
        def _keys(self, keys: Iterable[object], version: int | None) -> list[str]: ...
        def _server_failed(self, operation: str, error: CacheError) -> None: ...
        def _decoded_like_django(self, default: Any, key: Any, data: bytes) -> Any: ...
        def a_scan_page(self, key: str, cursor: int, count: int) -> Awaitable[tuple[int, list[bytes]]]: ...

    # -- members ------------------------------------------------------------

    def _member(self, value: Any, allow_int: bool = True) -> bytes:
        """``value`` as django-redis encodes a member: an int (exactly) as
        its digits, unless ``allow_int`` is False (sorted sets) or values
        are signed; anything else pickled with django-redis's protocol, as
        django-redis's JSON, or (signed, compressed) as the serializer
        writes it."""
        serializer = self._serializer
        if allow_int and type(value) is int and not serializer.signs:
            return b"%d" % value
        if serializer.format == "json" and not serializer.signs and serializer.compression is None:
            # django-redis's JSON (its separators), so both find the same
            # list or dict members.
            return json.dumps(value, allow_nan=False).encode()
        if self._writes_plain_pickles and self._counts_natively:
            return pickle.dumps(value, self._member_protocol)
        return self._serializer.dumps(MEMBER_CONTEXT, value)

    def _members(self, values: Iterable[Any], allow_int: bool = True) -> list[bytes]:
        return [self._member(value, allow_int) for value in values]

    def _loaded(self, data: bytes | None) -> Any:
        """A member or hash value read back (None stays None; one that
        cannot be loaded is ``_UNLOADABLE``, logged)."""
        if data is None:
            return None
        if self._counts_natively:
            # Digits and pickles, as values are read.
            return self._decoded_like_django(_UNLOADABLE, MEMBER_CONTEXT, data)
        if not self._serializer.signs and data[:1] and data[0] in DIGIT_START:
            try:
                return int(data)
            except ValueError:
                pass
        return self._serializer.load_or(_UNLOADABLE, MEMBER_CONTEXT, data)

    def _loaded_all(self, found: Iterable[bytes]) -> list[Any]:
        return [member for member in map(self._loaded, found) if member is not _UNLOADABLE]

    def _one(self, data: bytes | None) -> Any:
        member = self._loaded(data)
        return None if member is _UNLOADABLE else member

    def _scored(self, flat: list[bytes], score_cast_func: Callable[[bytes], Any] = float) -> list[tuple[Any, Any]]:
        pairs = ((self._loaded(member), score_cast_func(score)) for member, score in _pairs(flat))
        return [(member, score) for member, score in pairs if member is not _UNLOADABLE]

    # -- the one store call ---------------------------------------------------

    @store_operation
    def _command(
        self, operation: str, keys: list[str], args: list[Any], read: bool, fallback: Any
    ) -> Generator[Any, Any, Any]:
        """One command's reply; ``fallback`` for a server failure that
        IGNORE_EXCEPTIONS ignores."""
        try:
            return (yield self._store.command, (keys, args, read))
        except CacheError as error:
            self._server_failed(operation, error)
            return fallback

    # -- sets -----------------------------------------------------------------

    @store_operation
    def sadd(self, key: Any, *values: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Add ``values`` to the set; how many were not in it yet."""
        if not values:
            raise TypeError("sadd takes at least one value")
        key = self._key(key, version)
        return (yield self._command, ("sadd", [key], ["SADD", key, *self._members(values)], False, 0))

    @store_operation
    def srem(self, key: Any, *members: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Remove ``members`` from the set; how many were in it."""
        if not members:
            raise TypeError("srem takes at least one member")
        key = self._key(key, version)
        return (yield self._command, ("srem", [key], ["SREM", key, *self._members(members)], False, 0))

    @store_operation
    def scard(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """How many members the set has (0 if it is missing)."""
        key = self._key(key, version)
        return (yield self._command, ("scard", [key], ["SCARD", key], True, 0))

    @store_operation
    def sismember(self, key: Any, member: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        found = yield self._command, ("sismember", [key], ["SISMEMBER", key, self._member(member)], True, 0)
        return bool(found)

    @store_operation
    def smismember(self, key: Any, *members: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Whether each of ``members`` is in the set, in order."""
        if not members:
            raise TypeError("smismember takes at least one member")
        key = self._key(key, version)
        args = ["SMISMEMBER", key, *self._members(members)]
        found = yield self._command, ("smismember", [key], args, True, [0] * len(members))
        return [bool(flag) for flag in found]

    @store_operation
    def smembers(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """The set's members (an empty set if it is missing)."""
        key = self._key(key, version)
        return set(self._loaded_all((yield self._command, ("smembers", [key], ["SMEMBERS", key], True, []))))

    @store_operation
    def smove(
        self, source: Any, destination: Any, member: Any, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        """Move ``member`` from one set to another, atomically; True if it
        was in ``source``. ``version`` applies to both keys (django-redis
        applies it to ``source`` only)."""
        keys = self._keys([source, destination], version)
        moved = yield self._command, ("smove", keys, ["SMOVE", *keys, self._member(member)], False, 0)
        return bool(moved)

    @store_operation
    def spop(self, key: Any, count: int | None = None, version: int | None = None) -> Generator[Any, Any, Any]:
        """Remove and return a random member (None if the set is empty),
        or with ``count`` a set of up to that many."""
        key = self._key(key, version)
        if count is None:
            return self._one((yield self._command, ("spop", [key], ["SPOP", key], False, None)))
        if _whole("count", count) < 0:
            raise ValueError(f"spop's count must be 0 or more, not {count}")
        popped = yield self._command, ("spop", [key], ["SPOP", key, str(count)], False, [])
        return set(self._loaded_all(popped))

    @store_operation
    def srandmember(
        self, key: Any, count: int | None = None, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        """A random member (None if the set is empty), or with ``count`` a
        list of that many: distinct if positive, possibly repeated if
        negative, as in Redis."""
        key = self._key(key, version)
        if count is None:
            return self._one((yield self._command, ("srandmember", [key], ["SRANDMEMBER", key], True, None)))
        args = ["SRANDMEMBER", key, str(_whole("count", count))]
        return self._loaded_all((yield self._command, ("srandmember", [key], args, True, [])))

    @store_operation
    def _combined(self, command: str, keys: tuple[Any, ...], version: int | None) -> Generator[Any, Any, Any]:
        """SDIFF, SINTER or SUNION of ``keys``, as a set."""
        if not keys:
            raise TypeError(f"{command.lower()} takes at least one key")
        made = self._keys(keys, version)
        return set(self._loaded_all((yield self._command, (command.lower(), made, [command, *made], True, []))))

    @store_operation
    def _combined_into(
        self, command: str, destination: Any, keys: tuple[Any, ...], version_dest: int | None,
        version_keys: int | None,
    ) -> Generator[Any, Any, Any]:
        """SDIFFSTORE, SINTERSTORE or SUNIONSTORE into ``destination``; its size."""
        if not keys:
            raise TypeError(f"{command.lower()} takes at least one key to read")
        made = [self._key(destination, version_dest), *self._keys(keys, version_keys)]
        return (yield self._command, (command.lower(), made, [command, *made], False, 0))

    @store_operation
    def sdiff(self, *keys: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Members of the first set that are in none of the others."""
        return (yield self._combined, ("SDIFF", keys, version))

    @store_operation
    def sinter(self, *keys: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Members that are in every one of the sets."""
        return (yield self._combined, ("SINTER", keys, version))

    @store_operation
    def sunion(self, *keys: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Members of any of the sets."""
        return (yield self._combined, ("SUNION", keys, version))

    @store_operation
    def sdiffstore(
        self, dest: Any, *keys: Any, version_dest: int | None = None, version_keys: int | None = None
    ) -> Generator[Any, Any, Any]:
        """Store ``sdiff(*keys)`` in ``dest`` (replacing it); its size."""
        return (yield self._combined_into, ("SDIFFSTORE", dest, keys, version_dest, version_keys))

    @store_operation
    def sinterstore(self, dest: Any, *keys: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Store ``sinter(*keys)`` in ``dest`` (replacing it); its size."""
        return (yield self._combined_into, ("SINTERSTORE", dest, keys, version, version))

    @store_operation
    def sunionstore(self, destination: Any, *keys: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Store ``sunion(*keys)`` in ``destination`` (replacing it); its size."""
        return (yield self._combined_into, ("SUNIONSTORE", destination, keys, version, version))

    @store_operation
    def _scan_page(self, key: str, cursor: int, count: int) -> Generator[Any, Any, Any]:
        """One SSCAN page: ``(next cursor, members' bytes)``."""
        args = ["SSCAN", key, str(cursor), "COUNT", str(count)]
        page = yield self._command, ("sscan", [key], args, True, [b"0", []])
        return int(page[0]), page[1]

    def _scan_args(self, key: Any, match: str | None, count: int | None, version: int | None) -> tuple[str, int]:
        if match is not None and not isinstance(match, str):
            raise TypeError(f"match is a shell pattern (a str) or None, not {match!r}")
        count = SSCAN_COUNT if count is None else _whole("count", count)
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        return self._key(key, version), count

    @staticmethod
    def _matching(members: list[Any], match: str | None) -> Iterator[Any]:
        """Members whose text (a str member, or an int's digits) matches
        the shell pattern ``match``; all of them without one."""
        for member in members:
            if match is None or (
                (type(member) is str or type(member) is int) and fnmatch.fnmatchcase(str(member), match)
            ):
                yield member

    @store_operation
    def sscan(
        self, key: Any, match: str | None = None, count: int | None = SSCAN_COUNT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        """The set's members, read ``count`` at a time with SSCAN (so a
        large set does not block the server); with ``match``, those whose
        text matches that shell pattern. Unlike django-redis's, every
        member, not the first page, and a pattern over the members as
        given, not over their pickles."""
        key, count = self._scan_args(key, match, count, version)
        found: set[Any] = set()
        cursor = 0
        while True:
            cursor, page = yield self._scan_page, (key, cursor, count)
            found.update(self._matching(self._loaded_all(page), match))
            if not cursor:
                return found

    def sscan_iter(
        self, key: Any, match: str | None = None, count: int | None = SSCAN_COUNT, version: int | None = None
    ) -> Iterator[Any]:
        """``sscan``'s members one by one, a page at a time (a member
        added or removed meanwhile may or may not come, and one may come
        twice, as with SSCAN)."""
        key, count = self._scan_args(key, match, count, version)
        cursor = 0
        while True:
            cursor, page = self._scan_page(key, cursor, count)
            yield from self._matching(self._loaded_all(page), match)
            if not cursor:
                return

    async def asscan_iter(
        self, key: Any, match: str | None = None, count: int | None = SSCAN_COUNT, version: int | None = None
    ) -> AsyncIterator[Any]:
        """``sscan_iter``, natively async."""
        key, count = self._scan_args(key, match, count, version)
        cursor = 0
        while True:
            cursor, page = await self.a_scan_page(key, cursor, count)
            for member in self._matching(self._loaded_all(page), match):
                yield member
            if not cursor:
                return

    # -- hashes ---------------------------------------------------------------

    @store_operation
    def hset(
        self, key: Any, field: Any = None, value: Any = None, mapping: Mapping[Any, Any] | None = None,
        version: int | None = None,
    ) -> Generator[Any, Any, Any]:
        """Set ``field`` to ``value`` and/or every field of ``mapping``;
        how many fields are new. A value of None is stored (and read back
        as None)."""
        pairs: list[Any] = []
        if field is not None:
            pairs += [_field(field), self._member(value)]
        for name, item in (mapping or {}).items():
            pairs += [_field(name), self._member(item)]
        if not pairs:
            raise ValueError("hset needs a field and value, or a mapping with at least one field")
        key = self._key(key, version)
        return (yield self._command, ("hset", [key], ["HSET", key, *pairs], False, 0))

    @store_operation
    def hdel(self, key: Any, field: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Remove ``field``; 1 if it was there, else 0."""
        key = self._key(key, version)
        return (yield self._command, ("hdel", [key], ["HDEL", key, _field(field)], False, 0))

    @store_operation
    def hlen(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """How many fields the hash has (0 if it is missing)."""
        key = self._key(key, version)
        return (yield self._command, ("hlen", [key], ["HLEN", key], True, 0))

    @store_operation
    def hkeys(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """The hash's field names, as str."""
        key = self._key(key, version)
        names = yield self._command, ("hkeys", [key], ["HKEYS", key], True, [])
        return [name.decode("utf-8", "replace") for name in names]

    @store_operation
    def hexists(self, key: Any, field: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        return bool((yield self._command, ("hexists", [key], ["HEXISTS", key, _field(field)], True, 0)))

    @store_operation
    def hget(self, key: Any, field: Any, default: Any = None, version: int | None = None) -> Generator[Any, Any, Any]:
        """The value ``hset`` stored at ``field``, or ``default`` (not in
        django-redis, whose hashes are written through the cache and read
        through the raw client)."""
        key = self._key(key, version)
        data = yield self._command, ("hget", [key], ["HGET", key, _field(field)], True, None)
        value = default if data is None else self._loaded(data)
        return default if value is _UNLOADABLE else value

    @store_operation
    def hgetall(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Every field and its value, as a dict (empty if the hash is missing)."""
        key = self._key(key, version)
        flat = yield self._command, ("hgetall", [key], ["HGETALL", key], True, [])
        found = {name.decode("utf-8", "replace"): self._loaded(value) for name, value in _pairs(flat)}
        return {name: value for name, value in found.items() if value is not _UNLOADABLE}

    # -- sorted sets ----------------------------------------------------------

    @store_operation
    def zadd(
        self, key: Any, mapping: Mapping[Any, Any], nx: bool = False, xx: bool = False, ch: bool = False,
        incr: bool = False, gt: bool = False, lt: bool = False, version: int | None = None,
    ) -> Generator[Any, Any, Any]:
        """Add members with their scores (``{member: score}``): how many
        were added (with ``ch``, added or changed); with ``incr``, the one
        member's new score, or None if ``nx``/``xx``/``gt``/``lt`` left it."""
        if not isinstance(mapping, Mapping) or not mapping:
            raise ValueError("zadd needs a mapping of at least one member to its score")
        if nx and xx:
            raise ValueError("zadd takes nx or xx, not both")
        if gt and lt or nx and (gt or lt):
            raise ValueError("zadd takes one of nx, gt and lt")
        if incr and len(mapping) != 1:
            raise ValueError("zadd with incr takes exactly one member")
        options = (("NX", nx), ("XX", xx), ("GT", gt), ("LT", lt), ("CH", ch), ("INCR", incr))
        flags = [name for name, on in options if on]
        pairs: list[Any] = []
        for member, score in mapping.items():
            pairs += [_score("a score", score), self._member(member, allow_int=False)]
        key = self._key(key, version)
        added = yield self._command, ("zadd", [key], ["ZADD", key, *flags, *pairs], False, None if incr else 0)
        return (None if added is None else float(added)) if incr else added

    @store_operation
    def zincrby(self, key: Any, amount: Any, value: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Add ``amount`` to the member's score (a missing one starts at
        0); the new score."""
        key = self._key(key, version)
        args = ["ZINCRBY", key, _score("amount", amount), self._member(value, allow_int=False)]
        score = yield self._command, ("zincrby", [key], args, False, None)
        return None if score is None else float(score)

    @store_operation
    def zcard(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        key = self._key(key, version)
        return (yield self._command, ("zcard", [key], ["ZCARD", key], True, 0))

    @store_operation
    def zcount(self, key: Any, min: Any, max: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """How many members score within ``min`` and ``max`` (numbers,
        "-inf"/"+inf", or "(x" for an exclusive bound)."""
        key = self._key(key, version)
        args = ["ZCOUNT", key, _score("min", min, bound=True), _score("max", max, bound=True)]
        return (yield self._command, ("zcount", [key], args, True, 0))

    @store_operation
    def zscore(self, key: Any, value: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """The member's score, or None."""
        key = self._key(key, version)
        args = ["ZSCORE", key, self._member(value, allow_int=False)]
        score = yield self._command, ("zscore", [key], args, True, None)
        return None if score is None else float(score)

    @store_operation
    def zrank(
        self, key: Any, value: Any, withscore: bool = False, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        """The member's rank, lowest score first (None if it is missing);
        with ``withscore`` (Redis 7.2+, Valkey), ``[rank, score]``."""
        key = self._key(key, version)
        args = ["ZRANK", key, self._member(value, allow_int=False), *(["WITHSCORE"] if withscore else [])]
        rank = yield self._command, ("zrank", [key], args, True, None)
        return [rank[0], float(rank[1])] if withscore and rank is not None else rank

    @store_operation
    def zrem(self, key: Any, *values: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Remove members; how many there were."""
        if not values:
            raise TypeError("zrem takes at least one value")
        key = self._key(key, version)
        args = ["ZREM", key, *self._members(values, allow_int=False)]
        return (yield self._command, ("zrem", [key], args, False, 0))

    @store_operation
    def zremrangebyscore(self, key: Any, min: Any, max: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Remove the members scoring within ``min`` and ``max``; how many."""
        key = self._key(key, version)
        args = ["ZREMRANGEBYSCORE", key, _score("min", min, bound=True), _score("max", max, bound=True)]
        return (yield self._command, ("zremrangebyscore", [key], args, False, 0))

    @store_operation
    def _popped(self, command: str, key: Any, count: int | None, version: int | None) -> Generator[Any, Any, Any]:
        """ZPOPMAX or ZPOPMIN: ``(member, score)``, or None; with ``count``
        a list of up to that many."""
        key = self._key(key, version)
        args = [command, key] if count is None else [command, key, str(_whole("count", count))]
        popped = self._scored((yield self._command, (command.lower(), [key], args, False, [])))
        if count is None:
            return popped[0] if popped else None
        return popped

    @store_operation
    def zpopmax(self, key: Any, count: int | None = None, version: int | None = None) -> Generator[Any, Any, Any]:
        """Remove and return the highest-scoring member as ``(member,
        score)`` (None if empty), or with ``count`` a list of up to that many."""
        return (yield self._popped, ("ZPOPMAX", key, count, version))

    @store_operation
    def zpopmin(self, key: Any, count: int | None = None, version: int | None = None) -> Generator[Any, Any, Any]:
        """``zpopmax`` for the lowest scores."""
        return (yield self._popped, ("ZPOPMIN", key, count, version))

    @store_operation
    def _ranged(
        self, operation: str, key: Any, args: list[Any], withscores: bool, score_cast_func: Callable[[bytes], Any],
        version: int | None,
    ) -> Generator[Any, Any, Any]:
        """A range reply: members, or with ``withscores`` ``(member, score)``
        pairs, the score made by ``score_cast_func`` from its bytes (as in
        redis-py)."""
        key = self._key(key, version)
        command = [args[0], key, *args[1:], *(["WITHSCORES"] if withscores else [])]
        found = yield self._command, (operation, [key], command, True, [])
        return self._scored(found, score_cast_func) if withscores else self._loaded_all(found)

    @staticmethod
    def _limit(start: int | None, num: int | None) -> list[str]:
        if start is None and num is None:
            return []
        if start is None or num is None:
            raise ValueError("start and num go together (LIMIT start num)")
        return ["LIMIT", str(_whole("start", start)), str(_whole("num", num))]

    @store_operation
    def zrange(
        self, key: Any, start: int, end: int, desc: bool = False, withscores: bool = False,
        score_cast_func: Callable[[bytes], Any] = float, version: int | None = None,
    ) -> Generator[Any, Any, Any]:
        """Members from rank ``start`` to ``end`` (inclusive; negative
        counts from the end), lowest score first, or with ``desc`` highest."""
        args = ["ZRANGE", str(_whole("start", start)), str(_whole("end", end)), *(["REV"] if desc else [])]
        return (yield self._ranged, ("zrange", key, args, withscores, score_cast_func, version))

    @store_operation
    def zrevrange(
        self, key: Any, start: int, end: int, withscores: bool = False,
        score_cast_func: Callable[[bytes], Any] = float, version: int | None = None,
    ) -> Generator[Any, Any, Any]:
        """``zrange`` highest score first."""
        args = ["ZREVRANGE", str(_whole("start", start)), str(_whole("end", end))]
        return (yield self._ranged, ("zrevrange", key, args, withscores, score_cast_func, version))

    @store_operation
    def zrangebyscore(
        self, key: Any, min: Any, max: Any, start: int | None = None, num: int | None = None,
        withscores: bool = False, score_cast_func: Callable[[bytes], Any] = float, version: int | None = None,
    ) -> Generator[Any, Any, Any]:
        """Members scoring within ``min`` and ``max``, lowest first; with
        ``start`` and ``num``, that page of them."""
        args = ["ZRANGEBYSCORE", _score("min", min, bound=True), _score("max", max, bound=True),
                *self._limit(start, num)]
        return (yield self._ranged, ("zrangebyscore", key, args, withscores, score_cast_func, version))

    @store_operation
    def zrevrangebyscore(
        self, key: Any, max: Any, min: Any, start: int | None = None, num: int | None = None,
        withscores: bool = False, score_cast_func: Callable[[bytes], Any] = float, version: int | None = None,
    ) -> Generator[Any, Any, Any]:
        """``zrangebyscore`` highest first (``max`` before ``min``, as in Redis)."""
        args = ["ZREVRANGEBYSCORE", _score("max", max, bound=True), _score("min", min, bound=True),
                *self._limit(start, num)]
        return (yield self._ranged, ("zrevrangebyscore", key, args, withscores, score_cast_func, version))
