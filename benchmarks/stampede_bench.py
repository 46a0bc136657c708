"""A hot key expiring under load: how many times it is recomputed, and how
long callers wait, racefree vs Django's stock backend of the same kind.

    python benchmarks/stampede_bench.py [--workers 64] [--seconds 10] [--ttl 2]
                                        [--compute 0.05] [--only memcached,file,database]

``--workers`` threads (each with its own backend object, as Django's
``caches[...]`` gives) call ``get_or_set`` on one key in a loop for
``--seconds``; the key lives ``--ttl`` seconds and takes ``--compute``
seconds to compute. Reported per backend: computations, expiries (distinct
values served), computations per expiry (ideal: 1), and the p50/p99/max
latency of ``get_or_set``. memcached and PostgreSQL are started here.
"""

import argparse
import itertools
import os
import statistics
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

import django  # noqa: E402
from _common import save  # noqa: E402
from django.conf import settings  # noqa: E402
from support.servers import Memcached, Postgres  # noqa: E402

PAIRS = {
    "memcached": ("racefree.backends.memcached.MemcachedCache", "django.core.cache.backends.memcached.PyMemcacheCache"),
    "file": ("racefree.backends.filebased.FileBasedCache", "django.core.cache.backends.filebased.FileBasedCache"),
    "database": ("racefree.backends.db.DatabaseCache", "django.core.cache.backends.db.DatabaseCache"),
}


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def expiries_of(starts, ttl):
    """How many times the key went missing: computations that start within
    a quarter of the TTL of the first one of a burst answer the same expiry
    (memcached's whole-second clock keeps a value at least TTL - 1 s)."""
    expiries, burst = 0, None
    for started in sorted(starts):
        if burst is None or started - burst > ttl / 4:
            expiries, burst = expiries + 1, started
    return expiries


def hammer(make_cache, workers, seconds, ttl, compute_seconds):
    """Run the load; return computations, expiries and latencies."""
    serial = itertools.count(1)
    computed = []
    served = set()
    latencies = [[] for _ in range(workers)]
    key = f"hot-{uuid.uuid4().hex[:8]}"
    start = threading.Barrier(workers + 1)
    stop = threading.Event()

    def compute():
        computed.append(time.monotonic())
        time.sleep(compute_seconds)  # the query the cache saves
        return next(serial)

    def run(index):
        from django.db import connections

        cache = make_cache()
        mine = latencies[index]
        seen = set()
        start.wait()
        while not stop.is_set():
            began = time.perf_counter()
            seen.add(cache.get_or_set(key, compute, ttl))
            mine.append(time.perf_counter() - began)
        served.update(seen)
        connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    start.wait()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    everyone = [latency for per_worker in latencies for latency in per_worker]
    expiries = expiries_of(computed, ttl)
    return {
        "computations": len(computed),
        "expiries": expiries,
        "values_served": len(served),
        "per_expiry": len(computed) / max(1, expiries),
        "calls": len(everyone),
        "p50_ms": percentile(everyone, 0.5) * 1000,
        "p99_ms": percentile(everyone, 0.99) * 1000,
        "max_ms": max(everyone) * 1000,
        "mean_ms": statistics.fmean(everyone) * 1000,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--compute", type=float, default=0.05)
    parser.add_argument("--only", default="memcached,file,database")
    parser.add_argument("--dir", default=None, help="where the file caches live (default: a temp dir)")
    parser.add_argument("--json")
    args = parser.parse_args()
    kinds = args.only.split(",")

    import tempfile

    servers = []
    memcached = Memcached() if "memcached" in kinds else None
    postgres = Postgres() if "database" in kinds else None
    servers = [s for s in (memcached, postgres) if s]
    try:
        databases = {"default": postgres.settings("postgres")} if postgres else {}
        settings.configure(DATABASES=databases, USE_TZ=True)
        django.setup()
        from django.core.management import call_command
        from django.utils.module_loading import import_string

        directory = tempfile.mkdtemp(prefix="racefree-stampede-", dir=args.dir)
        results = []
        for kind in kinds:
            for side, path in zip(("racefree", "stock"), PAIRS[kind]):
                if kind == "memcached":
                    location, params = memcached.location, {}
                elif kind == "file":
                    location, params = os.path.join(directory, side), {}
                else:
                    location, params = f"stampede_{side}", {}
                    call_command("createcachetable", location, verbosity=0)
                backend = import_string(path)
                row = hammer(lambda: backend(location, dict(params)), args.workers, args.seconds, args.ttl,
                             args.compute)
                row.update(kind=kind, side=side, backend=path.rsplit(".", 1)[1])
                results.append(row)
                print(f"{kind:<9} {side:<8} {row['computations']:>5} computations / {row['expiries']:>3} expiries"
                      f" = {row['per_expiry']:5.1f} per expiry; p50 {row['p50_ms']:6.1f} ms,"
                      f" p99 {row['p99_ms']:6.1f} ms, max {row['max_ms']:6.1f} ms, {row['calls']} calls",
                      flush=True)
    finally:
        if postgres:
            from racefree.backends.db import close_pools

            close_pools()
        for server in servers:
            server.close()
    print()
    print(f"{args.workers} workers, key TTL {args.ttl} s, computation {args.compute * 1000:.0f} ms, "
          f"{args.seconds:.0f} s per backend")
    print()
    print("| store | backend | computations per expiry | p99 latency | max latency |")
    print("|---|---|---|---|---|")
    for row in results:
        print(f"| {row['kind']} | {row['side']} ({row['backend']}) | {row['per_expiry']:.1f} "
              f"({row['computations']}/{row['expiries']}) | {row['p99_ms']:.1f} ms | {row['max_ms']:.1f} ms |")
    save(args.json, results, workers=args.workers, seconds=args.seconds, ttl=args.ttl, compute=args.compute)


if __name__ == "__main__":
    main()
