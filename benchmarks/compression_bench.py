"""Compression side by side: racefree without compression, with zlib and
with zstd, against the stock backends on the same run, on one memcached
started here and on one disk, through Django's cache API.

    python benchmarks/compression_bench.py [--seconds 1] [--rounds 3] [--dir build] [--json out.json]

Values are compressible JSON-like text (records of ids, names, emails,
scores and tags drawn from a seeded generator, stored as a str) of 10 KB
and 200 KB. On memcached the stock side is Django's ``PyMemcacheCache``,
as configured by default and with pymemcache's ``CompressedSerde``
(zlib, the format racefree's zlib shares); on the file system it is
Django's ``FileBasedCache``, which always zlib-compresses its files.
``get`` reads one of 20 stored keys per call, ``set`` writes one of them.
Every cell is ops/s of one thread, the median of ``--rounds`` runs, the
backends taking turns within every round; each ratio is the median of
the rounds' ratios. Stored sizes are the bytes the server or the file
system holds for one value (the file store's and Django's entry files
whole, headers included).
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure()
    django.setup()

from _common import save, size_label, threaded_rate  # noqa: E402
from support.servers import Memcached  # noqa: E402

KEYS = [f"bench:{i}" for i in range(20)]
RACEFREE_MEMCACHED = "racefree.backends.memcached.MemcachedCache"
RACEFREE_FILE = "racefree.backends.filebased.FileBasedCache"
# name -> (store, backend path, OPTIONS)
BACKENDS = {
    "memcached": {
        "racefree": (RACEFREE_MEMCACHED, {}),
        "racefree zlib": (RACEFREE_MEMCACHED, {"COMPRESS": "zlib"}),
        "racefree zstd": (RACEFREE_MEMCACHED, {"COMPRESS": "zstd"}),
        "PyMemcacheCache": ("django.core.cache.backends.memcached.PyMemcacheCache", {}),
        "PyMemcacheCache+CompressedSerde": ("django.core.cache.backends.memcached.PyMemcacheCache", "compressed"),
    },
    "file": {
        "racefree": (RACEFREE_FILE, {}),
        "racefree zlib": (RACEFREE_FILE, {"COMPRESS": "zlib"}),
        "racefree zstd": (RACEFREE_FILE, {"COMPRESS": "zstd"}),
        "FileBasedCache": ("django.core.cache.backends.filebased.FileBasedCache", {}),
    },
}
# (racefree variant, stock backend) pairs whose ratio the tables show.
RATIOS = {
    "memcached": [
        ("racefree", "PyMemcacheCache"),
        ("racefree zlib", "PyMemcacheCache+CompressedSerde"),
        ("racefree zstd", "PyMemcacheCache+CompressedSerde"),
    ],
    "file": [("racefree", "FileBasedCache"), ("racefree zlib", "FileBasedCache"), ("racefree zstd", "FileBasedCache")],
}


def json_like_text(size, seed=20):
    """JSON text of about ``size`` bytes that compresses as real records
    do (repeated field names and words, varied numbers), not as a
    repeated string."""
    rng = random.Random(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    records = []
    length = 0
    while length < size:
        name = f"{rng.choice(words).title()} {rng.choice(words).title()}"
        record = {
            "id": rng.randrange(10**9),
            "name": name,
            "email": f"{name.replace(' ', '.').lower()}{rng.randrange(1000)}@example.com",
            "score": round(rng.random() * 100, 3),
            "active": rng.random() < 0.8,
            "tags": rng.sample(words, 3),
        }
        records.append(record)
        length += len(json.dumps(record)) + 2
    return json.dumps(records)[:size]


def make(store, name, location):
    """``name``'s backend on ``location``, under a key prefix of its own."""
    from django.utils.module_loading import import_string

    path, options = BACKENDS[store][name]
    if options == "compressed":
        from pymemcache.serde import CompressedSerde

        options = {"serde": CompressedSerde()}
    if store == "file":
        options = {"MAX_ENTRIES": 1_000_000, **options}
    params = {"TIMEOUT": None, "KEY_PREFIX": name.replace(" ", "-"), "OPTIONS": options}
    return import_string(path)(location, params)


