"""racefree's file store under real threads and processes: the cachy seed's
stress run, exact increments, one winner per add, writers killed mid-write,
and the options."""

import hashlib
import multiprocessing
import os
import random
import stat
import threading
import time
import warnings

import pytest
from django.core.cache import CacheKeyWarning
from django.core.exceptions import ImproperlyConfigured
from support.load import run_processes

from racefree.backends.filebased import FileBasedCache
from racefree.exceptions import LockTimeoutError

SEED_SECONDS = float(os.environ.get("RACEFREE_SEED_SECONDS", "30"))
SPAWN = multiprocessing.get_context("spawn")


def ROOT_ONLY(why):
    """Skip a test that needs root on a developer's machine, never in CI
    (which runs as root): there it runs, and fails if it cannot."""
    return pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason=f"{why} (CI runs as root)")


def file_cache(location, **options):
    params = {"OPTIONS": {"MAX_ENTRIES": 1_000_000, **options}}
    return FileBasedCache(str(location), params)


def signed_blob(writer, size):
    """Random bytes carrying their own digest, so a reader can tell a whole
    value from a torn one."""
    body = f"{writer}:".encode() + os.urandom(size)
    return hashlib.sha256(body).digest() + body


def blob_is_whole(blob):
    return isinstance(blob, bytes) and hashlib.sha256(blob[32:]).digest() == blob[:32]


# -- The seed: cachy's stress script --------------------------------------------------


def _seed_worker(location, name, seconds, results):
    """cachy_stresstest's worker: read, and on a miss store a 50 KB blob
    with a 0.5 s expiry; sleep a little; repeat."""
    cache = file_cache(location)
    deadline = time.monotonic() + seconds
    reads = writes = errors = torn = 0
    blob = signed_blob(name, 50 * 1024)
    while time.monotonic() < deadline:
        try:
            cached = cache.get("cache_key")
            reads += 1
            if cached is None:
                cache.set("cache_key", blob, 0.5)
                writes += 1
            elif not blob_is_whole(cached):
                torn += 1
        except Exception:  # noqa: BLE001 - the seed's failures are exceptions
            errors += 1
        time.sleep(random.uniform(0.001, 0.025))
    results.put((reads, writes, errors, torn))


@pytest.mark.cross_version
def test_seed_stress_script_passes(tmp_path):
    """../shared/seeds/4-cachy-file-store.txt: 8 processes share one key
    with a 0.5 s expiry; the stock store raised FileNotFoundError and read
    empty files. Every value read must be one a process wrote whole."""
    results = SPAWN.Queue()
    codes = run_processes(_seed_worker, [(tmp_path, f"W{i}", SEED_SECONDS, results) for i in range(8)])
    assert codes == [0] * 8
    totals = [results.get(timeout=10) for _ in range(8)]
    reads, writes, errors, torn = (sum(column) for column in zip(*totals))
    assert errors == 0
    assert torn == 0
    assert reads > 8 * SEED_SECONDS * 20
    assert writes > SEED_SECONDS, "the expiry must have made processes rewrite"


# -- Exact counts across processes and threads -----------------------------------------


def _increment(location, threads, count):
    cache = file_cache(location)

    def loop():
        for _ in range(count):
            cache.incr("counter")

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


@pytest.mark.cross_version
def test_increments_from_processes_and_threads_are_exact(tmp_path):
    cache = file_cache(tmp_path)
    cache.set("counter", 0)
    assert run_processes(_increment, [(tmp_path, 2, 500)] * 4) == [0] * 4
    assert cache.get("counter") == 4000


def _add_all(location, name, keys, results):
    cache = file_cache(location)
    results.put((name, [key for key in keys if cache.add(key, name)]))


@pytest.mark.cross_version
def test_add_has_exactly_one_winner_per_key(tmp_path):
    keys = [f"claim-{i}" for i in range(150)]
    results = SPAWN.Queue()
    assert run_processes(_add_all, [(tmp_path, f"p{i}", keys, results) for i in range(8)]) == [0] * 8
    winners = {}
    for _ in range(8):
        name, won = results.get(timeout=10)
        for key in won:
            assert key not in winners, f"{key} added twice"
            winners[key] = name
    assert sorted(winners) == sorted(keys)
    cache = file_cache(tmp_path)
    assert all(cache.get(key) == winners[key] for key in keys)


@pytest.mark.cross_version
def test_threads_sharing_one_instance(tmp_path):
    cache = file_cache(tmp_path)
    cache.set("n", 0)
    mismatches = []

    def work(index):
        for i in range(300):
            key = f"t{index}-{i % 7}"
            cache.set(key, key)
            value = cache.get(key)
            if value is not None and not value.startswith(f"t{index}-"):
                mismatches.append(value)
            cache.incr("n")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []
    assert cache.get("n") == 2400


