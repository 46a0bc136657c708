"""A hot key expiring under load: how many times it is recomputed, how
long callers wait and how many round trips it costs, racefree vs Django's
stock backend of the same kind; and what ``get_or_set`` costs on a hit.

    python benchmarks/stampede_bench.py [--workers 64] [--seconds 5] [--rounds 2] [--ttl 2]
                                        [--compute 0.05] [--only memcached,file,database]
                                        [--poll FIRST,LONGEST ...] [--rows meta,lock-entry,stock]
                                        [--hit-seconds 1] [--hit-rounds 3] [--hit-threads 1,8]
                                        [--paired-calls 10000] [--no-hits] [--no-expiry]

Expiry scenario: ``--workers`` threads (each with its own backend object,
as Django's ``caches[...]`` gives) call ``get_or_set`` on one key in a
loop; the key lives ``--ttl`` seconds and takes ``--compute`` seconds to
compute. Each backend (a "row") runs ``--seconds`` in turn, the order
rotating from round to round, ``--rounds`` times; a row's figures are
over all its rounds. memcached has three rows: racefree's meta-protocol
path (``MemcachedCache.get_or_set``), racefree's older lock-entry path
(``StampedeSafe.get_or_set``, which the other racefree backends use) on
the same server, and Django's ``PyMemcacheCache``. Reported per row:

- computations per expiry (ideal: 1). An expiry is a burst of
  computations starting within a quarter of the TTL of its first one
  (memcached's whole-second clock keeps a value at least TTL - 1 s);
- round trips per call (memcached only): the memcached commands the
  server counted in its own ``stats`` during the row (``cmd_get`` +
  ``cmd_set`` + ``cmd_touch`` + deletes + incr/decr + ``cmd_flush``; a
  ``mg`` with any flags is one ``cmd_get``, a ``ms``/``add``/``cas`` one
  ``cmd_set``, a ``md`` one delete), divided by the ``get_or_set`` calls;
  and the extra ones per expiry, (commands - calls) / expiries, which is
  what a miss costs beyond one round trip per call;
- latency "at expiry": the calls that found the key missing, that is
  those that computed, and those that returned a freshly computed value
  although they had started before its computation returned (they waited
  for it), with their p50/p99/max. A call counts from its own start,
  which may be before the expiry: under 64 threads on two cores a call
  waits for the GIL. Overall p50/p99 is over every call, hits included;
- lag at expiry: for those calls, how long after the computation of the
  value they returned had finished they returned it (p50/p99): the
  store, the rest of the waiter's pause between re-reads, its re-read,
  and waiting for the GIL. What the poll schedule changes.

Hit loop (memcached, unless ``--no-hits``): ``get_or_set`` of a key that is
present and never expires (its callable is never called) against a
plain ``cache.get`` of the same key on the same backend objects, at each
of ``--hit-threads``; backends and the two operations take turns, round
by round; the ratio get_or_set/get is the median of each round's ratio of
runs that ran back to back. On a shared machine those ratios move by
10-30% from round to round, so the hit loop also times ``--paired-calls``
pairs of calls in one thread, get_or_set and get by turns: the ratio of
their median latencies is the precise figure. ``--no-expiry`` runs the
hit loop alone (for more ``--hit-rounds``).

``--poll FIRST,LONGEST`` (seconds; repeatable) sets racefree's
``memcached.FIRST_POLL`` / ``LONGEST_POLL`` (the meta path's pauses
between re-reads while another caller computes) for a meta row of its
own, so that schedules can be compared in one interleaved run. memcached
and PostgreSQL are started here (memcached in its default configuration,
``-t 4``).
"""

import argparse
import functools
import math
import os
import statistics
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

import django  # noqa: E402
from _common import save, threaded_rate  # noqa: E402
from django.conf import settings  # noqa: E402
from support.servers import Memcached, Postgres  # noqa: E402

