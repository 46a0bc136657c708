"""Random sequences of every cache operation, on the real servers, checked
against a small in-memory model of Django's documented semantics
(hypothesis state machines, one per backend). A counterexample hypothesis
finds and shrinks becomes a regular test below the machine."""

import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from racefree.backends.db import DatabaseCache
from racefree.backends.filebased import FileBasedCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache

keys = st.sampled_from(["a", "b", "c", "ä"])
versions = st.sampled_from([None, 2])
# No digit-only str/bytes: memcached (as Django's memcached backends) can
# count with those, which the model does not follow.
values = st.one_of(
    st.integers(0, 1000),
    st.text(alphabet="xyzé", max_size=4),
    st.sampled_from([b"", b"\x00\xff", b"ab"]),
    st.lists(st.integers(-3, 3), max_size=3),
    st.none(),
)
deltas = st.integers(0, 5)
# None and inf: forever (as Django's); 300 and 1e12: live for the test (the
# latter beyond what memcached's 32-bit expiry holds); 0: expired at once.
timeouts = st.sampled_from([None, float("inf"), 300, 1e12, 0])
MISSING = object()


class CacheModel(RuleBasedStateMachine):
    """``self.model`` maps (key, version) to the value the cache must give."""

    cache = None
    clamps_at_zero = False  # memcached's decr stops at 0
    # memcached's invalidate keeps the value, marked stale: plain reads miss
    # it, but incr/decr count on from it, and delete removes it.
    keeps_invalidated = False

    def __init__(self):
        super().__init__()
        self.cache.clear()
        self.model = {}
        # memcached: slot -> the invalidated value still held.
        self.stale = {}

    def forget_stale(self, slot):
        self.stale.pop(slot, None)

    def slot(self, key, version):
        return key, version or 1

    @rule(key=keys, value=values, timeout=timeouts, version=versions)
    def set(self, key, value, timeout, version):
        self.cache.set(key, value, timeout, version=version)
        self.forget_stale(self.slot(key, version))
        if timeout == 0:
            self.model.pop(self.slot(key, version), None)
        else:
            self.model[self.slot(key, version)] = value

    @rule(key=keys, value=values, version=versions)
    def add(self, key, value, version):
        added = self.cache.add(key, value, version=version)
        assert added == (self.slot(key, version) not in self.model)
        self.model.setdefault(self.slot(key, version), value)
        self.forget_stale(self.slot(key, version))

    @rule(key=keys, version=versions)
    def get(self, key, version):
        assert self.cache.get(key, MISSING, version=version) == self.model.get(self.slot(key, version), MISSING)

    @rule(key=keys, version=versions)
    def has_key(self, key, version):
        assert self.cache.has_key(key, version=version) == (self.slot(key, version) in self.model)

    @rule(key=keys, version=versions)
    def delete(self, key, version):
        slot = self.slot(key, version)
        held = slot in self.model or slot in self.stale
        assert self.cache.delete(key, version=version) == held
        self.model.pop(slot, None)
        self.forget_stale(slot)

    @rule(key=keys, version=versions)
    def invalidate(self, key, version):
        slot = self.slot(key, version)
        assert self.cache.invalidate(key, version=version) == (slot in self.model or slot in self.stale)
        if slot in self.model and self.keeps_invalidated:
            self.stale[slot] = self.model[slot]
        self.model.pop(slot, None)

    @rule(key=keys, value=values, version=versions)
    def get_or_set(self, key, value, version):
        slot = self.slot(key, version)
        expected = self.model.get(slot, value)
        assert self.cache.get_or_set(key, lambda: value, version=version) == expected
        self.model[slot] = expected
        self.forget_stale(slot)

    @rule(key=keys, version=versions, timeout=st.sampled_from([None, float("inf"), 300, 1e12]))
    def touch(self, key, version, timeout):
        assert self.cache.touch(key, timeout, version=version) == (self.slot(key, version) in self.model)

    @rule(key=keys, delta=deltas, version=versions, down=st.booleans())
    def incr_or_decr(self, key, delta, version, down):
        slot = self.slot(key, version)
        current = self.model.get(slot, MISSING)
        model = self.model
        if current is MISSING and slot in self.stale:
            # Counting on from the invalidated number, which stays invalidated.
            current, model = self.stale[slot], self.stale
        operation = self.cache.decr if down else self.cache.incr
        if current is MISSING:
            with pytest.raises(ValueError):
                operation(key, delta, version=version)
        elif type(current) is not int:
            with pytest.raises(TypeError):
                operation(key, delta, version=version)
        else:
            expected = current - delta if down else current + delta
            if self.clamps_at_zero:
                expected = max(expected, 0)
            assert operation(key, delta, version=version) == expected
            model[slot] = expected

    @rule(chosen=st.lists(keys, max_size=4), version=versions)
    def get_many(self, chosen, version):
        expected = {key: self.model[self.slot(key, version)] for key in chosen if self.slot(key, version) in self.model}
        assert self.cache.get_many(chosen, version=version) == expected

    @rule(data=st.dictionaries(keys, values, max_size=3), version=versions)
    def set_many(self, data, version):
        assert self.cache.set_many(data, version=version) == []
        for key, value in data.items():
            self.model[self.slot(key, version)] = value
            self.forget_stale(self.slot(key, version))

    @rule(chosen=st.lists(keys, max_size=3), version=versions)
    def delete_many(self, chosen, version):
        self.cache.delete_many(chosen, version=version)
        for key in chosen:
            self.model.pop(self.slot(key, version), None)
            self.forget_stale(self.slot(key, version))

    @rule(key=keys, version=st.sampled_from([1, 2]), up=st.booleans())
    def change_version(self, key, version, up):
        # Django moves the value to version +/- 1 (get, set, delete).
        target = version + 1 if up else version - 1
        change = self.cache.incr_version if up else self.cache.decr_version
        if (key, version) not in self.model:
            with pytest.raises(ValueError):
                change(key, version=version)
            return
        assert change(key, version=version) == target
        self.model[(key, target)] = self.model.pop((key, version))
        self.forget_stale((key, target))

    @rule()
    def clear(self):
        self.cache.clear()
        self.model.clear()
        self.stale.clear()

    @invariant()
    def agrees_on_every_key(self):
        for (key, version), value in self.model.items():
            assert self.cache.get(key, MISSING, version=version) == value, (key, version)