# -- Writers killed mid-write ----------------------------------------------------------


def _writer_forever(location, name):
    cache = file_cache(location)
    blobs = [signed_blob(f"{name}-{i}", size) for i, size in enumerate((200_000, 1_000_000, 5_000))]
    n = 0
    while True:
        cache.set(f"shared-{n % 4}", blobs[n % 3])
        if n % 5:
            cache.incr("writes")
        else:
            cache.add(f"added-{n}", n)
        n += 1


def _reader(location, seconds, results):
    cache = file_cache(location)
    deadline = time.monotonic() + seconds
    reads = errors = torn = 0
    while time.monotonic() < deadline:
        for i in range(4):
            try:
                value = cache.get(f"shared-{i}")
                reads += 1
                if value is not None and not blob_is_whole(value):
                    torn += 1
            except Exception:  # noqa: BLE001
                errors += 1
    results.put((reads, errors, torn))


@pytest.mark.cross_version
def test_writers_killed_mid_write_leave_nothing_torn_or_locked(tmp_path):
    cache = file_cache(tmp_path, LOCK_TIMEOUT=2.0)
    cache.set("writes", 0)
    results = SPAWN.Queue()
    readers = [SPAWN.Process(target=_reader, args=(tmp_path, 6, results)) for _ in range(2)]
    for reader in readers:
        reader.start()
    kills = 0
    writers = [SPAWN.Process(target=_writer_forever, args=(tmp_path, f"w{i}")) for i in range(3)]
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        time.sleep(random.uniform(0.05, 0.2))
        victim = random.randrange(len(writers))
        writers[victim].kill()
        writers[victim].join()
        kills += 1
        writers[victim] = SPAWN.Process(target=_writer_forever, args=(tmp_path, f"w{victim}-{kills}"))
        writers[victim].start()
    for writer in writers:
        writer.kill()
        writer.join()
    for reader in readers:
        reader.join(30)
        assert reader.exitcode == 0
    outcomes = [results.get(timeout=10) for _ in readers]
    reads, errors, torn = (sum(column) for column in zip(*outcomes))
    assert kills >= 10
    assert errors == 0
    assert torn == 0
    assert reads > 100
    # No lock was left held, no entry is unreadable, everything still works.
    started = time.monotonic()
    assert cache.incr("writes") > 0
    assert time.monotonic() - started < 1.0
    for i in range(4):
        value = cache.get(f"shared-{i}")
        assert value is None or blob_is_whole(value)
        cache.set(f"shared-{i}", b"after")
        assert cache.get(f"shared-{i}") == b"after"


# -- Files, permissions, options ----------------------------------------------------------


def test_files_and_directories_are_private(tmp_path):
    location = tmp_path / "a" / "cache"
    cache = file_cache(location)
    cache.set("k", "v")
    path = cache._key_to_file("k")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for directory in (location, location.parent, os.path.dirname(path)):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_keys_cannot_name_paths_outside_the_directory(tmp_path):
    cache = FileBasedCache(str(tmp_path / "cache"), {"KEY_FUNCTION": lambda key, prefix, version: key})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheKeyWarning)
        for key in ("../../etc/passwd", "/etc/passwd", "a/../../b", "\0", ".."):
            cache.set(key, "x")
            path = os.path.realpath(cache._key_to_file(key))
            assert path.startswith(os.path.realpath(tmp_path / "cache") + os.sep)
            assert cache.get(key) == "x"
    assert os.listdir(tmp_path) == ["cache"]


def test_garbage_files_read_as_misses(tmp_path):
    cache = file_cache(tmp_path)
    for garbage in (b"", b"\x00" * 10, os.urandom(500), b"RFCACHE\x01" + os.urandom(100)):
        cache.set("k", "value")
        with open(cache._key_to_file("k"), "wb") as damaged:
            damaged.write(garbage)
        assert cache.get("k", "miss") == "miss"
        assert not os.path.exists(cache._key_to_file("k"))


def test_invalid_keys_warn_as_django_does(tmp_path):
    cache = file_cache(tmp_path)
    with pytest.warns(CacheKeyWarning):
        cache.set("with space", 1)
    with pytest.warns(CacheKeyWarning):
        assert cache.get("with space") == 1


def test_incr_semantics(tmp_path):
    cache = file_cache(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        cache.incr("absent")
    cache.set("n", 5, 100)
    assert cache.decr("n", 10) == -5, "no clamping at 0, as Django's stock backends"
    assert cache.incr("n", 2**70) == 2**70 - 5
    cache.set("text", "abc")
    with pytest.raises(TypeError):
        cache.incr("text")
    with pytest.raises(TypeError):
        cache.incr("n", 1.5)
    with pytest.raises(OverflowError):
        cache.incr("n", 2**127)


def test_a_held_lock_times_out_with_a_clear_error(tmp_path):
    import fcntl

    cache = file_cache(tmp_path, LOCK_TIMEOUT=0.2)
    cache.set("k", 1)
    lock_path = os.path.join(os.path.dirname(cache._key_to_file("k")), ".lock")
    with open(lock_path) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LockTimeoutError, match="still held"):
            cache.incr("k")
        assert cache.get("k") == 1, "reads never wait"
    assert cache.incr("k") == 2