PAIRS = {
    "memcached": ("racefree.backends.memcached.MemcachedCache", "django.core.cache.backends.memcached.PyMemcacheCache"),
    "file": ("racefree.backends.filebased.FileBasedCache", "django.core.cache.backends.filebased.FileBasedCache"),
    "database": ("racefree.backends.db.DatabaseCache", "django.core.cache.backends.db.DatabaseCache"),
}

#: The memcached commands in ``stats``; every request a client makes is
#: counted in exactly one of them (``mn`` in none: it only ends a pipeline).
MEMCACHED_COMMANDS = ("cmd_get", "cmd_set", "cmd_touch", "cmd_flush", "delete_hits", "delete_misses",
                      "incr_hits", "incr_misses", "decr_hits", "decr_misses")

DEFAULT_POLL = (0.001, 0.01)


def lock_entry_memcached():
    """racefree's MemcachedCache with the generic lock-entry get_or_set."""
    from racefree.backends._stampede import StampedeSafe
    from racefree.backends.memcached import MemcachedCache

    class LockEntryMemcachedCache(MemcachedCache):
        get_or_set = StampedeSafe.get_or_set
        aget_or_set = StampedeSafe.aget_or_set

    return LockEntryMemcachedCache


def percentile(values, fraction):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def bursts_of(computations, ttl):
    """The computations ``(call_start, compute_start, compute_end, value)``
    grouped by expiry: a burst is the computations starting within a
    quarter of the TTL of its first one."""
    bursts = []
    for computation in sorted(computations, key=lambda c: c[1]):
        if not bursts or computation[1] - bursts[-1][0][1] > ttl / 4:
            bursts.append([])
        bursts[-1].append(computation)
    return bursts


def commands(stats):
    return sum(int(stats.get(name, 0)) for name in MEMCACHED_COMMANDS)


