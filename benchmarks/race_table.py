"""The race table: each original bug, run on the stock backend and on
racefree's, under real threads on real servers.

    python benchmarks/race_table.py [--seconds 5] [--threads 16]

Seed 1 (pylibmc thread-unsafe): Django's cache middleware keeps ONE backend
instance for the whole process. Threads share it, each storing keys whose
value is the key itself and checking what comes back. A value that is not
the key (another request's value, a cached response) is a mismatch.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.configure()
django.setup()

from django.http import JsonResponse  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402
from support.servers import Memcached, ServerMissing  # noqa: E402

MEMCACHED_PAIRS = [
    ("stock", "PyLibMCCache", "django.core.cache.backends.memcached.PyLibMCCache"),
    ("stock", "PyMemcacheCache", "django.core.cache.backends.memcached.PyMemcacheCache"),
    ("racefree", "MemcachedCache", "racefree.backends.memcached.MemcachedCache"),
]


def shared_instance_race(cache, threads, seconds):
    """Seed 1 on one shared backend: returns (calls, errors, mismatches, example)."""
    cache.set("views.cache.response", JsonResponse({"page": "cached"}))
    deadline = time.monotonic() + seconds
    totals = {"calls": 0, "errors": 0, "mismatches": 0}
    example = []
    lock = threading.Lock()

    def user(index):
        calls = errors = mismatches = 0
        n = 0
        while time.monotonic() < deadline:
            key = f"test-{index}-{n % 20}"
            n += 1
            try:
                value = cache.get(key)
                calls += 1
                if value is None:
                    cache.set(key, key)
                    calls += 1
                elif value != key:
                    mismatches += 1
                    if not example:
                        example.append(f"key {key!r} returned {value!r}")
                cache.get("views.cache.response")
                calls += 1
            except Exception as exc:  # noqa: BLE001 - counted, as a 500 would be
                errors += 1
                if not example:
                    example.append(f"{type(exc).__name__}: {exc}")
        with lock:
            totals["calls"] += calls
            totals["errors"] += errors
            totals["mismatches"] += mismatches

    workers = [threading.Thread(target=user, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return totals["calls"], totals["errors"], totals["mismatches"], example[0] if example else ""


def run_pair(path, location, threads, seconds):
    """Run one backend's scenario in a child process: a stock client can
    corrupt the heap and kill the interpreter, which is a result too."""
    command = [sys.executable, __file__, "--child", path, location, str(threads), str(seconds)]
    grace = 20
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=seconds + grace)
    except subprocess.TimeoutExpired:
        return None, f"threads hung: still blocked {grace} s after the run ended"
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        tail = child.stderr.strip().splitlines()[-1:] or [""]
        return None, f"interpreter crashed ({name}) {tail[0]}".strip()
    if child.returncode != 0:
        return None, (child.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(child.stdout.strip().splitlines()[-1]), ""


def child_main(path, location, threads, seconds):
    cache = import_string(path)(location, {})
    calls, errors, mismatches, example = shared_instance_race(cache, int(threads), float(seconds))
    print(json.dumps({"calls": calls, "errors": errors, "mismatches": mismatches, "example": example}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()

    rows = []
    try:
        server = Memcached()
    except ServerMissing as exc:
        print(f"memcached rows skipped: {exc}")
        server = None
    if server is not None:
        try:
            for kind, name, path in MEMCACHED_PAIRS:
                try:
                    import_string(path)(server.location, {}).get("probe")
                except ImportError as exc:
                    print(f"{name}: not installed ({exc}); row skipped")
                    continue
                print(f"running seed 1 on {name} ({args.threads} threads, {args.seconds:.0f} s)...", flush=True)
                result, crash = run_pair(path, server.location, args.threads, args.seconds)
                bug = "1: one client shared by threads"
                if result is None:
                    rows.append((bug, f"{kind} {name}", None, None, None, crash))
                else:
                    rows.append((bug, f"{kind} {name}", result["calls"], result["errors"], result["mismatches"],
                                 result["example"]))
                import_string(path)(server.location, {}).clear()
        finally:
            server.stop()
    print()
    print("| bug | backend | calls | errors | mismatches | first failure seen |")
    print("|---|---|---|---|---|---|")
    for bug, backend, calls, errors, mismatches, example in rows:
        counts = [f"{n:,}" if n is not None else "-" for n in (calls, errors, mismatches)]
        print(f"| {bug} | {backend} | {' | '.join(counts)} | {example[:90]} |")
    failed_ours = [row for row in rows if row[1].startswith("racefree") and (row[2] is None or row[3] or row[4])]
    if failed_ours:
        print("\nracefree rows must show zeros: FAILED")
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child_main(*sys.argv[2:])
    else:
        main()
