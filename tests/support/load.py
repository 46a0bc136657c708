"""Threads and processes for tests: load that keeps calling a cache while
a test injects a fault, and one-off runs of many threads or processes."""

import contextlib
import multiprocessing
import threading
import time


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


def timed_threads(count, call):
    """Run ``call()`` in ``count`` threads at once; return their exceptions
    and the seconds the slowest call took."""
    took = []

    def timed(_index):
        started = time.monotonic()
        try:
            call()
        finally:
            took.append(time.monotonic() - started)

    errors = run_threads(count, timed)
    return errors, max(took)


def run_processes(target, args_list, timeout=120):
    """Run ``target(*args)`` in a spawned process per args tuple, wait up to
    ``timeout`` seconds for each (then kill it); return the exit codes."""
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=target, args=args) for args in args_list]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
    return [process.exitcode for process in processes]


def wait_until(condition, seconds=15, what="the condition"):
    """Poll ``condition`` until it holds; fail the test if it has not after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not hold within {seconds} s"
        time.sleep(0.02)
