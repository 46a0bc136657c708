"""Database caches side by side: racefree vs Django's DatabaseCache on one
PostgreSQL server started here with its default durability (fsync on, as
a real server runs; max_connections 400), through Django's cache API.

    python benchmarks/db_bench.py [--seconds 1] [--rounds 3] [--json out.json]

Each backend has its own table (created by ``createcachetable``) holding
1,000 entries. Every thread uses its own backend instance and Django its
own connection per thread. Each cell is the median of ``--rounds`` runs,
the backends taking turns; ratios are racefree / Django.

Then latency with more threads than racefree's pool has connections:
``--crowd`` threads (64) calling get-hit, racefree at its default
POOL_SIZE of 10 (callers wait in line for a connection) against Django
with a connection per thread; the percentiles are over every call of
``--rounds`` runs of ``--seconds`` each, the backends taking turns.
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

import django  # noqa: E402
from _common import cycling_get, cycling_set, markdown, median_row, save, size_label, threaded_rate  # noqa: E402
from django.conf import settings  # noqa: E402
from support.servers import Postgres  # noqa: E402

BACKENDS = {
    "racefree": ("racefree.backends.db.DatabaseCache", "bench_racefree"),
    "DatabaseCache": ("django.core.cache.backends.db.DatabaseCache", "bench_stock"),
}
ENTRIES = 1_000


def make(name):
    from django.utils.module_loading import import_string

    path, table = BACKENDS[name]
    return import_string(path)(table, {"OPTIONS": {"MAX_ENTRIES": 1_000_000}})


def workload(op, cache, value, thread):
    keys = [f"entry:{i}" for i in range(100)]
    if op == "get-hit":
        return cycling_get(cache, [f"entry:{i}" for i in range(ENTRIES)], thread)
    if op == "set":
        return cycling_set(cache, value, thread)
    if op == "incr":
        key = f"counter:{thread}"
        cache.set(key, 0)
        return lambda: cache.incr(key)
    if op == "get_many(100)":
        return lambda: cache.get_many(keys)
    raise ValueError(op)


def measure(name, op, size, threads, seconds):
    from django.db import connections

    return threaded_rate(
        threads,
        seconds,
        lambda index: workload(op, make(name), b"x" * size, index),
        # Django opened a connection in each thread.
        finish=connections.close_all,
    )


def crowd_latencies(name, threads, seconds):
    """Each get-hit's latency (s) from ``threads`` threads for ``seconds``."""
    from django.db import connections

    latencies = []
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()

    def run(index):
        call = workload("get-hit", make(name), None, index)
        call()
        barrier.wait()
        mine = []
        while not stop.is_set():
            started = time.perf_counter()
            call()
            mine.append(time.perf_counter() - started)
        latencies.extend(mine)
        connections.close_all()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return latencies


def percentile(ordered, fraction):
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--crowd", type=int, default=64, help="threads of the latency run (0: none)")
    parser.add_argument("--json")
    args = parser.parse_args()

    server = Postgres(as_shipped=True)
    latency_rows = []
    try:
        settings.configure(DATABASES={"default": server.settings("postgres")}, USE_TZ=True)
        django.setup()
        from django.core.management import call_command

        names = list(BACKENDS)
        for name in names:
            call_command("createcachetable", BACKENDS[name][1], verbosity=0)
            cache = make(name)
            cache.set_many({f"entry:{i}": b"x" * 100 for i in range(ENTRIES)}, None)
        results = []
        for op in ("get-hit", "set", "incr", "get_many(100)"):
            for threads in (1, 8):
                row = {"op": op, "size": 100, "threads": threads}
                median_row(row, names, args.rounds, lambda name: measure(name, op, 100, threads, args.seconds))
                results.append(row)
                cells = "  ".join(f"{name} {row[name]:>8.0f}/s" for name in names)
                print(f"{op:<14} {threads}T  {cells}", flush=True)
        if args.crowd:
            pooled = {name: [] for name in names}
            for round_index in range(args.rounds):
                order = names if round_index % 2 == 0 else names[::-1]
                for name in order:
                    pooled[name].extend(crowd_latencies(name, args.crowd, args.seconds))
            for name in names:
                ordered = sorted(pooled[name])
                row = {"backend": name, "threads": args.crowd, "calls": len(ordered),
                       **{key: percentile(ordered, q) * 1e3 for key, q in
                          (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999), ("max_ms", 1.0))}}
                latency_rows.append(row)
                print(f"get-hit {args.crowd}T {name}: p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} "
                      f"p99.9 {row['p999_ms']:.2f} max {row['max_ms']:.1f} ms", flush=True)
    finally:
        from racefree.backends.db import close_pools

        close_pools()
        server.close()
    print()
    columns = [
        ("operation", lambda row: row["op"]),
        ("value", lambda row: size_label(row["size"])),
        ("threads", lambda row: str(row["threads"])),
    ]
    print(markdown(results, names, columns))
    if latency_rows:
        print()
        print("| backend | threads | calls | get-hit p50 | p99 | p99.9 | max |")
        print("|---|---|---|---|---|---|---|")
        for row in latency_rows:
            print(f"| {row['backend']} | {row['threads']} | {row['calls']:,} | {row['p50_ms']:.2f} ms | "
                  f"{row['p99_ms']:.2f} ms | {row['p999_ms']:.2f} ms | {row['max_ms']:.1f} ms |")
    save(args.json, results, seconds=args.seconds, rounds=args.rounds, latency=latency_rows)


if __name__ == "__main__":
    main()
