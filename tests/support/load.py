"""Threads for tests: load that keeps calling a cache while a test injects
a fault, and a one-off run of many threads."""

import contextlib
import threading


@contextlib.contextmanager
def load_threads(count, load):
    """Run ``load(index, stop)`` in ``count`` threads for the body of the
    ``with``; ``stop`` (a ``threading.Event``) is set at its end, also when
    the body raises, and the threads are joined."""
    stop = threading.Event()
    threads = [threading.Thread(target=load, args=(index, stop)) for index in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def run_threads(count, target):
    """Run ``target(index)`` in ``count`` threads; return their exceptions."""
    errors = []

    def runner(index):
        try:
            target(index)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