class Polling:
    """racefree's meta-path poll schedule set for the span of a row."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __enter__(self):
        from racefree.backends import memcached

        self.saved = memcached.FIRST_POLL, memcached.LONGEST_POLL
        if self.schedule:
            memcached.FIRST_POLL, memcached.LONGEST_POLL = self.schedule

    def __exit__(self, *exc_info):
        from racefree.backends import memcached

        memcached.FIRST_POLL, memcached.LONGEST_POLL = self.saved


def hammer(make_cache, workers, seconds, ttl, compute_seconds, snapshot=lambda: None):
    """One run of the load on a fresh key, stored before the clock starts
    (so that every burst of computations answers an expiry, not a cold
    start) by threads that have each made one call already (so that no
    connection is opened under the clock): the computations
    ``(call_start, compute_start, compute_end, value)`` and every call's
    ``(start, latency, value)``; and ``snapshot()`` (the server's stats)
    taken when the clock starts and when every thread is done."""
    computations = []
    starts = [[] for _ in range(workers)]
    latencies = [[] for _ in range(workers)]
    values = [[] for _ in range(workers)]
    key = f"hot-{uuid.uuid4().hex[:8]}"
    serial = iter(range(1, 1 << 30))
    ready, start = threading.Barrier(workers + 1), threading.Barrier(workers + 1)
    stop = threading.Event()

    def run(index):
        from django.db import connections

        clock = time.perf_counter
        cache = make_cache()
        my_starts, mine, my_values = starts[index], latencies[index], values[index]
        began = 0.0

        def compute():
            computing = clock()
            time.sleep(compute_seconds)  # the query the cache saves
            value = next(serial)
            computations.append((began, computing, clock(), value))
            return value

        cache.get(key)
        ready.wait()
        start.wait()
        while not stop.is_set():
            began = clock()
            my_values.append(cache.get_or_set(key, compute, ttl))
            my_starts.append(began)
            mine.append(clock() - began)
        connections.close_all()

    make_cache().set(key, 0, ttl)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    ready.wait()
    before = snapshot()
    start.wait()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    after = snapshot()
    calls = [call for per_worker in zip(starts, latencies, values) for call in zip(*per_worker)]
    return {"computations": computations, "calls": calls, "stats": (before, after)}


def summarize(runs, ttl, commands_counted=None):
    """A row's figures over its rounds' runs."""
    computations, expiries, at_expiry, lags, everyone, served = 0, 0, [], [], [], 0
    for run in runs:
        # When each computed value was ready; the call that computed it.
        ready = {value: ended for _began, _computing, ended, value in run["computations"]}
        computed = {began for began, *_ in run["computations"]}
        for began, latency, value in run["calls"]:
            everyone.append(latency)
            if began in computed or began < ready.get(value, -math.inf):
                at_expiry.append(latency)
                lags.append(began + latency - ready[value])
        computations += len(run["computations"])
        expiries += len(bursts_of(run["computations"], ttl))
        served += len({value for _, _, value in run["calls"]})
    calls = len(everyone)
    row = {
        "computations": computations,
        "expiries": expiries,
        "values_served": served,
        "per_expiry": computations / max(1, expiries),
        "calls": calls,
        "at_expiry_calls": len(at_expiry),
        "p50_ms": percentile(everyone, 0.5) * 1000,
        "p99_ms": percentile(everyone, 0.99) * 1000,
        "max_ms": max(everyone) * 1000,
        "mean_ms": statistics.fmean(everyone) * 1000,
        "expiry_p50_ms": percentile(at_expiry, 0.5) * 1000,
        "expiry_p99_ms": percentile(at_expiry, 0.99) * 1000,
        "expiry_max_ms": max(at_expiry, default=float("nan")) * 1000,
        "lag_p50_ms": percentile(lags, 0.5) * 1000,
        "lag_p99_ms": percentile(lags, 0.99) * 1000,
    }
    if commands_counted is not None:
        row["commands"] = commands_counted
        row["round_trips_per_call"] = commands_counted / max(1, calls)
        row["extra_round_trips_per_expiry"] = (commands_counted - calls) / max(1, expiries)
    return row


def hit_run(make_cache, threads, seconds, key, op):
    """Calls/s of ``op`` ("get_or_set" or "get") on ``key`` over ``threads``
    threads, each with its own backend object; and the calls made (the
    timed ones plus one warm-up call per thread)."""

    def never():
        raise AssertionError("the hot key is present: get_or_set must not compute")

    def prepare(index):
        cache = make_cache()
        assert cache.get(key) is not None
        if op == "get_or_set":
            return functools.partial(cache.get_or_set, key, never, None)
        return functools.partial(cache.get, key)

    return threaded_rate(threads, seconds, prepare, with_calls=True)


def paired_latency(rows, args, location):
    """One thread calling get_or_set and get of a present key by turns
    (which goes first alternating from pair to pair), each call timed: the
    median latency of each and their ratio. Machine noise, which on a
    shared machine moves throughput by 10-30% from one second to the next,
    hits both calls of a pair alike."""
    results = []
    value = "v" * 100
    clock = time.perf_counter_ns

    def never():
        raise AssertionError("the hot key is present: get_or_set must not compute")

    for round_index in range(args.hit_rounds):
        for label, side, backend, _schedule in rotated(rows, round_index):
            cache = backend(location, {})
            key = f"paired-{uuid.uuid4().hex[:8]}"
            cache.set(key, value, None)
            get_or_set, get = cache.get_or_set, cache.get
            ours, plain = [], []
            for i in range(args.paired_calls):
                if i % 2:
                    began = clock()
                    get_or_set(key, never, None)
                    middle = clock()
                    get(key)
                    ended = clock()
                    ours.append(middle - began)
                    plain.append(ended - middle)
                else:
                    began = clock()
                    get(key)
                    middle = clock()
                    get_or_set(key, never, None)
                    ended = clock()
                    plain.append(middle - began)
                    ours.append(ended - middle)
            results.append((label, side, backend, statistics.median(ours) / 1000, statistics.median(plain) / 1000))
    rows_out = []
    for label, side, backend, _schedule in rows:
        mine = [r for r in results if r[0] == label]
        ours = statistics.median(r[3] for r in mine)
        plain = statistics.median(r[4] for r in mine)
        row = {"label": label, "side": side, "backend": backend.__name__, "get_or_set_us": ours, "get_us": plain,
               "ratio": statistics.median(r[4] / r[3] for r in mine), "ratios": [r[4] / r[3] for r in mine]}
        rows_out.append(row)
        print(f"paired 1 thread {label:<24} get_or_set {ours:6.2f} us, get {plain:6.2f} us, "
              f"get_or_set/get throughput {row['ratio']:.3f} (rounds: {', '.join(f'{r:.3f}' for r in row['ratios'])})",
              flush=True)
    return rows_out


def rotated(items, by):
    by %= len(items)
    return items[by:] + items[:by]


def poll_schedule(text):
    try:
        first, longest = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--poll takes FIRST,LONGEST in seconds, not {text!r}") from None
    if not 0 < first <= longest:
        raise argparse.ArgumentTypeError("--poll needs 0 < FIRST <= LONGEST")
    return first, longest


def poll_label(schedule):
    return f"poll {schedule[0] * 1000:g}-{schedule[1] * 1000:g} ms"


def memcached_rows(args):
    """The memcached rows: (label, side, backend class path or class, poll schedule)."""
    from django.utils.module_loading import import_string

    wanted = args.rows.split(",")
    unknown = set(wanted) - {"meta", "lock-entry", "stock"}
    if unknown:
        raise SystemExit(f"--rows: unknown {', '.join(sorted(unknown))} (meta, lock-entry, stock)")
    schedules = args.poll or [DEFAULT_POLL]
    rows = []
    if "meta" in wanted:
        for schedule in schedules:
            label = "racefree meta" if not args.poll else f"racefree meta, {poll_label(schedule)}"
            rows.append((label, "racefree", import_string(PAIRS["memcached"][0]), schedule))
    if "lock-entry" in wanted:
        rows.append(("racefree lock-entry", "racefree-lock-entry", lock_entry_memcached(), None))
    if "stock" in wanted:
        rows.append(("stock PyMemcacheCache", "stock", import_string(PAIRS["memcached"][1]), None))
    return rows


def expiry_scenario(kind, rows, args, location_of, memcached):
    """Every row of one store, taking turns for ``--rounds`` rounds."""
    runs = {label: [] for label, *_ in rows}
    counted = {label: 0 for label, *_ in rows}
    for round_index in range(args.rounds):
        for label, side, backend, schedule in rotated(rows, round_index):
            location, params = location_of(side)
            with Polling(schedule):
                run = hammer(lambda: backend(location, dict(params)), args.workers, args.seconds, args.ttl,
                             args.compute, memcached.stats if memcached else lambda: None)
            if memcached:
                before, after = run.pop("stats")
                counted[label] += commands(after) - commands(before)
            runs[label].append(run)
            print(f"  {kind} round {round_index + 1}: {label}: {len(run['computations'])} computations, "
                  f"{len(run['calls'])} calls", flush=True)
    results = []
    for label, side, backend, schedule in rows:
        row = summarize(runs[label], args.ttl, counted[label] if memcached else None)
        row.update(kind=kind, side=side, label=label, backend=backend.__name__,
                   poll=list(schedule) if schedule else None)
        results.append(row)
        trips = (f"; {row['round_trips_per_call']:.3f} round trips/call, "
                 f"{row['extra_round_trips_per_expiry']:.0f} extra/expiry" if memcached else "")
        print(f"{kind:<9} {label:<34} {row['computations']:>5} computations / {row['expiries']:>3} expiries"
              f" = {row['per_expiry']:5.1f} per expiry{trips}; at expiry ({row['at_expiry_calls']} calls)"
              f" p50 {row['expiry_p50_ms']:.1f} / p99 {row['expiry_p99_ms']:.1f} / max {row['expiry_max_ms']:.1f} ms,"
              f" lag p50 {row['lag_p50_ms']:.1f} / p99 {row['lag_p99_ms']:.1f} ms;"
              f" overall p50 {row['p50_ms']:.2f} / p99 {row['p99_ms']:.1f} ms, {row['calls']} calls", flush=True)
    return results


def hit_loop(rows, args, location, memcached):
    """get_or_set vs get on a present key, per row and thread count."""
    results = []
    value = "v" * 100
    for threads in (int(t) for t in args.hit_threads.split(",")):
        # A key per backend: the stock and racefree encodings of a value differ.
        keys = {label: f"hit-{uuid.uuid4().hex[:8]}" for label, *_ in rows}
        rates = {(label, op): [] for label, *_ in rows for op in ("get_or_set", "get")}
        counted = {label: [0, 0] for label, *_ in rows}
        for label, _side, backend, _schedule in rows:
            backend(location, {}).set(keys[label], value, None)
        for round_index in range(args.hit_rounds):
            for label, _side, backend, _schedule in rotated(rows, round_index):
                ops = ("get_or_set", "get") if round_index % 2 == 0 else ("get", "get_or_set")
                for op in ops:
                    before = memcached.stats()
                    rate, calls = hit_run(lambda: backend(location, {}), threads, args.hit_seconds, keys[label], op)
                    if op == "get_or_set":
                        counted[label][0] += commands(memcached.stats()) - commands(before)
                        counted[label][1] += calls
                    rates[(label, op)].append(rate)
        for label, side, backend, _schedule in rows:
            ours, plain = rates[(label, "get_or_set")], rates[(label, "get")]
            row = {
                "label": label, "side": side, "backend": backend.__name__, "threads": threads,
                "get_or_set_ops": statistics.median(ours), "get_ops": statistics.median(plain),
                "ratio": statistics.median(a / b for a, b in zip(ours, plain)),
                "ratios": [a / b for a, b in zip(ours, plain)],
                "round_trips_per_hit": counted[label][0] / max(1, counted[label][1]),
            }
            results.append(row)
            print(f"hit {threads} thread(s) {label:<24} get_or_set {row['get_or_set_ops']:8,.0f}/s,"
                  f" get {row['get_ops']:8,.0f}/s, ratio {row['ratio']:.3f}"
                  f" (rounds: {', '.join(f'{r:.3f}' for r in row['ratios'])}),"
                  f" {row['round_trips_per_hit']:.3f} round trips/get_or_set", flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0, help="per row and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--compute", type=float, default=0.05)
    parser.add_argument("--only", default="memcached,file,database")
    parser.add_argument("--rows", default="meta,lock-entry,stock", help="memcached rows")
    parser.add_argument("--poll", type=poll_schedule, action="append",
                        help="FIRST,LONGEST seconds: a memcached meta row with this poll schedule (repeatable)")
    parser.add_argument("--hit-seconds", type=float, default=1.0)
    parser.add_argument("--hit-rounds", type=int, default=3)
    parser.add_argument("--hit-threads", default="1,8")
    parser.add_argument("--paired-calls", type=int, default=10000, help="pairs per backend and round")
    parser.add_argument("--no-hits", action="store_true")
    parser.add_argument("--no-expiry", action="store_true", help="memcached: the hit loop only")
    parser.add_argument("--dir", default=None, help="where the file caches live (default: a temp dir)")
    parser.add_argument("--json")
    args = parser.parse_args()
    kinds = args.only.split(",")

    import tempfile

    memcached = Memcached() if "memcached" in kinds else None
    postgres = Postgres(as_shipped=True) if "database" in kinds else None
    servers = [s for s in (memcached, postgres) if s]
    results, hits, paired = [], [], []
    try:
        databases = {"default": postgres.settings("postgres")} if postgres else {}
        settings.configure(DATABASES=databases, USE_TZ=True)
        django.setup()
        from django.core.management import call_command
        from django.utils.module_loading import import_string

        directory = tempfile.mkdtemp(prefix="racefree-stampede-", dir=args.dir)
        for kind in kinds:
            if kind == "memcached":
                rows = memcached_rows(args)
                if not args.no_expiry:
                    results += expiry_scenario(kind, rows, args, lambda side: (memcached.location, {}), memcached)
                if not args.no_hits:
                    hit_rows = [row for row in rows if row[3] in (None, (args.poll or [DEFAULT_POLL])[0])]
                    hits += hit_loop(hit_rows, args, memcached.location, memcached)
                    paired += paired_latency(hit_rows, args, memcached.location)
                continue
            rows = [(side, side, import_string(path), None) for side, path in zip(("racefree", "stock"), PAIRS[kind])]
            if kind == "file":
                def location_of(side):
                    return os.path.join(directory, side), {}
            else:
                for side, *_ in rows:
                    call_command("createcachetable", f"stampede_{side}", verbosity=0)

                def location_of(side):
                    return f"stampede_{side}", {}
            results += expiry_scenario(kind, rows, args, location_of, None)
    finally:
        if postgres:
            from racefree.backends.db import close_pools

            close_pools()
        for server in servers:
            server.close()
    if results:
        print()
        print(f"{args.workers} workers, key TTL {args.ttl} s, computation {args.compute * 1000:.0f} ms, "
              f"{args.rounds} rounds of {args.seconds:g} s per backend")
        print()
        print("| store | backend | computations per expiry | round trips per call | extra round trips per expiry "
              "| at-expiry calls | at expiry p50 / p99 / max | lag at expiry p50 / p99 | overall p50 / p99 |")
        print("|---|---|---|---|---|---|---|---|---|")
    for row in results:
        trips = (f"{row['round_trips_per_call']:.3f} | {row['extra_round_trips_per_expiry']:.0f}"
                 if "commands" in row else "– | –")
        print(f"| {row['kind']} | {row['label']} ({row['backend']}) | {row['per_expiry']:.1f} "
              f"({row['computations']}/{row['expiries']}) | {trips} | {row['at_expiry_calls']} | "
              f"{row['expiry_p50_ms']:.1f} / {row['expiry_p99_ms']:.1f} / {row['expiry_max_ms']:.1f} ms | "
              f"{row['lag_p50_ms']:.1f} / {row['lag_p99_ms']:.1f} ms | {row['p50_ms']:.2f} / {row['p99_ms']:.1f} ms |")
    if hits:
        print()
        print(f"Hit loop: a present key, {args.hit_rounds} rounds of {args.hit_seconds:g} s per backend and operation")
        print()
        print("| backend | threads | get_or_set ops/s | get ops/s | get_or_set / get | round trips per get_or_set |")
        print("|---|---|---|---|---|---|")
        for row in hits:
            print(f"| {row['label']} ({row['backend']}) | {row['threads']} | {row['get_or_set_ops']:,.0f} | "
                  f"{row['get_ops']:,.0f} | {row['ratio']:.2f}x | {row['round_trips_per_hit']:.2f} |")
    if paired:
        print()
        print(f"Paired calls: one thread, get_or_set and get by turns, {args.paired_calls} pairs per backend "
              f"and round, {args.hit_rounds} rounds; medians")
        print()
        print("| backend | get_or_set latency | get latency | get_or_set / get (throughput) |")
        print("|---|---|---|---|")
        for row in paired:
            print(f"| {row['label']} ({row['backend']}) | {row['get_or_set_us']:.2f} µs | {row['get_us']:.2f} µs | "
                  f"{row['ratio']:.3f}x |")
    save(args.json, results, hits=hits, paired=paired, workers=args.workers, seconds=args.seconds, rounds=args.rounds,
         ttl=args.ttl, compute=args.compute, poll=args.poll, hit_seconds=args.hit_seconds,
         hit_rounds=args.hit_rounds)


if __name__ == "__main__":
    main()
