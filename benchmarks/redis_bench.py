"""Redis backends side by side: racefree vs Django's RedisCache, django-redis
and django-vcache, on one redis-server started here, through Django's cache API.

    python benchmarks/redis_bench.py [--seconds 1] [--rounds 3] [--async-seconds 1] [--tasks 200]
                                     [--async-shared] [--quick] [--newest auto|PATH|none] [--json out.json]

Sync: get (a hit), set, incr and get_many(100) with 100 B values, at 1 and
8 threads sharing ONE backend instance (as Django's cache middleware holds
one for the whole process), ops/s summed over threads (get_many: calls/s);
at more than one thread also the CPU time per call of the benchmark process
(all its threads: the client's cost on a web server) and of redis-server
(the server's share, which on this one machine takes from the same cores).
Async: 200 asyncio tasks on one loop, each in its own
``ThreadSensitiveContext`` (as Django's ASGI handler runs each request),
looping aget (a hit) / aset alternately, or aincr, on keys of their own;
each task makes its own backend instance (as ``caches[...]`` gives each
request context); with ``--async-shared`` also aget/aset with one instance
shared by all tasks (as the cache middleware holds one). Each thread or
task makes one call (which opens what the backend opens) before the
clock starts; an async call that raises counts as an error, not as an
operation. Every backend works in a database of its own on the one
server, so that
``CLIENT LIST`` (its ``db=`` field, sampled every 50 ms on a connection of
the benchmark's own, in database 0) tells how many server connections the
process holds for each backend: "connections" is the most seen during any
of its async runs. The async rows run first, so that racefree's pool holds
only what async calls opened (sync calls from threads add their own
connections, up to one per concurrent thread).

Each backend in its default configuration (LOCATION a redis:// URL, no
OPTIONS), and django-vcache also with ``SERIALIZER: "pickle"``
(``django-vcache-pickle``): its default encoding is msgpack, which cannot
store what Django caches beyond plain data (an ``HttpResponse`` from the
cache middleware, a ``Decimal``, a ``set``: TypeError; a tuple comes back
a list, a date a string), while racefree, Django's RedisCache and
django-redis pickle. The pickle column does the same encoding work as
racefree; the default column is shown beside it. redis-server in its
default configuration on a free loopback port (nothing persisted). The
backends take turns within every round (``--rounds``) so that machine
noise hits them alike; cells are medians, ratios racefree / other, the
median of the rounds' ratios (for async also the worst round's).
``--quick``: 2 rounds of 0.5 s, a smoke run; ``--ops`` and ``--no-async``
rerun chosen sync cells. ``--backends racefree,racefree-sentinel``
measures what Sentinel costs: the same server behind one Redis Sentinel
started here (LOCATION ``redis://bench``, OPTIONS ``SENTINELS``). ``--ops sadd,zincrby,smembers(100) --backends
racefree,django-redis`` measures django-redis's set and sorted-set calls,
which only those two have.

django-vcache needs CPython >= 3.12, which this project's main virtualenv
(system CPython 3.11) is not: when ``.venv-newest`` (CPython 3.13, ``make
build-newest``) can import it, the same benchmark runs again there
(``--newest``), racefree (the same build: the parent's racefree package
directory is put first on the child's path) against django-vcache
(``--newest-backends`` adds others), on a redis-server of its own; its
tables are printed after this interpreter's.
"""

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

if __name__ == "__main__" and "--racefree-path" in sys.argv:
    # A run on another interpreter (see --newest): the parent's racefree.
    sys.path.insert(0, sys.argv[sys.argv.index("--racefree-path") + 1])
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.configure()
django.setup()

from _common import cycling_get, markdown, median_row, save, threaded_rate  # noqa: E402
from support.servers import Redis, RedisSentinel  # noqa: E402

