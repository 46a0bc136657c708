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


def shared_instance_race(cache, threads, seconds, report=None):
    """Seed 1 on one shared backend. Returns {calls, errors, mismatches,
    example}; ``report`` is called with the same dict every 0.2 s, so a
    run that crashes the interpreter still leaves its last counts."""
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

    workers = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):
        if report:
            report(totals())
        time.sleep(0.2)
    return totals()


def run_pair(path, location, threads, seconds):
    """Run one backend's scenario in a child process: a stock client can
    corrupt the heap and kill the interpreter, which is a result too."""
    command = [sys.executable, __file__, "--child", path, location, str(threads), str(seconds)]
    grace = 20
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=seconds + grace)
        stdout, returncode = child.stdout, child.returncode
    except subprocess.TimeoutExpired as timeout:
        stdout, returncode = timeout.stdout or "", None
        if isinstance(stdout, bytes):
            stdout = stdout.decode()
    reports = [line for line in stdout.splitlines() if line.startswith("{")]
    last = json.loads(reports[-1]) if reports else None
    if returncode is None:
        return last, f"threads hung: still blocked {grace} s after the run ended"
    if returncode < 0:
        return last, f"interpreter crashed ({signal.Signals(-returncode).name})"
    if returncode != 0:
        return last, "child failed: " + (child.stderr.strip().splitlines() or ["?"])[-1]
    return last, ""


def child_main(path, location, threads, seconds):
    cache = import_string(path)(location, {})

    def report(totals):
        print(json.dumps(totals), flush=True)

    report(shared_instance_race(cache, int(threads), float(seconds), report))
    sys.stdout.flush()
    # Threads stuck in a stock client would keep the interpreter alive.
    os._exit(0)


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
                result, failure = run_pair(path, server.location, args.threads, args.seconds)
                bug = "1: one client shared by threads"
                result = result or {"calls": None, "errors": None, "mismatches": None, "example": ""}
                seen = "; ".join(part for part in (result["example"], failure) if part)
                rows.append((bug, f"{kind} {name}", result["calls"], result["errors"], result["mismatches"], seen))
                import_string(path)(server.location, {}).clear()
        finally:
            server.stop()
    print()
    print("| bug | backend | calls | errors | mismatches | first failure seen |")
    print("|---|---|---|---|---|---|")
    for bug, backend, calls, errors, mismatches, example in rows:
        counts = [f"{n:,}" if n is not None else "-" for n in (calls, errors, mismatches)]
        print(f"| {bug} | {backend} | {' | '.join(counts)} | {example[:140]} |")
    failed_ours = [row for row in rows if row[1].startswith("racefree") and (row[2] is None or row[3] or row[4] or row[5])]
    if failed_ours:
        print("\nracefree rows must show zeros: FAILED")
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child_main(*sys.argv[2:])
    else:
        main()
