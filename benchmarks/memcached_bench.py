"""Memcached backends side by side: racefree vs Django's PyMemcacheCache and
PyLibMCCache, on one memcached started here, through Django's cache API.

    python benchmarks/memcached_bench.py [--seconds 1] [--server-threads 4 2] [--json out.json]

Every thread uses its own backend instance, as Django's ``caches[...]``
gives each thread (the stock clients are not thread-safe otherwise).
Throughput is ops/s summed over threads; each cell is the median of
``--rounds`` runs, the backends taking turns within every round so that
machine noise hits them alike. Ratios are racefree / stock, the median of
the rounds' ratios. Every case runs against a memcached with its default 4
worker threads (``-t 4``, what users run) and again with 2 (``-t 2``, as
many as this machine has cores), each server started fresh in its default
configuration otherwise.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.configure()
django.setup()

from _common import cycling_get, markdown, median_row, save, size_label, threaded_rate  # noqa: E402
from support.servers import Memcached  # noqa: E402

RACEFREE = "racefree.backends.memcached.MemcachedCache"
BACKENDS = {
    "racefree": RACEFREE,
    "PyMemcacheCache": "django.core.cache.backends.memcached.PyMemcacheCache",
    "PyLibMCCache": "django.core.cache.backends.memcached.PyLibMCCache",
    # What combining concurrent gets into shared round trips is worth.
    "racefree combined": RACEFREE,
}
OPTIONS = {"racefree combined": {"COMBINE_GETS": True}}


def make_backend(name, location):
    from django.utils.module_loading import import_string

    return import_string(BACKENDS[name])(location, {"OPTIONS": OPTIONS.get(name, {})})


def available_backends():
    found = {}
    for name, path in BACKENDS.items():
        try:
            module = path.rsplit(".", 1)[0]
            __import__(module)
            if name == "PyLibMCCache":
                import pylibmc  # noqa: F401
            if name == "PyMemcacheCache":
                import pymemcache  # noqa: F401
            found[name] = path
        except ImportError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
    return found


def workload(op, cache, value, thread):
    """A callable doing one operation (or one request) per call."""
    keys = [f"bench:{i}" for i in range(100)]
    if op == "get-hit":
        return cycling_get(cache, keys, thread)
    if op == "get-miss":
        return lambda: cache.get("bench:absent")
    if op == "set":
        key = f"bench:set:{thread}"
        return lambda: cache.set(key, value)
    if op == "get_many(100)":
        return lambda: cache.get_many(keys)
    if op == "incr":
        key = f"bench:incr:{thread}"
        cache.set(key, 0)
        return lambda: cache.incr(key)
    if op == "request":
        # What a Django request does: a few cache calls, then close().
        key = f"bench:request:{thread}"

        def request():
            cache.get(keys[0])
            cache.get(key)
            cache.set(key, value)
            cache.close()

        return request
    raise ValueError(op)


def measure(name, location, op, size, threads, seconds):
    value = b"x" * size
    seed = make_backend(name, location)
    for i in range(100):
        seed.set(f"bench:{i}", value)
    return threaded_rate(threads, seconds, lambda index: workload(op, make_backend(name, location), value, index))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="100 B, fewer cases")
    parser.add_argument("--ops", help="comma-separated operations to run (default: all)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8], help="client threads")
    parser.add_argument("--server-threads", type=int, nargs="+", default=[4, 2],
                        help="memcached worker threads (-t), one server each (default: 4 2)")
    args = parser.parse_args()

    backends = available_backends()
    cases = []
    sizes = [100] if args.quick else [100, 10 * 1024]
    ops = ["get-hit", "get-miss", "set", "get_many(100)", "incr", "request"]
    if args.ops:
        ops = [op for op in ops if op in args.ops.split(",")]
    for op in [op for op in ops if op != "request"]:
        for size in sizes if op in ("get-hit", "set", "get_many(100)") else [100]:
            for threads in args.threads:
                cases.append((op, size, threads))
    for threads in args.threads if "request" in ops else ():
        cases.append(("request", 100, threads))
    results = []
    for server_threads in args.server_threads:
        server = Memcached(memory_mb=256, threads=server_threads)
        try:
            for op, size, threads in cases:
                row = {"op": op, "size": size, "threads": threads, "server_threads": server_threads}
                median_row(
                    row,
                    list(backends),
                    args.rounds,
                    lambda name: measure(name, server.location, op, size, threads, args.seconds),
                )
                results.append(row)
                print(format_row(row, backends), flush=True)
        finally:
            server.stop()
    print()
    columns = [
        ("operation", lambda row: row["op"]),
        ("value", lambda row: size_label(row["size"])),
        ("threads", lambda row: str(row["threads"])),
        ("memcached", lambda row: f"-t {row['server_threads']}"),
    ]
    print(markdown(results, list(backends), columns))
    save(args.json, results, seconds=args.seconds, rounds=args.rounds)


def format_row(row, backends):
    cells = [f"{name} {row[name]:>9.0f}/s" for name in backends]
    label = f"{row['op']:<14} {size_label(row['size']):>6} {row['threads']}T -t{row['server_threads']}"
    return label + "  " + "  ".join(cells)


if __name__ == "__main__":
    main()
