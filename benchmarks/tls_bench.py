"""What TLS costs racefree: the same backend over plain text and over TLS,
on memcached (with its authfile login on the TLS side) and on PostgreSQL
(sslmode=disable against verify-full), servers started here with a
throwaway CA, through Django's cache API, 100 B values.

    python benchmarks/tls_bench.py [--seconds 1] [--rounds 3] [--json out.json]

Plain and TLS take turns within each round; the ratio is TLS / plain, the
median of the rounds' ratios. "new connection" is the first call after
the pool was emptied (connect, handshake, login, one request), in ms.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

import django  # noqa: E402
from _common import save, threaded_rate  # noqa: E402
from django.conf import settings  # noqa: E402
from support.certs import Authority  # noqa: E402
from support.secure_memcached import SecureMemcached  # noqa: E402
from support.servers import Memcached, Postgres  # noqa: E402

VALUE = b"x" * 100


def rate(cache, op, threads, seconds):
    def prepare(index):
        key = f"bench{index}"
        cache.set(key, VALUE)
        return (lambda: cache.get(key)) if op == "get" else (lambda: cache.set(key, VALUE))

    return threaded_rate(threads, seconds, prepare)


def new_connection_ms(cache, empty_pool):
    empty_pool()
    started = time.perf_counter()
    cache.get("bench0")
    return (time.perf_counter() - started) * 1000


def compare(store, variants, seconds, rounds):
    """Rows of ops/s for plain and TLS; ``variants`` maps "plain"/"TLS" to
    (cache, empty_pool)."""
    rows = []
    for threads in (1, 8):
        for op in ("get", "set"):
            runs = {name: [] for name in variants}
            for _ in range(rounds):
                for name, (cache, _) in variants.items():
                    runs[name].append(rate(cache, op, threads, seconds))
            rows.append({
                "store": store, "operation": f"{op}, {threads} thread{'s' if threads > 1 else ''}",
                **{name: statistics.median(values) for name, values in runs.items()},
                "ratio": statistics.median(tls / plain for tls, plain in zip(runs["TLS"], runs["plain"])),
            })
    runs = {name: [] for name in variants}
    for _ in range(max(rounds, 5)):
        for name, (cache, empty_pool) in variants.items():
            runs[name].append(new_connection_ms(cache, empty_pool))
    rows.append({
        "store": store, "operation": "new connection (ms)",
        **{name: statistics.median(values) for name, values in runs.items()},
        "ratio": statistics.median(tls / plain for tls, plain in zip(runs["TLS"], runs["plain"])),
    })
    return rows


def memcached_rows(seconds, rounds):
    from racefree.backends.memcached import MemcachedCache

    plain, secure = Memcached(), SecureMemcached()
    try:
        caches = {"plain": MemcachedCache(plain.location, {}),
                  "TLS": MemcachedCache(secure.location, {"OPTIONS": secure.options()})}
        # A pool of 0 idle connections closes each one after its call.
        emptiers = {name: MemcachedCache(location, {"OPTIONS": {**options, "POOL_SIZE": 0}})
                    for name, location, options in (("plain", plain.location, {}),
                                                    ("TLS", secure.location, secure.options()))}
        variants = {name: (caches[name], lambda: None) for name in caches}
        rows = compare("memcached", variants, seconds, rounds)
        # New connections: a backend that keeps none, so every call dials.
        runs = {name: [new_connection_ms(cache, lambda: None) for _ in range(max(rounds, 5))]
                for name, cache in emptiers.items()}
        rows[-1].update({name: statistics.median(values) for name, values in runs.items()},
                        ratio=statistics.median(t / p for t, p in zip(runs["TLS"], runs["plain"])))
        return rows
    finally:
        plain.close()
        secure.close()


def postgres_rows(seconds, rounds):
    from racefree.backends.db import DatabaseCache

    authority = Authority()
    server = Postgres(tls=authority, as_shipped=True)
    try:
        server.create_cache_table()
        modes = {"plain": "sslmode=disable", "TLS": f"sslmode=verify-full sslrootcert={authority.cert}"}
        caches = {name: DatabaseCache("cache", {"OPTIONS": {"DSN": f"{server.dsn} {mode}", "MAX_ENTRIES": 10**6}})
                  for name, mode in modes.items()}
        variants = {name: (cache, cache._store.close_idle) for name, cache in caches.items()}
        return compare("PostgreSQL", variants, seconds, rounds)
    finally:
        server.close()
        authority.close()


def table(rows):
    lines = ["| store | operation | plain | TLS | TLS / plain |", "|---|---|---|---|---|"]
    for row in rows:
        digits = ".2f" if "ms" in row["operation"] else ",.0f"
        lines.append(f"| {row['store']} | {row['operation']} | {row['plain']:{digits}} | {row['TLS']:{digits}} "
                     f"| {row['ratio']:.2f}x |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    settings.configure(CACHES={}, SECRET_KEY="bench", USE_TZ=True)
    django.setup()
    rows = memcached_rows(args.seconds, args.rounds) + postgres_rows(args.seconds, args.rounds)
    print(table(rows))
    save(args.json, rows, seconds=args.seconds, rounds=args.rounds)


if __name__ == "__main__":
    main()
