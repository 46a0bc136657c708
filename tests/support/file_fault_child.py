"""A file-store load under one injected fault, run in its own process by
tests/test_file_faults.py; prints a JSON report.

    python file_fault_child.py MODE DIRECTORY SECONDS

MODE is ``readonly`` (every directory of the cache made read-only for the
middle third of the run), ``deleted`` (the cache directory removed again
and again in the middle third) or ``full`` (a 64 KiB file-size limit for
the whole run, so every large value hits "disk full"). Threads set keys
(mostly the same 50 per thread, some new) to values naming the key and
read them back; one counter is incremented.
Reported: operations, errors by type, garbage reads (a value that is not
one this key was given), the counter against successful increments, and
whether everything works again after the fault.
"""

import collections
import json
import os
import resource
import shutil
import signal
import stat
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

THREADS = 4
LIMIT = 64 * 1024
DELETIONS = 5


def set_tree_writable(directory, writable):
    for root, dirs, _files in os.walk(directory):
        for name in [root, *(os.path.join(root, d) for d in dirs)]:
            mode = os.stat(name).st_mode
            os.chmod(name, (mode | stat.S_IWUSR) if writable else (mode & ~0o222))


def main(mode, directory, seconds):
    settings.configure()
    django.setup()
    from racefree.backends.filebased import FileBasedCache

    if mode == "full":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    cache = FileBasedCache(directory, {"OPTIONS": {"MAX_ENTRIES": 1_000_000, "LOCK_TIMEOUT": 2.0}})
    cache.set("counter", 0, None)
    # The fault thread ends the load, so a busy machine stretches the run
    # instead of shrinking the fault.
    stop = threading.Event()
    progress = [0] * THREADS  # operations per load thread, for the fault's window
    lock = threading.Lock()
    report = {"ops": 0, "errors": collections.Counter(), "examples": {}, "garbage": [], "increments": 0}

    def load(index):
        ops, increments, n = 0, 0, 0
        errors = collections.Counter()
        while not stop.is_set():
            progress[index] = ops
            # Mostly keys whose files exist (rewritten in place), every 7th
            # a new key (a new file).
            key = f"k{index}-{n % 50}" if n % 7 else f"new{index}-{n}"
            # Every 10th value is bigger than the file-size limit.
            value = f"{key}:{n}" + ("x" * 100_000 if n % 10 == 0 else "")
            n += 1
            for operation in ("set", "get", "incr"):
                ops += 1
                try:
                    if operation == "set":
                        cache.set(key, value)
                    elif operation == "get":
                        got = cache.get(key)
                        if got is not None and not (isinstance(got, str) and got.startswith(key + ":")):
                            with lock:
                                report["garbage"].append(repr(got)[:100])
                    else:
                        cache.incr("counter")
                        increments += 1
                except Exception as error:  # noqa: BLE001 - counted by type
                    kind = f"{operation}: {type(error).__name__}"
                    errors[kind] += 1
                    report["examples"].setdefault(kind, str(error)[:300])
        with lock:
            report["ops"] += ops
            report["increments"] += increments
            report["errors"].update(errors)

    def fault():
        third = seconds / 3
        time.sleep(third)
        before = sum(progress)
        if mode == "readonly":
            set_tree_writable(directory, False)
            time.sleep(third)
            set_tree_writable(directory, True)
        elif mode == "deleted":
            # At least DELETIONS removals however slowly this thread is
            # scheduled, and for at least the middle third.
            end = time.monotonic() + third
            report["deletions"] = 0
            while time.monotonic() < end or report["deletions"] < DELETIONS:
                shutil.rmtree(directory, ignore_errors=True)
                report["deletions"] += 1
                time.sleep(0.02)
        else:
            time.sleep(third)
        report["ops_during_fault"] = sum(progress) - before
        time.sleep(third)
        stop.set()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(THREADS)] + [threading.Thread(target=fault)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if mode == "full":
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    report["counter"] = cache.get("counter")
    # Recovery: every operation works again, large values included.
    cache.set("after", "y" * 100_000)
    cache.set("n-after", 1)
    report["recovered"] = cache.get("after") == "y" * 100_000 and cache.incr("n-after") == 2
    report["temp_files_left"] = [
        name for _root, _dirs, files in os.walk(directory) for name in files if name.startswith(".tmp")
    ]
    report["errors"] = dict(report["errors"])
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