BACKENDS = {
    "racefree": "racefree.backends.redis.RedisCache",
    "RedisCache": "django.core.cache.backends.redis.RedisCache",
    "django-redis": "django_redis.cache.RedisCache",
    "django-vcache": "django_vcache.backend.ValkeyCache",
    "django-vcache-pickle": "django_vcache.backend.ValkeyCache",
    "racefree-sentinel": "racefree.backends.redis.RedisCache",
}
#: The service of the backends that find the server through a Sentinel.
SENTINEL_SERVICES = {"racefree-sentinel": "bench"}
#: OPTIONS of a backend not in its default configuration.
OPTIONS = {"django-vcache-pickle": {"SERIALIZER": "pickle"}}
#: django-vcache's columns, and what each compares. Its incr is a bare
#: INCRBY (a missing key is created, where Django raises ValueError);
#: racefree's is a script that checks first (5-6 µs more of the server's
#: CPU per call here: the CPU table).
VCACHE_COLUMNS = [
    ("django-vcache-pickle", "the same encoding: SERIALIZER pickle"),
    ("django-vcache", "its default msgpack encoding, which stores plain data only"),
]
#: The backends that need CPython >= 3.12 (see --newest).
NEWEST_ONLY = tuple(name for name, _ in VCACHE_COLUMNS)
#: Each backend's database: CLIENT LIST's db= field tells their connections apart.
DATABASES = {"racefree": 1, "RedisCache": 2, "django-redis": 3, "django-vcache": 4, "django-vcache-pickle": 5,
             "racefree-sentinel": 6}
STOCK = "RedisCache"
VALUE = b"x" * 100
SYNC_OPS = ["get-hit", "set", "incr", "get_many(100)"]
#: Run only when --ops names them. incr-unchecked: the bare INCRBY that
#: creates a missing key, like for like with django-vcache's incr:
#: racefree's and django-redis's incr(ignore_key_check=True), django-vcache's
#: incr; Django's RedisCache has no such call and does its checked incr.
#: django-redis's data-structure calls, which only racefree and
#: django-redis have: SADD of one of 1,000 members, ZINCRBY of one member,
#: SMEMBERS of a set of 100 short strings.
STRUCTURE_OPS = ["sadd", "zincrby", "smembers(100)"]
STRUCTURE_BACKENDS = ("racefree", "django-redis")
EXTRA_OPS = ["incr-unchecked", *STRUCTURE_OPS]
# (operation, one instance per task?); --async-shared adds ("aget/aset", False).
ASYNC_CASES = [("aget/aset", True), ("aincr", True)]


def make_backend(name, location):
    from django.utils.module_loading import import_string

    params = {"OPTIONS": OPTIONS[name]} if name in OPTIONS else {}
    if name in SENTINEL_SERVICES:
        location = f"redis://{SENTINEL_SERVICES[name]}"
    return import_string(BACKENDS[name])(f"{location}/{DATABASES[name]}", params)


def available_backends(names):
    """The backends of ``names`` that import here, and why the others do not."""
    found, missing = {}, {}
    for name in names:
        if name in NEWEST_ONLY and sys.version_info < (3, 12):
            missing[name] = f"needs CPython >= 3.12 (this is {sys.version.split()[0]})"
            continue
        try:
            __import__(BACKENDS[name].rsplit(".", 1)[0])
            found[name] = BACKENDS[name]
        except ImportError as exc:
            missing[name] = f"does not import: {exc}"
    for name, reason in missing.items():
        print(f"skipping {name}: {reason}", file=sys.stderr)
    return found, missing


class ConnectionCounter:
    """The server's connections per database, from ``CLIENT LIST`` on a
    connection of its own (database 0), sampled every 50 ms in a thread
    inside ``with``; ``peak[db]`` is the most seen there."""

    def __init__(self, port):
        self.conn = socket.create_connection(("127.0.0.1", port))
        self.reader = self.conn.makefile("rb")
        self.peak = {}
        self.stop = threading.Event()
        self.thread = None

    def _command(self, *args):
        self.conn.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
        header = self.reader.readline()
        if header[:1] != b"$":
            raise RuntimeError(f"unexpected reply from redis-server: {header!r}")
        data = self.reader.read(int(header[1:]) + 2)
        return data[:-2].decode()

    def counts(self):
        counts = {}
        for line in self._command(b"CLIENT", b"LIST").splitlines():
            fields = dict(field.split("=", 1) for field in line.split() if "=" in field)
            db = int(fields.get("db", 0))
            counts[db] = counts.get(db, 0) + 1
        return counts

    def __enter__(self):
        self.peak = {}
        self.stop.clear()

        def sample():
            while True:
                for db, count in self.counts().items():
                    self.peak[db] = max(self.peak.get(db, 0), count)
                if self.stop.wait(0.05):
                    return

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def close(self):
        self.conn.close()


