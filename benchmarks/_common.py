"""What the benchmarks share: a threaded rate measurement, medians over
alternating rounds, and the markdown table with ratios against the stock
backends."""

import json
import statistics
import threading
import time


def size_label(size):
    return f"{size // 1024} KB" if size >= 1024 else f"{size} B"


def median_row(row, names, rounds, run, pick=statistics.median):
    """Fill ``row[name]`` with the median (or ``pick``) of ``rounds`` calls
    of ``run(name)``; backends take turns within each round, so that
    machine noise hits them alike. Nothing is done between runs: no backend
    is given a quieter machine than it leaves the next one."""
    runs = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            runs[name].append(run(name))
    for name in names:
        row[name] = pick(runs[name])
    # The ratio of each round's runs, which ran back to back, then their
    # median: a machine that slows down for a while slows both sides of a
    # round, so this drifts less than the ratio of the medians.
    if "racefree" in runs:
        row["ratios"] = {
            name: statistics.median(ours / theirs for ours, theirs in zip(runs["racefree"], runs[name]) if theirs)
            for name in names
            if name != "racefree"
        }
    return row


def markdown(results, names, columns):
    """A table: ``columns`` as (title, row -> text), then ops/s per backend,
    then racefree's ratio to each other backend (the median of the rounds'
    ratios where ``median_row`` recorded them)."""
    others = [name for name in names if name != "racefree"]
    header = [title for title, _ in columns] + [f"{n} ops/s" for n in names] + [f"vs {n}" for n in others]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        cells = [text(row) for _, text in columns]
        cells += [f"{row[name]:,.0f}" for name in names]
        ratios = row.get("ratios") or {name: row["racefree"] / row[name] for name in others}
        cells += [f"{ratios[name]:.2f}x" for name in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(path, results, **settings):
    if path:
        with open(path, "w") as out:
            json.dump({"results": results, **settings}, out, indent=2)


def threaded_rate(threads, seconds, prepare, finish=None, with_calls=False):
    """Calls per second summed over ``threads`` threads, each calling the
    callable ``prepare(index)`` returns (once before the clock starts)
    until ``seconds`` are up; ``finish()`` runs in each thread at the end.
    ``with_calls``: also the number of calls made, warm-up calls included."""
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()

    def run(index):
        call = prepare(index)
        call()
        barrier.wait()
        n = 0
        while not stop.is_set():
            call()
            n += 1
        counts[index] = n
        if finish:
            finish()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    rate = sum(counts) / (time.perf_counter() - started)
    return (rate, sum(counts) + threads) if with_calls else rate


def cycling_get(cache, keys, start=0):
    """A get of a different key each call, in a scattered order."""
    state = [start]

    def get():
        state[0] = (state[0] * 7919 + 1) % len(keys)
        return cache.get(keys[state[0]])

    return get


def cycling_set(cache, value, worker):
    """A set of ``value`` under one of 100 keys of ``worker``'s own, in turn
    (a write-heavy load that does not grow the store)."""
    state = [0]

    def set_value():
        state[0] = (state[0] + 1) % 100
        cache.set(f"fresh:{worker}:{state[0]}", value)

    return set_value
