"""Load threads that keep calling a cache while a test injects a fault."""

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