def workload(op, cache, thread):
    """A callable doing one operation per call, on ``cache``, for thread ``thread``."""
    keys = [f"bench:{i}" for i in range(100)]
    if op == "get-hit":
        return cycling_get(cache, keys, thread)
    if op == "set":
        key = f"bench:set:{thread}"
        return lambda: cache.set(key, VALUE)
    if op == "incr":
        key = f"bench:incr:{thread}"
        cache.set(key, 0)
        return lambda: cache.incr(key)
    if op == "incr-unchecked":
        key = f"bench:incr:{thread}"
        cache.set(key, 0)
        if type(cache).__module__.startswith(("racefree.", "django_redis.")):
            return lambda: cache.incr(key, ignore_key_check=True)
        return lambda: cache.incr(key)
    if op == "get_many(100)":
        return lambda: cache.get_many(keys)
    if op == "sadd":
        key, members = f"bench:sadd:{thread}", itertools.cycle(range(1000))
        return lambda: cache.sadd(key, next(members))
    if op == "zincrby":
        key = f"bench:zset:{thread}"
        return lambda: cache.zincrby(key, 1, "member")
    if op == "smembers(100)":
        key = f"bench:members:{thread}"
        cache.delete(key)
        cache.sadd(key, *(f"member:{i}" for i in range(100)))
        return lambda: cache.smembers(key)
    raise ValueError(op)