def test_count_is_shared_between_processes(tmp_path):
    cache = file_cache(tmp_path)
    assert run_processes(_add_all, [(tmp_path, "p", [f"k{i}" for i in range(40)], SPAWN.Queue())]) == [0]
    assert cache._store.count() == 40
    cache.delete("k0")
    cache.clear()
    assert cache._store.count() == 0


def test_options_are_checked(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="unknown OPTIONS"):
        FileBasedCache(str(tmp_path), {"OPTIONS": {"MAX_ENTRIS": 10}})
    with pytest.raises(ImproperlyConfigured, match="MAX_ENTRIES"):
        FileBasedCache(str(tmp_path), {"OPTIONS": {"MAX_ENTRIES": "10"}})
    with pytest.raises(ImproperlyConfigured, match="CULL_FREQUENCY"):
        FileBasedCache(str(tmp_path), {"OPTIONS": {"CULL_FREQUENCY": -1}})
    with pytest.raises(ImproperlyConfigured, match="LOCK_TIMEOUT"):
        FileBasedCache(str(tmp_path), {"OPTIONS": {"LOCK_TIMEOUT": 0}})


# -- A directory that is not ours alone -------------------------------------------------------


def test_a_directory_others_may_write_to_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    cache = file_cache(shared)
    for call in (lambda: cache.set("k", 1), lambda: cache.get("k"), lambda: cache.clear(), cache._store.count):
        with pytest.raises(PermissionError, match="lets other users write to it"):
            call()
    assert os.listdir(shared) == [], "nothing was written"
    shared.chmod(0o700)
    cache.set("k", 1)
    assert cache.get("k") == 1


@ROOT_ONLY("giving a directory to another user needs root")
def test_a_directory_planted_by_another_user_is_never_read(tmp_path):
    """Another user creates LOCATION first and plants an entry there that
    would run code when unpickled: it is refused, not loaded."""
    planted = tmp_path / "django_cache"
    ran = tmp_path / "code-ran"
    # Other settings: a store of its own, which has not checked the
    # directory yet (each store checks once).
    writer = file_cache(planted, LOCK_TIMEOUT=7.0)
    writer.set("k", RunsCode(ran))
    os.chown(planted, 65534, 65534)
    victim = FileBasedCache(str(planted), {})
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        victim.get("k")
    assert not ran.exists()


class RunsCode:
    """Unpickling it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_symlinked_files_inside_the_directory_are_not_followed(tmp_path):
    cache = file_cache(tmp_path / "cache")
    cache.set("k", "v")
    entry = cache._key_to_file("k")
    lock = os.path.join(os.path.dirname(entry), ".lock")
    elsewhere = tmp_path / "elsewhere"
    os.unlink(lock)
    os.symlink(elsewhere, lock)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        cache.set("k", "w")
    assert not elsewhere.exists(), "the lock's symlink was followed"
    os.unlink(lock)
    os.replace(entry, tmp_path / "moved")
    os.symlink(tmp_path / "moved", entry)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        cache.get("k")


@ROOT_ONLY("mounting a tmpfs needs root")
def test_a_full_file_system_is_an_oserror_not_a_crash(tmp_path):
    """The first write into a full tmpfs: the shared count file cannot be
    created, and says so, instead of the process dying of SIGBUS."""
    import subprocess
    import sys

    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        with open(mount / "filler", "wb", buffering=0) as filler:
            with pytest.raises(OSError):
                while True:
                    filler.write(b"\0" * 4096)
        child = subprocess.run(
            [sys.executable, "-c", FULL_DISK_CHILD, str(mount / "cache")], capture_output=True, text=True, timeout=60
        )
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert child.returncode == 0, f"the writer died ({child.returncode}): {child.stderr[-2000:]}"
    assert child.stdout.split() == ["OSError", "28"] * 3, child.stdout


FULL_DISK_CHILD = """
import sys
import django
from django.conf import settings
settings.configure()
django.setup()
from racefree.backends.filebased import FileBasedCache
cache = FileBasedCache(sys.argv[1], {})
for call in (lambda: cache.set("k", "v" * 10_000), lambda: cache.add("j", 1), cache.stats):
    try:
        call()
    except OSError as error:
        print("OSError", error.errno)
    except ValueError as error:
        print("ValueError", error)
"""
