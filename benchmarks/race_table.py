"""The race table: each original bug, run on the stock backend and on
racefree's, under real threads and processes on real servers.

    python benchmarks/race_table.py [--seconds 5] [--threads 16]

Scenarios:

* one client shared by threads (seed 1, pylibmc): Django's cache middleware
  keeps ONE backend instance for the whole process. Threads share it, each
  storing keys whose value is the key and checking what comes back; a value
  that is not the key (another request's value, a cached response) is a
  mismatch.
* incr from several processes (seed 5, racy-django): 4 processes x 2
  threads increment one counter; every increment that returned but is not
  in the final count is a lost update.
* add of fresh keys from several processes: 8 processes `add` the same
  fresh keys; every winner beyond the first per key is a double win (two
  requests both think they created the value).
* aincr from many asyncio tasks: 200 tasks on one event loop each await
  10 ``aincr`` of one counter (an ASGI app counting views); every awaited
  increment not in the final count is a lost update.
* a forwarding backend reset during traffic (seed 3, djblets): 16 threads
  use one forwarding instance while another thread resets it to a new
  target every millisecond. Errors are calls that failed (the unsafe
  pattern reaches a None backend); mismatches are calls that ran on a
  target already closed.

Backends: memcached (stock PyLibMCCache and PyMemcacheCache), Redis
(stock RedisCache), the file system (stock FileBasedCache) and PostgreSQL
(stock DatabaseCache), each against racefree's, on servers started here.

Each run happens in a child process, so a stock client that corrupts the
heap and kills the interpreter is reported as a row, not a crash.
"""

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "django_example"))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

if not settings.configured:
    # The database-cache rows run against the PostgreSQL started by main().
    database = os.environ.get("RACEFREE_RACE_DATABASE")
    settings.configure(DATABASES={"default": json.loads(database)} if database else {}, USE_TZ=True)
    django.setup()

from django.http import JsonResponse  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402
from support.servers import Memcached, Postgres, Redis, ServerMissing  # noqa: E402

MEMCACHED = [
    ("stock", "PyLibMCCache", "django.core.cache.backends.memcached.PyLibMCCache"),
    ("stock", "PyMemcacheCache", "django.core.cache.backends.memcached.PyMemcacheCache"),
    ("racefree", "MemcachedCache", "racefree.backends.memcached.MemcachedCache"),
]
REDIS = [
    ("stock", "RedisCache", "django.core.cache.backends.redis.RedisCache"),
    ("racefree", "RedisCache", "racefree.backends.redis.RedisCache"),
]
FILE = [
    ("stock", "FileBasedCache", "django.core.cache.backends.filebased.FileBasedCache"),
    ("racefree", "FileBasedCache", "racefree.backends.filebased.FileBasedCache"),
]
FORWARDING = [
    ("stock", "reset-to-None (djblets 0.8)", "races.unsafe_forwarding.UnsafeForwardingCache"),
    ("racefree", "ForwardingCache", "racefree.backends.forwarding.ForwardingCache"),
]
DATABASE = [
    ("stock", "DatabaseCache", "django.core.cache.backends.db.DatabaseCache"),
    ("racefree", "DatabaseCache", "racefree.backends.db.DatabaseCache"),
]
ROOMY = {"OPTIONS": {"MAX_ENTRIES": 1_000_000}}
# Django's createcachetable DDL for PostgreSQL.
CACHE_TABLE_DDL = (
    'CREATE TABLE "{}" ("cache_key" varchar(255) NOT NULL PRIMARY KEY, "value" text NOT NULL, '
    '"expires" timestamp with time zone NOT NULL)'
)


def backend(path, location):
    return import_string(path)(location, ROOMY if "filebased" in path or ".db." in path else {})


def fork_context():
    """Fork after closing Django's connections: a forked child must not
    share its parent's database socket."""
    from django.db import connections

    connections.close_all()
    return multiprocessing.get_context("fork")


