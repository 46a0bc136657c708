"""Threads of one process calling ``get_or_set`` on one key, run by
tests/test_stampede.py as one of several processes; prints a JSON report.

    python get_or_set_child.py SPEC_JSON

SPEC: ``backend`` (import path), ``location``, ``params``, ``databases``
(Django's DATABASES, for the database cache), ``key``, ``threads``,
``start_at`` (a time.time() every process waits for), ``sleep`` (how long
the computation takes), ``calls`` (a file each computation appends one line
to, with O_APPEND, so every process counts in one place) and ``mode``:
``compute`` returns ``value-<pid>``; ``hang`` records its start and never
returns (the test kills the process); ``loop`` calls ``get_or_set`` (with
``ttl``) until ``duration`` seconds after ``start_at``, pausing ``pace``
seconds between calls, and reports each call as ``[start, seconds,
computed, value]`` (its computation returns ``value-<pid>-<n>``).
"""

import json
import os
import sys
import threading
import time


def record_call(path, what):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{what} {os.getpid()} {threading.get_ident()}\n".encode())
    finally:
        os.close(fd)


def main(spec):
    import django
    from django.conf import settings

    settings.configure(DATABASES=spec.get("databases") or {}, USE_TZ=False, TIME_ZONE=spec.get("time_zone"))
    django.setup()
    from django.utils.module_loading import import_string

    backend_class = import_string(spec["backend"])

    def compute():
        record_call(spec["calls"], "start")
        if spec["mode"] == "hang":
            time.sleep(3600)
        time.sleep(spec["sleep"])
        record_call(spec["calls"], "done")
        return f"value-{os.getpid()}"

    results = []
    lock = threading.Lock()
    if spec["mode"] == "loop":
        run_loop(spec, backend_class, results, lock)
        json.dump(results, sys.stdout)
        return

    def call():
        # Each thread its own backend object, as Django's caches[...] gives.
        cache = backend_class(spec["location"], spec["params"])
        time.sleep(max(0.0, spec["start_at"] - time.time()))
        started = time.monotonic()
        try:
            outcome = {"value": cache.get_or_set(spec["key"], compute, 60)}
        except Exception as error:  # reported, and the test asserts there are none
            outcome = {"error": f"{type(error).__name__}: {error}"}
        outcome["seconds"] = time.monotonic() - started
        with lock:
            results.append(outcome)

    in_threads(spec["threads"], call)
    json.dump(results, sys.stdout)


def run_loop(spec, backend_class, results, lock):
    """The ``loop`` mode: every thread calls get_or_set on the hot key until
    the end of the run."""
    serial = iter(range(1, 1_000_000))
    mine = threading.local()

    def compute():
        mine.computed = True
        record_call(spec["calls"], f"start {time.time():.6f}")
        time.sleep(spec["sleep"])
        return f"value-{os.getpid()}-{next(serial)}"

    def call():
        cache = backend_class(spec["location"], spec["params"])
        calls = []
        time.sleep(max(0.0, spec["start_at"] - time.time()))
        end = spec["start_at"] + spec["duration"]
        while time.time() < end:
            mine.computed = False
            began, started = time.time(), time.monotonic()
            try:
                value = cache.get_or_set(spec["key"], compute, spec["ttl"])
            except Exception as error:  # reported, and the test asserts there are none
                value = f"error {type(error).__name__}: {error}"
            calls.append([began, time.monotonic() - started, mine.computed, value])
            time.sleep(spec["pace"])
        with lock:
            results.extend(calls)

    in_threads(spec["threads"], call)


def in_threads(count, call):
    """Run ``call`` in ``count`` threads and wait for them all."""
    threads = [threading.Thread(target=call) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
