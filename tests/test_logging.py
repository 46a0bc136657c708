"""Outages and reconnects logged on the ``racefree`` logger: one warning
when a server stops answering, one line when it answers again (with how
many calls failed meanwhile), on real memcached, Redis and PostgreSQL
servers that the tests kill and restart."""

import asyncio
import logging
import re
import time

import pytest
from support.load import load_threads

from racefree.backends.db import DatabaseCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache
from racefree.exceptions import CacheError

RECOVERED = re.compile(r"is answering again after [0-9.]+ s \((\d+) failed calls? or dials? meanwhile\)")


@pytest.fixture(params=["memcached", "redis"])
def server(request):
    """(a server of the test's own that it kills and restarts, a racefree
    cache on it, the name the log lines give the server)."""
    options = {"OPTIONS": {"CONNECT_TIMEOUT": 0.5, "IO_TIMEOUT": 0.5}}
    if request.param == "memcached":
        process = request.getfixturevalue("fresh_memcached")
        return process, MemcachedCache(process.location, options), f"memcached server {process.location}"
    process = request.getfixturevalue("fresh_redis")
    return process, RedisCache(process.location, options), f"Redis server 127.0.0.1:{process.port}"


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.INFO, logger="racefree")
    return caplog


def server_lines(log, server):
    """(level, message) of the outage/recovery lines naming `server`."""
    return [
        (record.levelname, record.getMessage())
        for record in log.records
        if record.name == "racefree" and record.getMessage().startswith(server)
    ]


def failed_meanwhile(message):
    match = RECOVERED.search(message)
    assert match, message
    return int(match.group(1))


def test_a_server_outage_is_logged_once_and_its_recovery_once(server, log):
    process, cache, server = server
    cache.set("k", 1)
    assert server_lines(log, server) == [], "nothing to report while it answers"
    process.kill()
    for call in [lambda: cache.get("k"), lambda: cache.set("k", 2), lambda: cache.incr("k")] * 3:
        with pytest.raises(CacheError):
            call()
    lines = server_lines(log, server)
    assert len(lines) == 1, lines
    level, message = lines[0]
    assert level == "WARNING"
    assert message.startswith(f"{server} is not answering (") and "Connection refused" in message, message

    process.restart()
    cache.set("k", 3)
    assert cache.get("k") == 3
    lines = server_lines(log, server)
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert failed_meanwhile(lines[1][1]) == 9
    # Back to normal: more calls log nothing more.
    cache.get("k")
    assert len(server_lines(log, server)) == 2


def test_outages_seen_by_async_calls_are_logged_too(server, log):
    """Native async calls finish off the event loop's thread; their events
    reach the logger all the same."""
    process, cache, server = server

    async def calls(count):
        outcomes = await asyncio.gather(*(cache.aget(f"k{i}") for i in range(count)), return_exceptions=True)
        return [type(outcome).__name__ for outcome in outcomes]

    asyncio.run(cache.aset("k0", 1))
    process.kill()
    assert set(asyncio.run(calls(4))) == {"CacheConnectionError"}
    process.restart()
    assert asyncio.run(calls(2)) == ["NoneType", "NoneType"]  # answered (the restarted server is empty)
    lines = server_lines(log, server)
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert failed_meanwhile(lines[1][1]) == 4


def test_under_load_every_failed_call_is_accounted_for_in_the_recovery_lines(server, log):
    """8 threads through a kill -9 and a restart: warnings and recoveries
    alternate, the last line is a recovery, and the failures the recovery
    lines report add up to exactly the calls that raised."""
    process, cache, server = server
    raised = [0] * 8

    def load(index, stop):
        n = 0
        while not stop.is_set():
            try:
                cache.set(f"k{index}", n)
                cache.get(f"k{index}")
            except CacheError:
                raised[index] += 1
            n += 1

    with load_threads(8, load):
        time.sleep(0.3)
        process.kill()
        time.sleep(0.5)
        process.restart()
        time.sleep(0.5)
    lines = server_lines(log, server)
    levels = [level for level, _ in lines]
    assert sum(raised) > 0 and levels, lines
    assert levels == ["WARNING", "INFO"] * (len(levels) // 2), levels
    assert sum(failed_meanwhile(message) for _, message in lines[1::2]) == sum(raised)


def test_a_postgresql_outage_is_logged_once_and_its_recovery_once(fresh_postgres, log):
    fresh_postgres.create_cache_table()
    cache = DatabaseCache("cache", {"OPTIONS": {"DSN": fresh_postgres.dsn, "CONNECT_TIMEOUT": 1.0}})
    server = f"PostgreSQL server 127.0.0.1:{fresh_postgres.port}/"
    cache.set("k", 1)
    assert server_lines(log, server) == []
    fresh_postgres.stop("immediate")
    for call in [lambda: cache.get("k"), lambda: cache.set("k", 2), lambda: cache.incr("k")] * 2:
        with pytest.raises(CacheError):
            call()
    lines = server_lines(log, server)
    assert [level for level, _ in lines] == ["WARNING"], lines
    assert "is not answering (" in lines[0][1]

    fresh_postgres.start(keep_port=True)
    cache.set("k", 3)
    assert cache.get("k") == 3
    lines = server_lines(log, server)
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    # At least one per failed call (a call that found its pooled connection
    # dead and then could not dial counts both).
    assert failed_meanwhile(lines[1][1]) >= 6
    cache.get("k")
    assert len(server_lines(log, server)) == 2
