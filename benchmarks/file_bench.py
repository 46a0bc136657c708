"""File caches side by side: racefree vs Django's FileBasedCache vs
diskcache's DjangoCache, on the same disk, through Django's cache API.

    python benchmarks/file_bench.py [--seconds 1] [--rounds 3] [--json out.json]

Each case runs with 1,000 and with 100,000 entries already present, for
one process and for four (summed), and the writes (set, incr) and get-hit
once more while a neighbour process unpacks a source archive of 1,500
small files on the same file system and deletes it again, in a loop, as
deploys, builds and uploads do on a real server. The backends take turns
round by round; each cell is the median of ``--rounds`` runs and each
ratio the median of the rounds' ratios. Nothing is synced or dropped
between runs: each backend lives with whatever write-back the others
left, as it would on a shared disk. Django's backend is filled without its
per-set directory listing (that listing is what it measures when it sets).
"""

import argparse
import contextlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import django
from django.conf import settings

sys.path.insert(0, os.path.dirname(__file__))
from _common import cycling_get, cycling_set, markdown, median_row, save, size_label  # noqa: E402

if not settings.configured:
    settings.configure()
    django.setup()

BACKENDS = {
    "racefree": "racefree.backends.filebased.FileBasedCache",
    "FileBasedCache": "django.core.cache.backends.filebased.FileBasedCache",
    "diskcache": "diskcache.DjangoCache",
}
PARAMS = {"TIMEOUT": None, "OPTIONS": {"MAX_ENTRIES": 10_000_000}}
OPS = ["get-hit", "get-miss", "set", "incr"]
# What runs again beside the file-creating neighbour: the writes, whose
# cost is file-system metadata, and a read for comparison.
BUSY_OPS = ("get-hit", "set", "incr")


class Neighbour:
    """A process that unpacks an archive of many small files into a sibling
    directory and removes it again, over and over, while the with-block
    runs: the file-creating load other programs put on a server's disk."""

    FILES = 1_500

    def __init__(self, base):
        self.base = base
        self.archive = os.path.join(base, "neighbour.tar.gz")
        self.process = None

    def make_archive(self):
        source = os.path.join(self.base, "neighbour-source")
        for i in range(self.FILES):
            directory = os.path.join(source, f"pkg{i % 40}")
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, f"module{i}.py"), "wb") as out:
                out.write(os.urandom(200 + (i * 977) % 8000).hex().encode())
        with tarfile.open(self.archive, "w:gz") as archive:
            archive.add(source, arcname="release")
        shutil.rmtree(source)

    def __enter__(self):
        if not os.path.exists(self.archive):
            self.make_archive()
        target = os.path.join(self.base, "neighbour")
        loop = 'while :; do mkdir -p "$1" && tar xzf "$2" -C "$1" && rm -rf "$1"; done'
        self.process = subprocess.Popen(["sh", "-c", loop, "neighbour", target, self.archive])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()
        shutil.rmtree(os.path.join(self.base, "neighbour"), ignore_errors=True)


def make(name, directory):
    from django.utils.module_loading import import_string

    return import_string(BACKENDS[name])(directory, PARAMS)


def fill(name, directory, entries, size):
    cache = make(name, directory)
    if name == "FileBasedCache":
        cache._cull = lambda: None  # fill without listing the directory per set
    value = b"x" * size
    for i in range(entries):
        cache.set(f"entry:{i}", value)
    cache.set("counter", 0)
    if hasattr(cache, "close"):
        cache.close()


def operation(op, cache, entries, size, worker):
    value = b"y" * size
    if op == "get-hit":
        return cycling_get(cache, [f"entry:{i}" for i in range(entries)], worker)
    if op == "get-miss":
        return lambda: cache.get("absent")
    if op == "set":
        return cycling_set(cache, value, worker)
    if op == "incr":
        return lambda: cache.incr("counter")
    raise ValueError(op)


def _worker(name, directory, op, entries, size, worker, seconds, start, results):
    cache = make(name, directory)
    call = operation(op, cache, entries, size, worker)
    call()
    start.wait()
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        call()
        n += 1
    results.put(n / seconds)


def measure(name, directory, op, entries, size, processes, seconds):
    if processes == 1:
        cache = make(name, directory)
        call = operation(op, cache, entries, size, 0)
        call()
        deadline = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < deadline:
            call()
            n += 1
        return n / seconds
    context = multiprocessing.get_context("fork")
    start = context.Barrier(processes + 1)
    results = context.Queue()
    workers = [
        context.Process(target=_worker, args=(name, directory, op, entries, size, i, seconds, start, results))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    start.wait()
    total = sum(results.get(timeout=seconds + 60) for _ in workers)
    for worker in workers:
        worker.join()
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--entries", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--dir", help="where to put the caches (default: a temp dir)")
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--ops", nargs="+", choices=OPS, default=OPS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10 * 1024])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--neighbour", choices=["both", "quiet", "busy"], default="both",
                        help="run without the file-creating neighbour, with it, or both (default)")
    args = parser.parse_args()

    available = {}
    for name in args.backends:
        try:
            make(name, tempfile.mkdtemp())
            available[name] = True
        except ImportError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
    names = [name for name in BACKENDS if name in available]
    base = tempfile.mkdtemp(prefix="racefree-file-bench-", dir=args.dir)
    results = []
    try:
        neighbour = Neighbour(base)
        for entries in args.entries:
            for size in args.sizes:
                directories = {}
                for name in names:
                    directories[name] = os.path.join(base, f"{name}-{entries}-{size}")
                    started = time.perf_counter()
                    fill(name, directories[name], entries, size)
                    print(f"filled {name} with {entries:,} x {size} B in {time.perf_counter() - started:.1f} s",
                          flush=True)
                cases = [
                    (op, processes, busy)
                    for busy in {"both": (False, True), "quiet": (False,), "busy": (True,)}[args.neighbour]
                    for op in args.ops
                    if not (op in ("get-miss", "incr") and size != 100)
                    if not (busy and op not in BUSY_OPS)
                    for processes in args.processes
                ]
                for busy in sorted({case[2] for case in cases}):
                    with neighbour if busy else contextlib.nullcontext():
                        for op, processes, _ in (case for case in cases if case[2] == busy):
                            row = {"op": op, "size": size, "entries": entries, "processes": processes,
                                   "neighbour": "busy" if busy else "quiet"}
                            median_row(
                                row,
                                names,
                                args.rounds,
                                lambda name: measure(name, directories[name], op, entries, size, processes,
                                                     args.seconds),
                            )
                            results.append(row)
                            print(format_row(row, names), flush=True)
                for directory in directories.values():
                    shutil.rmtree(directory, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    columns = [
        ("operation", lambda row: row["op"]),
        ("value", lambda row: size_label(row["size"])),
        ("entries", lambda row: f"{row['entries']:,}"),
        ("procs", lambda row: str(row["processes"])),
        ("neighbour", lambda row: row["neighbour"]),
    ]
    print(markdown(results, names, columns))
    save(args.json, results, seconds=args.seconds, rounds=args.rounds)


def format_row(row, names):
    cells = "  ".join(f"{name} {row[name]:>9.0f}/s" for name in names)
    return (f"{row['op']:<9} {size_label(row['size']):>6} {row['entries']:>7,} entries {row['processes']}P "
            f"{row['neighbour']:<5}  {cells}")


if __name__ == "__main__":
    main()