def workload(op, cache, value):
    state = [0]

    def get():
        state[0] = (state[0] + 7) % len(KEYS)
        if cache.get(KEYS[state[0]]) is None:
            raise AssertionError("a miss in a get-hit benchmark")

    def set_value():
        state[0] = (state[0] + 7) % len(KEYS)
        cache.set(KEYS[state[0]], value)

    return get if op == "get" else set_value


def stored_size(store, name, cache, location):
    """The bytes the store holds for one value of ``name``'s."""
    key = cache.make_and_validate_key(KEYS[0])
    if store == "memcached":
        # Any client reads the raw item: racefree's store, without decoding.
        return len(make(store, "racefree", location)._store.get(key)[1])
    if name == "FileBasedCache":
        return os.path.getsize(cache._key_to_file(KEYS[0]))
    return os.path.getsize(cache._store.path_for(key))


def interleaved(names, rounds, run):
    """``{name: [result per round]}``, the names taking turns each round."""
    runs = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            runs[name].append(run(name))
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--dir", help="where to put the file caches (default: a temp dir)")
    parser.add_argument("--stores", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10 * 1024, 200 * 1024])
    args = parser.parse_args()

    results = []
    server = Memcached(memory_mb=256) if "memcached" in args.stores else None
    base = tempfile.mkdtemp(prefix="racefree-compression-bench-", dir=args.dir)
    try:
        for store in args.stores:
            names = list(BACKENDS[store])
            for size in args.sizes:
                value = json_like_text(size)
                locations = {
                    name: server.location if server and store == "memcached" else os.path.join(base, f"{name}-{size}")
                    for name in names
                }
                caches = {name: make(store, name, locations[name]) for name in names}
                for name, cache in caches.items():
                    cache.set_many({key: value for key in KEYS})
                    if cache.get(KEYS[0]) != value:
                        raise AssertionError(f"{name} did not read back its value")
                sizes = {name: stored_size(store, name, caches[name], locations[name]) for name in names}
                for op in ("get", "set"):
                    runs = interleaved(
                        names,
                        args.rounds,
                        lambda name: threaded_rate(1, args.seconds, lambda _: workload(op, caches[name], value)),
                    )
                    row = {
                        "store": store,
                        "op": op,
                        "size": size,
                        "ops": {name: statistics.median(runs[name]) for name in names},
                        "stored": sizes,
                        "ratios": {
                            f"{ours} vs {theirs}": statistics.median(a / b for a, b in zip(runs[ours], runs[theirs]))
                            for ours, theirs in RATIOS[store]
                        },
                    }
                    results.append(row)
                    cells = "  ".join(f"{name} {row['ops'][name]:,.0f}/s" for name in names)
                    print(f"{store:<9} {op:<3} {size_label(size):>6}  {cells}", flush=True)
    finally:
        if server is not None:
            server.stop()
    print()
    print(markdown(results))
    save(args.json, results, seconds=args.seconds, rounds=args.rounds)


def markdown(results):
    """One table per store: ops/s per backend, the ratios, then the
    stored size of one value per backend."""
    tables = []
    for store in BACKENDS:
        rows = [row for row in results if row["store"] == store]
        if not rows:
            continue
        names = list(BACKENDS[store])
        pairs = [f"{ours} vs {theirs}" for ours, theirs in RATIOS[store]]
        header = ["store", "operation", "value", *(f"{name} ops/s" for name in names), *pairs]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            cells = [store, row["op"], size_label(row["size"])]
            cells += [f"{row['ops'][name]:,.0f}" for name in names]
            cells += [f"{row['ratios'][pair]:.2f}x" for pair in pairs]
            lines.append("| " + " | ".join(cells) + " |")
        header = ["store", "value", *(f"{name} stored" for name in names)]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            if row["op"] == "get":
                cells = [store, size_label(row["size"])]
                cells += [f"{row['stored'][name]:,} B" for name in names]
                lines.append("| " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


if __name__ == "__main__":
    main()