class WholeSecondsModel(CacheModel):
    """A store that keeps expiry in whole seconds, as Django's RedisCache:
    a timeout under one second (but above 0) is "don't cache" too."""

    @rule(key=keys, value=values, timeout=st.sampled_from([0.5, 0.999, 1e-9]), version=versions)
    def set_for_under_a_second(self, key, value, timeout, version):
        self.cache.set(key, value, timeout, version=version)
        self.model.pop(self.slot(key, version), None)

    @rule(key=keys, timeout=st.sampled_from([0.5, 0]), version=versions)
    def touch_for_under_a_second(self, key, timeout, version):
        assert self.cache.touch(key, timeout, version=version) == (self.slot(key, version) in self.model)
        self.model.pop(self.slot(key, version), None)


MACHINE_SETTINGS = settings(
    max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)


def check(cache, clamps_at_zero=False, keeps_invalidated=False, model=CacheModel):
    machine = type("Machine", (model,), {"cache": cache, "clamps_at_zero": clamps_at_zero,
                                         "keeps_invalidated": keeps_invalidated})
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


def test_memcached_follows_the_model(fresh_memcached):
    # Its own server: the machine's clear() flushes it.
    check(MemcachedCache(fresh_memcached.location, {"KEY_PREFIX": uuid.uuid4().hex[:6]}), clamps_at_zero=True,
          keeps_invalidated=True)


def test_redis_follows_the_model(fresh_redis):
    # Its own server: the machine's clear() is FLUSHDB. Redis counts below
    # 0 and invalidate deletes, as the model does.
    check(RedisCache(fresh_redis.location, {"KEY_PREFIX": uuid.uuid4().hex[:6]}), model=WholeSecondsModel)


def test_signed_redis_follows_the_model(fresh_redis):
    # Nothing stored is digits here: incr reads, adds and writes back. (Not
    # JSON, which on Redis has no bytes: test_serialization covers it.)
    check(RedisCache(fresh_redis.location, {"OPTIONS": {"SIGN_VALUES": True, "SIGNING_KEYS": ["k"]}}),
          model=WholeSecondsModel)


def test_file_store_follows_the_model(tmp_path):
    check(FileBasedCache(str(tmp_path), {"OPTIONS": {"MAX_ENTRIES": 1_000_000}}))


def test_database_cache_follows_the_model(table):
    check(DatabaseCache(table, {"OPTIONS": {"MAX_ENTRIES": 1_000_000}}))


def test_signed_json_file_store_follows_the_model(tmp_path):
    check(FileBasedCache(str(tmp_path), {"OPTIONS": {
        "MAX_ENTRIES": 1_000_000, "SERIALIZER": "json", "SIGN_VALUES": True, "SIGNING_KEYS": ["k"]}}))