def run_users(user, threads, totals, report, also=None):
    """Run ``user(index)`` on ``threads`` daemon threads (and ``also()`` on
    one more), reporting ``totals()`` until they end; returns the totals.
    Daemon threads: a thread stuck in a stock client must not keep the
    child alive."""
    workers = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(threads)]
    if also:
        workers.append(threading.Thread(target=also, daemon=True))
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):
        report(totals())
        time.sleep(0.2)
    return totals()


def shared_client(path, location, threads, seconds, report):
    """Seed 1 on one backend instance shared by every thread."""
    cache = backend(path, location)
    cache.set("views.cache.response", JsonResponse({"page": "cached"}))
    deadline = time.monotonic() + seconds
    counts = [[0, 0, 0] for _ in range(threads)]  # calls, errors, mismatches
    example = []

    def totals():
        calls, errors, mismatches = (sum(c[i] for c in counts) for i in range(3))
        return {"calls": calls, "errors": errors, "mismatches": mismatches, "example": example[0] if example else ""}

    def user(index):
        mine = counts[index]
        n = 0
        while time.monotonic() < deadline:
            key = f"test-{index}-{n % 20}"
            n += 1
            try:
                value = cache.get(key)
                mine[0] += 1
                if value is None:
                    cache.set(key, key)
                    mine[0] += 1
                elif value != key:
                    mine[2] += 1
                    if not example:
                        example.append(f"key {key!r} returned {value!r}")
                cache.get("views.cache.response")
                mine[0] += 1
            except Exception as exc:  # noqa: BLE001 - counted, as a 500 would be
                mine[1] += 1
                if not example:
                    example.append(f"{type(exc).__name__}: {exc}")

    return run_users(user, threads, totals, report)


