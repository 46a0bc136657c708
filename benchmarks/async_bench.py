"""Async cache calls under one asyncio loop: racefree's native a* methods vs
Django's stock backends' default async methods (sync_to_async), 200
concurrent tasks, on a memcached and a PostgreSQL started here and a temp
directory.

    python benchmarks/async_bench.py [--seconds 2] [--rounds 5] [--tasks 200] [--stores memcached,file,database]

Two settings: outside any request context (all of Django's
thread-sensitive hops queue onto one thread) and with each task inside its
own ``ThreadSensitiveContext``, as Django's ASGI handler runs each request.
Each task loops aget (a hit), aset, aget... on its own keys. The backends
take turns round by round (``--rounds``); reported are the median ops/s,
the p50/p99 latency of one call (median over rounds), racefree's
throughput ratio (the median of the rounds' ratios) and the worst round's
ratio, so that a good run of either side cannot carry the claim. memcached
runs with its default 4 worker threads.
"""

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

import django  # noqa: E402
from _common import save  # noqa: E402
from django.conf import settings  # noqa: E402
from support.servers import Memcached, Postgres  # noqa: E402

PAIRS = {
    "memcached": [
        ("racefree", "racefree.backends.memcached.MemcachedCache"),
        ("PyMemcacheCache", "django.core.cache.backends.memcached.PyMemcacheCache"),
    ],
    "file": [
        ("racefree", "racefree.backends.filebased.FileBasedCache"),
        ("FileBasedCache", "django.core.cache.backends.filebased.FileBasedCache"),
    ],
    "database": [
        ("racefree", "racefree.backends.db.DatabaseCache"),
        ("DatabaseCache", "django.core.cache.backends.db.DatabaseCache"),
    ],
}


async def run(make, tasks, seconds, per_task_context):
    from asgiref.sync import ThreadSensitiveContext

    latencies = []
    stop = time.perf_counter() + seconds

    async def user(index):
        # Each task its own backend instance, as caches[...] gives each
        # request context (the stock clients are not thread-safe).
        cache = make()
        key = f"async-bench-{index}"
        await cache.aset(key, "x" * 100)
        n = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            if n % 2:
                await cache.aset(key, "x" * 100)
            else:
                await cache.aget(key)
            latencies.append(time.perf_counter() - started)
            n += 1

    async def in_context(index):
        async with ThreadSensitiveContext():
            await user(index)

    started = time.perf_counter()
    await asyncio.gather(*((in_context if per_task_context else user)(i) for i in range(tasks)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "ops": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--stores", default=",".join(PAIRS), help="comma-separated: " + ", ".join(PAIRS))
    parser.add_argument("--json")
    args = parser.parse_args()
    stores = args.stores.split(",")

    memcached, postgres = Memcached(), Postgres(as_shipped=True)
    directory = tempfile.mkdtemp(prefix="racefree-async-bench-")
    results = []
    try:
        settings.configure(DATABASES={"default": postgres.settings("postgres")}, USE_TZ=True)
        django.setup()
        from django.core.management import call_command
        from django.db import connections
        from django.utils.module_loading import import_string

        locations = {"memcached": memcached.location, "file": directory, "database": "async_bench"}
        call_command("createcachetable", "async_bench", verbosity=0)
        for kind, pair in PAIRS.items():
            if kind not in stores:
                continue
            for context in (False, True):
                row = {"store": kind, "context": "per task" if context else "none"}
                runs = {name: [] for name, _ in pair}
                for _ in range(args.rounds):
                    for name, path in pair:
                        location = locations[kind] + (f"/{name}" if kind == "file" else "")
                        params = {"OPTIONS": {"MAX_ENTRIES": 1_000_000}} if kind != "memcached" else {}

                        def make(path=path, location=location, params=params):
                            return import_string(path)(location, params)

                        runs[name].append(asyncio.run(run(make, args.tasks, args.seconds, context)))
                        connections.close_all()
                        # Connections that sync_to_async threads opened
                        # go with their threads: free them before the next run.
                        gc.collect()
                        print(f"{kind} context={row['context']} {name}: {runs[name][-1]['ops']:,.0f} ops/s",
                              file=sys.stderr, flush=True)
                for name, outcomes in runs.items():
                    row[name] = {field: statistics.median(o[field] for o in outcomes) for field in outcomes[0]}
                    row[name]["runs"] = [o["ops"] for o in outcomes]
                stock = pair[1][0]
                ratios = [ours / theirs for ours, theirs in zip(row["racefree"]["runs"], row[stock]["runs"])]
                row["ratio"], row["worst_ratio"] = statistics.median(ratios), min(ratios)
                results.append(row)
    finally:
        from racefree.backends.db import close_pools

        close_pools()
        memcached.close()
        postgres.close()
        __import__("shutil").rmtree(directory, ignore_errors=True)

    print(f"{args.tasks} tasks on one loop, aget/aset alternating, 100 B values")
    print(f"{args.tasks} tasks on one loop, aget/aset alternating, 100 B values, median of {args.rounds} rounds")
    print("| store | request context | racefree ops/s | stock | stock ops/s | ratio | worst round "
          "| racefree p50 / p99 ms | stock p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results:
        stock = next(name for name, _ in PAIRS[row["store"]] if name != "racefree")
        ours, theirs = row["racefree"], row[stock]
        print(f"| {row['store']} | {row['context']} | {ours['ops']:,.0f} | {stock} | {theirs['ops']:,.0f} | "
              f"{row['ratio']:.2f}x | {row['worst_ratio']:.2f}x | {ours['p50_ms']:.1f} / {ours['p99_ms']:.1f} | "
              f"{theirs['p50_ms']:.1f} / {theirs['p99_ms']:.1f} |")
    save(args.json, results, seconds=args.seconds, rounds=args.rounds, tasks=args.tasks)


if __name__ == "__main__":
    main()