def process_cpu_seconds(pid=None):
    """User + system CPU time of this process (all its threads, a driver's
    own runtime threads included), or of process ``pid``."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    with open(f"/proc/{pid}/stat") as stat:
        # The fields after the command name's closing parenthesis; utime
        # and stime are the 14th and 15th of the whole line.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name, location, op, threads, seconds, server_pid, cpu):
    """ops/s; appends (client µs, server µs) of CPU per call to ``cpu``."""
    # One instance, shared by every thread (as the cache middleware's).
    cache = make_backend(name, location)
    for i in range(100):
        cache.set(f"bench:{i}", VALUE)
    client, server = process_cpu_seconds(), process_cpu_seconds(server_pid)
    rate, calls = threaded_rate(threads, seconds, lambda index: workload(op, cache, index), with_calls=True)
    cpu.append((1e6 * (process_cpu_seconds() - client) / calls,
                1e6 * (process_cpu_seconds(server_pid) - server) / calls))
    return rate


async def run_async(make, op, tasks, seconds, per_task):
    """Calls/s of ``tasks`` tasks, each in its own ThreadSensitiveContext,
    and the calls that raised, by error. Each task makes its first call
    (an aset, which opens what the backend opens) before the clock starts,
    as the threaded runs do."""
    from asgiref.sync import ThreadSensitiveContext

    shared = None if per_task else make()
    counts = [0] * tasks
    errors = {}
    ready, clock = asyncio.Event(), {"waiting": tasks}

    def failed(exc):
        name = f"{type(exc).__name__}: {exc}"
        errors[name] = errors.get(name, 0) + 1

    async def user(index):
        cache = make() if per_task else shared
        key = f"bench:async:{index}"
        try:
            await cache.aset(key, 0 if op == "aincr" else VALUE)
        except Exception as exc:
            failed(exc)
        clock["waiting"] -= 1
        if not clock["waiting"]:
            clock["started"] = time.perf_counter()
            clock["stop"] = clock["started"] + seconds
            ready.set()
        await ready.wait()
        n = 0
        while time.perf_counter() < clock["stop"]:
            # A call that raises counts as an error, not as an operation
            # (the request it served would have failed).
            try:
                if op == "aincr":
                    await cache.aincr(key)
                elif n % 2:
                    await cache.aset(key, VALUE)
                else:
                    await cache.aget(key)
                n += 1
            except Exception as exc:
                failed(exc)
        counts[index] = n

    async def in_context(index):
        async with ThreadSensitiveContext():
            await user(index)

    await asyncio.gather(*(in_context(i) for i in range(tasks)))
    return sum(counts) / (time.perf_counter() - clock["started"]), errors


def async_rows(backends, location, counter, args):
    results = []
    for op, per_task in ASYNC_CASES + ([("aget/aset", False)] if args.async_shared else []):
        row = {"op": op, "instances": "one per task" if per_task else "one shared", "tasks": args.tasks}
        runs = {name: [] for name in backends}
        connections = {name: 0 for name in backends}
        errors = {name: {} for name in backends}
        for _ in range(args.rounds):
            for name in backends:
                with counter:
                    rate, failed = asyncio.run(run_async(lambda name=name: make_backend(name, location), op,
                                                         args.tasks, args.async_seconds, per_task))
                runs[name].append(rate)
                connections[name] = max(connections[name], counter.peak.get(DATABASES[name], 0))
                for error, count in failed.items():
                    errors[name][error] = errors[name].get(error, 0) + count
                # What the run's threads and instances opened goes with them.
                gc.collect()
        for name in backends:
            row[name] = statistics.median(runs[name])
            row[f"{name} runs"] = runs[name]
        if "racefree" in runs:
            row["ratios"], row["worst"] = {}, {}
            for name in backends:
                if name != "racefree":
                    ratios = [ours / theirs if theirs else math.inf
                              for ours, theirs in zip(runs["racefree"], runs[name])]
                    row["ratios"][name], row["worst"][name] = statistics.median(ratios), min(ratios)
        row["connections"], row["errors"] = connections, errors
        results.append(row)
        cells = "  ".join(f"{name} {row[name]:>8.0f}/s ({connections[name]} conn"
                          f"{f', {sum(errors[name].values())} errors' if errors[name] else ''})" for name in backends)
        print(f"{op:<10} {row['instances']:<13} {args.tasks} tasks  {cells}", flush=True)
        for name in backends:
            for error, count in errors[name].items():
                print(f"    {name}: {count} calls raised {error}", flush=True)
    return results


def sync_rows(backends, location, server_pid, args):
    results = []
    for op in args.ops:
        for threads in args.threads:
            row = {"op": op, "threads": threads}
            cpu = {name: [] for name in backends}
            median_row(row, list(backends), args.rounds,
                       lambda name: measure(name, location, op, threads, args.seconds, server_pid, cpu[name]))
            row["cpu"] = {name: [statistics.median(side) for side in zip(*cpu[name])] for name in backends}
            results.append(row)
            cells = "  ".join(f"{name} {row[name]:>8.0f}/s" for name in backends)
            print(f"{op:<14} {threads}T  {cells}", flush=True)
    return results


def cpu_table(results, names):
    """CPU time per call of the multi-threaded sync rows: the benchmark
    process's (the client's) and redis-server's, medians of the rounds."""
    header = ["operation", "threads"] + [f"{n} client / server µs" for n in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        if row["threads"] > 1:
            cells = [row["op"], str(row["threads"])]
            cells += [" / ".join(f"{side:.1f}" for side in row["cpu"][name]) for name in names]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def async_table(results, names):
    others = [name for name in names if name != "racefree"] if "racefree" in names else []
    header = (["operation", "backend instances", "tasks"] + [f"{n} ops/s" for n in names]
              + [f"vs {n} (worst round)" for n in others] + [f"{n} connections" for n in names])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        cells = [row["op"], row["instances"], str(row["tasks"])]
        cells += [f"{row[name]:,.0f}" + (f" ({sum(row['errors'][name].values()):,} errors)"
                                         if row["errors"][name] else "") for name in names]
        cells += [f"{row['ratios'][name]:.2f}x ({row['worst'][name]:.2f}x)" for name in others]
        cells += [str(row["connections"][name]) for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_here(names, args):
    """This interpreter's tables: {"sync", "async", "backends", "missing", ...}."""
    backends, missing = available_backends(names)
    server = Redis()
    counter = ConnectionCounter(server.port)
    sentinel = None
    if set(backends) & set(SENTINEL_SERVICES):
        sentinel = RedisSentinel(server, "bench")
        OPTIONS.update({name: {"SENTINELS": [sentinel.address]} for name in SENTINEL_SERVICES})
    try:
        info = server.info()
        # Valkey answers as Redis 7.2.4 in redis_version, and names itself apart.
        version = (f"valkey {info['valkey_version']}" if "valkey_version" in info
                   else info.get("redis_version", "?"))
        print(f"CPython {sys.version.split()[0]}, Django {django.get_version()}, redis-server {version}, "
              f"backends: {', '.join(backends)}", flush=True)
        async_results = [] if args.no_async else async_rows(backends, server.location, counter, args)
        sync_results = sync_rows(backends, server.location, server.process.pid, args)
    finally:
        counter.close()
        if sentinel is not None:
            sentinel.stop()
        server.stop()
    names = list(backends)
    print()
    print(markdown(sync_results, names, [("operation", lambda row: row["op"]),
                                         ("threads", lambda row: str(row["threads"]))]))
    print()
    print(cpu_table(sync_results, names))
    if async_results:
        print()
        print(async_table(async_results, names))
    for name, reason in missing.items():
        print(f"\n{name}: not measured on CPython {sys.version.split()[0]}: {reason}")
    return {"python": sys.version.split()[0], "django": django.get_version(), "redis_server": version,
            "backends": names, "missing": missing, "sync": sync_results, "async": async_results}


def newest_python(choice):
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    path = os.path.join(ROOT, ".venv-newest", "bin", "python")
    return path if os.access(path, os.X_OK) else None


def run_newest(python, args):
    """The same benchmark on ``python`` (CPython >= 3.12) with django-vcache:
    its result, or (None, why not)."""
    probe = subprocess.run([python, "-c", "import django_vcache.backend"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"django_vcache does not import on {python}: {last}"
    import racefree

    with tempfile.TemporaryDirectory(prefix="racefree-redis-bench-") as directory:
        out = os.path.join(directory, "newest.json")
        command = [python, os.path.abspath(__file__), "--newest", "none", "--json", out,
                   "--racefree-path", os.path.dirname(os.path.dirname(os.path.abspath(racefree.__file__))),
                   "--backends", ",".join(args.newest_backends), "--seconds", str(args.seconds),
                   "--rounds", str(args.rounds), "--async-seconds", str(args.async_seconds),
                   "--tasks", str(args.tasks), "--threads", *map(str, args.threads), "--ops", ",".join(args.ops)]
        if args.no_async:
            command.append("--no-async")
        if args.async_shared:
            command.append("--async-shared")
        print(f"\nOn {python}:", flush=True)
        done = subprocess.run(command)
        if done.returncode != 0 or not os.path.exists(out):
            return None, f"the run on {python} failed (exit status {done.returncode})"
        with open(out) as results:
            return json.load(results)["results"], None



def targets(here, newest):
    """Each of issue 22's targets: (text, met or None if not measured, what was measured)."""
    found = []
    if "racefree" not in here["backends"]:
        return found

    def verdict(text, cells, good):
        # A target none of whose cells ran (--ops, --threads, --no-async) is not measured.
        if not cells:
            return text, None, "not in this run"
        shown = {k: f"{v:.2f}x" if isinstance(v, float) else str(v) for k, v in cells.items()}
        return text, all(good(v) for v in cells.values()), "; ".join(f"{k}: {v}" for k, v in shown.items())

    if STOCK in here["backends"]:
        get = {"get-hit 1T": r["ratios"][STOCK] for r in here["sync"] if r["op"] == "get-hit" and r["threads"] == 1}
        found.append(verdict("single-thread get >= 2x Django's RedisCache", get, lambda v: v >= 2))
        ratios = {f"{r['op']}, {r['instances']}": r["ratios"][STOCK] for r in here["async"]}
        found.append(verdict("async >= 5x Django's RedisCache", ratios, lambda v: v >= 5))
    judged = False
    for name, what in VCACHE_COLUMNS:
        if not (newest and name in newest["backends"]):
            continue
        judged = True
        cells = {f"{r['op']} {r['threads']}T": r["ratios"][name] for r in newest["sync"]}
        cells.update({f"{r['op']}, {r['instances']}": r["ratios"][name] for r in newest["async"]})
        if not cells:
            found.append((f"at least django-vcache's throughput ({what})", None, "not in this run"))
            continue
        below = {k: v for k, v in cells.items() if v < 1}
        found.append((f"at least django-vcache's throughput ({what})", not below,
                      f"{len(cells) - len(below)} of {len(cells)} cells >= 1.00x"
                      + (f"; below: {', '.join(f'{k} {v:.3f}x' for k, v in below.items())}" if below else "")))
    if not judged:
        found.append(("at least django-vcache's throughput", None, "no django-vcache column in this run"))
    held = {f"{r['op']}, {r['instances']}": r["connections"]["racefree"] for r in here["async"]}
    if newest:
        held.update({f"{k} (CPython {newest['python']})": r["connections"]["racefree"]
                     for r in newest["async"] for k in [f"{r['op']}, {r['instances']}"]})
    found.append(verdict("<= 4 connections per process at 200 async tasks", held, lambda v: v <= 4))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per sync run")
    parser.add_argument("--async-seconds", type=float, default=1.0, help="per async run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=200, help="asyncio tasks")
    parser.add_argument("--async-shared", action="store_true",
                        help="also aget/aset with one backend instance shared by all tasks")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8], help="client threads")
    parser.add_argument("--ops", default=",".join(SYNC_OPS),
                        help=f"the sync operations (comma-separated; also {', '.join(EXTRA_OPS)})")
    parser.add_argument("--no-async", action="store_true", help="the sync rows only")
    parser.add_argument("--backends", default="racefree,RedisCache,django-redis,django-vcache-pickle,django-vcache",
                        help="comma-separated: " + ", ".join(BACKENDS))
    parser.add_argument("--newest", default="auto",
                        help="the CPython >= 3.12 to run django-vcache on: auto (.venv-newest), a path, or none")
    parser.add_argument("--newest-backends", default="racefree,django-vcache-pickle,django-vcache",
                        help="the backends of that run (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 0.5 s: a smoke run")
    parser.add_argument("--racefree-path", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.async_seconds = 2, 0.5, 0.5
    args.newest_backends = args.newest_backends.split(",")
    args.ops = args.ops.split(",")
    if unknown := set(args.ops) - set(SYNC_OPS + EXTRA_OPS):
        parser.error(f"unknown operation(s) {', '.join(sorted(unknown))}; known: {', '.join(SYNC_OPS + EXTRA_OPS)}")
    started = time.perf_counter()

    names = args.backends.split(",")
    if set(args.ops) & set(STRUCTURE_OPS) and not set(names) <= set(STRUCTURE_BACKENDS):
        parser.error(f"{', '.join(STRUCTURE_OPS)} run on {' and '.join(STRUCTURE_BACKENDS)} only: "
                     f"--backends {','.join(STRUCTURE_BACKENDS)}")
    for name in names + args.newest_backends:
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if names[0] != "racefree" or args.newest_backends[0] != "racefree":
        parser.error("racefree comes first in --backends and --newest-backends (the ratios are against it)")
    here = run_here(names, args)
    newest, why_not = None, None
    if any(name in here["missing"] for name in NEWEST_ONLY):
        python = newest_python(args.newest)
        if python is None:
            why_not = "no CPython >= 3.12 to run it on (.venv-newest: `make build-newest`)"
        else:
            newest, why_not = run_newest(python, args)
        if why_not:
            print(f"\ndjango-vcache: not measured: {why_not}")
    if args.racefree_path is None:
        print()
        for text, met, measured in targets(here, newest):
            verdict = "not measured" if met is None else ("met" if met else "NOT MET")
            print(f"target: {text}: {verdict} ({measured})")
        print(f"\n({time.perf_counter() - started:.0f} s)")
    save(args.json, here, newest=newest, django_vcache=why_not or "measured", seconds=args.seconds,
         async_seconds=args.async_seconds, rounds=args.rounds, tasks=args.tasks)


if __name__ == "__main__":
    main()