def _incr_worker(path, location, threads, increments, results):
    cache = backend(path, location)
    done = [0] * threads
    errors = [0] * threads

    def loop(index):
        for _ in range(increments):
            try:
                cache.incr("counter")
                done[index] += 1
            except Exception:  # noqa: BLE001
                errors[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put((sum(done), sum(errors)))


def processes_incr(path, location, threads, seconds, report):
    """Seed 5: 4 processes x 2 threads x 250 increments of one counter."""
    cache = backend(path, location)
    cache.set("counter", 0)
    context = fork_context()
    results = context.Queue()
    workers = [context.Process(target=_incr_worker, args=(path, location, 2, 250, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    succeeded = sum(done for done, _ in outcomes)
    errors = sum(failed for _, failed in outcomes)
    final = cache.get("counter")
    lost = succeeded - final
    # More than returned: replies were mixed up and increments counted twice.
    example = f"{succeeded} increments returned, counter is {final}" if lost else ""
    return {"calls": succeeded + errors, "errors": errors, "mismatches": 0, "lost": lost, "example": example}


def async_incr(path, location, threads, seconds, report):
    """200 asyncio tasks x 10 awaited aincr of one counter, one loop."""
    import asyncio

    cache = backend(path, location)
    cache.set("counter", 0)
    done, errors, example = [0], [0], []

    async def task():
        for _ in range(10):
            try:
                await cache.aincr("counter")
                done[0] += 1
            except Exception as exc:  # noqa: BLE001 - counted
                errors[0] += 1
                if not example:
                    example.append(f"{type(exc).__name__}: {exc}")

    async def tasks():
        await asyncio.gather(*(task() for _ in range(200)))

    asyncio.run(tasks())
    final = cache.get("counter")
    lost = done[0] - final
    if lost and not example:
        example.append(f"{done[0]:,} aincr returned, counter is {final:,}")
    return {"calls": done[0] + errors[0], "errors": errors[0], "mismatches": 0, "lost": lost,
            "example": example[0] if example else ""}


def _add_worker(path, location, keys, results):
    cache = backend(path, location)
    wins = errors = 0
    for key in keys:
        try:
            wins += bool(cache.add(key, os.getpid()))
        except Exception:  # noqa: BLE001
            errors += 1
    results.put((wins, errors))


def processes_add(path, location, threads, seconds, report):
    """8 processes add the same 300 fresh keys: one winner per key."""
    keys = [f"fresh-{i}" for i in range(300)]
    context = fork_context()
    results = context.Queue()
    workers = [context.Process(target=_add_worker, args=(path, location, keys, results)) for _ in range(8)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    wins = sum(won for won, _ in outcomes)
    errors = sum(failed for _, failed in outcomes)
    extra = wins - len(keys)
    example = f"{wins} adds succeeded for {len(keys)} fresh keys" if extra else ""
    return {"calls": 8 * len(keys), "errors": errors, "mismatches": 0, "lost": extra, "example": example}


def forwarding_reset(path, location, threads, seconds, report):
    """Seed 3: resets of one shared forwarding instance during traffic."""
    from support import tracked_backends

    # Switch threads often (as many cores would run them at once), for
    # both rows alike.
    sys.setswitchinterval(0.0001)
    settings.CACHES["forwarded_backend"] = {"BACKEND": "support.tracked_backends.TrackedLocMemCache"}
    cache = backend(path, "")
    deadline = time.monotonic() + seconds
    counts = [[0, 0] for _ in range(threads)]  # calls, errors
    resets = [0]
    example = []

    def totals():
        calls, errors = (sum(c[i] for c in counts) for i in range(2))
        closed_calls = sum(target.calls_after_close for target in list(tracked_backends.built))
        seen = example[:1] + ([f"{closed_calls:,} calls ran on a closed target"] if closed_calls else [])
        return {"calls": calls, "errors": errors, "mismatches": closed_calls, "resets": resets[0],
                "example": "; ".join(seen)}

    def user(index):
        mine = counts[index]
        n = 0
        while time.monotonic() < deadline:
            key = f"page-{index}-{n % 20}"
            n += 1
            try:
                if cache.get(key) is None:
                    cache.set(key, key)
                mine[0] += 1
            except Exception as exc:  # noqa: BLE001 - counted, as a 500 would be
                mine[1] += 1
                if not example:
                    example.append(f"{type(exc).__name__}: {exc}")

    def admin():
        while time.monotonic() < deadline:
            location = f"target-{resets[0] % 2}"
            settings.CACHES["forwarded_backend"] = {
                "BACKEND": "support.tracked_backends.TrackedLocMemCache", "LOCATION": location}
            cache.reset_backend()
            resets[0] += 1
            time.sleep(0.001)

    return run_users(user, threads, totals, report, also=admin)


SCENARIOS = {
    "shared_client": ("seed 1: one client shared by 16 threads", shared_client),
    "processes_incr": ("seeds 2, 5: incr from 4 processes x 2 threads", processes_incr),
    "processes_add": ("add of 300 fresh keys from 8 processes", processes_add),
    "async_incr": ("aincr from 200 asyncio tasks x 10", async_incr),
    "forwarding_reset": ("seed 3: forwarding reset during traffic, 16 threads", forwarding_reset),
}


def run_child(scenario, path, location, threads, seconds):
    """One scenario on one backend in a child process; returns (counts or
    None, failure text)."""
    command = [sys.executable, __file__, "--child", scenario, path, location, str(threads), str(seconds)]
    grace = 20
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=seconds + grace + 120)
        stdout, returncode = child.stdout, child.returncode
    except subprocess.TimeoutExpired as timeout:
        stdout, returncode = timeout.stdout or "", None
        if isinstance(stdout, bytes):
            stdout = stdout.decode()
    reports = [line for line in stdout.splitlines() if line.startswith("{")]
    last = json.loads(reports[-1]) if reports else None
    if returncode is None:
        return last, "threads hung: still blocked long after the run ended"
    if returncode < 0:
        return last, f"interpreter crashed ({signal.Signals(-returncode).name})"
    if returncode != 0:
        return last, "child failed: " + (child.stderr.strip().splitlines() or ["?"])[-1]
    return last, ""


def child_main(scenario, path, location, threads, seconds):
    def report(totals):
        print(json.dumps(totals), flush=True)

    report(SCENARIOS[scenario][1](path, location, int(threads), float(seconds), report))
    sys.stdout.flush()
    # Threads stuck in a stock client would keep the interpreter alive.
    os._exit(0)


def plan(args):
    """(scenario, kind, name, path, location) rows to run, and notes."""
    rows, notes, cleanup = [], [], []
    file_root = tempfile.mkdtemp(prefix="racefree-race-")
    cleanup.append(lambda: __import__("shutil").rmtree(file_root, ignore_errors=True))
    for kind, name, path in FORWARDING:
        rows.append(("forwarding_reset", kind, name, path, "-"))
    for scenario in ("processes_incr", "processes_add"):
        for kind, name, path in FILE:
            rows.append((scenario, kind, name, path, os.path.join(file_root, f"{scenario}-{kind}")))
    try:
        postgres = Postgres()
    except ServerMissing as exc:
        notes.append(f"database rows skipped: {exc}")
    else:
        cleanup.append(postgres.close)
        import psycopg

        os.environ["RACEFREE_RACE_DATABASE"] = json.dumps(postgres.settings("postgres"))
        with psycopg.connect(postgres.dsn, autocommit=True) as admin:
            for scenario in ("processes_incr", "processes_add"):
                for kind, _, _ in DATABASE:
                    admin.execute(CACHE_TABLE_DDL.format(f"{scenario}_{kind}"))
        for scenario in ("processes_incr", "processes_add"):
            for kind, name, path in DATABASE:
                rows.append((scenario, kind, name, path, f"{scenario}_{kind}"))
    # A server of each kind, and the scenarios its backends run.
    for server_class, label, backends, scenarios in (
        (Memcached, "memcached", MEMCACHED, ("shared_client", "processes_incr")),
        (Redis, "Redis", REDIS, ("shared_client", "processes_incr", "async_incr")),
    ):
        try:
            server = server_class()
        except ServerMissing as exc:
            notes.append(f"{label} rows skipped: {exc}")
            continue
        cleanup.append(server.stop)
        for kind, name, path in backends:
            try:
                backend(path, server.location)
            except ImportError as exc:
                notes.append(f"{name} rows skipped: not installed ({exc})")
                continue
            rows.extend((scenario, kind, name, path, server.location) for scenario in scenarios)
    return rows, notes, cleanup


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=sorted(SCENARIOS),
                        help="run only these")
    args = parser.parse_args()

    rows, notes, cleanup = plan(args)
    rows = [row for row in rows if row[0] in args.scenarios]
    for note in notes:
        print(note)
    table = []
    try:
        for scenario, kind, name, path, location in rows:
            title = SCENARIOS[scenario][0]
            print(f"running {title} on {kind} {name}...", flush=True)
            result, failure = run_child(scenario, path, location, args.threads, args.seconds)
            result = result or {}
            seen = "; ".join(part for part in (result.get("example", ""), failure) if part)
            table.append((title, f"{kind} {name}", result, seen))
            if scenario != "forwarding_reset" and (scenario == "shared_client" or kind == "stock"):
                try:
                    backend(path, location).clear()
                except Exception:  # noqa: BLE001 - a raced stock client may be broken
                    pass
    finally:
        for step in cleanup:
            step()
    print()
    print("| bug | backend | calls | errors | mismatches | lost updates / double wins | first failure seen |")
    print("|---|---|---|---|---|---|---|")

    def cell(result, name):
        if name not in result:
            return "-"
        if name == "lost" and result[name] < 0:
            return f"{-result[name]:,} phantom"
        return f"{result[name]:,}"

    for title, backend_name, result, seen in table:
        counts = " | ".join(cell(result, name) for name in ("calls", "errors", "mismatches", "lost"))
        print(f"| {title} | {backend_name} | {counts} | {seen[:140]} |")
    bad = [
        row
        for row in table
        if row[1].startswith("racefree")
        and (not row[2] or row[3] or any(row[2].get(name) for name in ("errors", "mismatches", "lost")))
    ]
    if bad:
        print("\nracefree rows must show zeros: FAILED")
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        child_main(*sys.argv[2:])
    else:
        main()
