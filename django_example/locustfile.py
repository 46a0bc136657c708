"""Load for the demo project: every original bug shows as a failure.

    locust -f django_example/locustfile.py --host http://127.0.0.1:8000
    locust -f django_example/locustfile.py --host http://127.0.0.1:8000 --headless -u 24 -r 24 -t 10s

Users read keys cached under themselves (a different value back is seed
1's mismatch), increment one shared counter (checked against the number of
successful increments when the run stops: seeds 2 and 5), race to ``add``
the same fresh keys (exactly one winner each) and, with
``RACEFREE_DEMO_RESETS=1``, reset the forwarding backend in the middle of
all this (seed 3). With ``RACEFREE_DEMO_ASYNC=1`` (the ASGI run under
uvicorn) users only increment and ``add``, through the async views that
``await aincr``/``aadd`` (``/async/...``). Any of these is reported as a
failure naming its bug, so the process exits non-zero.
``RACEFREE_DEMO_REPORT`` names a JSON file for the totals
(``django_example/run_demo.py`` reads it).
"""

import collections
import json
import os
import random
import time
import urllib.request

from locust import FastHttpUser, constant, events, task

RESETS = os.environ.get("RACEFREE_DEMO_RESETS") == "1"
ASYNC = os.environ.get("RACEFREE_DEMO_ASYNC") == "1"
PREFIX = "/async" if ASYNC else ""
REPORT = os.environ.get("RACEFREE_DEMO_REPORT")

tally = {"increments": 0, "mismatches": 0, "wins": collections.Counter(), "started": 0.0}


def _call(host, path, method="GET"):
    request = urllib.request.Request(host.rstrip("/") + path, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _failed(response, what):
    """A failed request, with the bug it shows in the message."""
    if response.status_code == 0:
        response.failure(f"{what}: connection failed ({response.error})")
    else:
        try:
            detail = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            detail = (response.text or "")[:200]
        response.failure(f"{what}: HTTP {response.status_code} {detail}")


class CacheUser(FastHttpUser):
    wait_time = constant(0)

    @task(0 if ASYNC else 4)
    def echo(self):
        key = f"test-{random.randint(1, 10)}"
        # Pages repeat (then the cache middleware answers) or are new.
        path = f"/echo/{key}/?page={random.randint(1, 50)}"
        with self.client.get(path, name="/echo/[key]/", catch_response=True) as response:
            if response.status_code == 409:
                tally["mismatches"] += 1
                response.failure(f"key mismatch (seed 1): {response.json()['error']}")
            elif response.status_code != 200:
                _failed(response, "echo failed")
            elif response.json().get("key") != key:
                tally["mismatches"] += 1
                response.failure(f"key mismatch (seed 1): asked {key}, got {response.text[:200]}")

    @task(3)
    def incr(self):
        with self.client.post(f"{PREFIX}/incr/", catch_response=True) as response:
            if response.status_code == 200:
                tally["increments"] += 1
            else:
                _failed(response, "incr failed")

    @task(2)
    def add(self):
        # A new key every 250 ms: every user in that window races for it.
        key = f"add-{int(time.time() * 4)}"
        with self.client.post(f"{PREFIX}/add/{key}/", name=f"{PREFIX}/add/[key]/", catch_response=True) as response:
            if response.status_code != 200:
                _failed(response, "add failed")
            elif response.json()["won"]:
                tally["wins"][key] += 1

    @task(1)
    def reset_forwarding(self):
        if not RESETS:
            return
        with self.client.post("/forwarding/reset/", catch_response=True) as response:
            if response.status_code != 200:
                _failed(response, "forwarding reset failed")


@events.test_start.add_listener
def start_fresh(environment, **kwargs):
    _call(environment.host, "/start/", "POST")
    tally.update(increments=0, mismatches=0, wins=collections.Counter(), started=time.monotonic())


def _check(environment, name, message):
    environment.events.request.fire(
        request_type="CHECK", name=name, response_time=0, response_length=0, exception=Exception(message),
        context={},
    )


def _read_counter(environment):
    """The counter at the end, read on a fresh connection; a backend that
    fails now and then gets a few tries."""
    for _attempt in range(10):
        try:
            return _call(environment.host, "/counter/")["value"]
        except OSError as error:  # urllib's HTTPError and URLError included
            last = error
            time.sleep(0.1)
    _check(environment, "counter unreadable", f"/counter/ failed 10 times: {last}")
    return None


@events.test_stop.add_listener
def check_totals(environment, **kwargs):
    elapsed = time.monotonic() - tally["started"]
    total = environment.stats.total
    requests, failures = total.num_requests, total.num_failures - tally["mismatches"]
    final = _read_counter(environment)
    lost = tally["increments"] - (final or 0)
    double_adds = sum(wins - 1 for wins in tally["wins"].values() if wins > 1)
    if lost > 0:
        _check(environment, "lost increments" if ASYNC else "lost increments (seeds 2, 5)",
               f"{tally['increments']} increments succeeded, the counter reads {final}: {lost} lost")
    if double_adds:
        _check(environment, "add won twice",
               f"{double_adds} extra winners of add() for {len(tally['wins'])} fresh keys")
    if REPORT:
        with open(REPORT, "w") as out:
            json.dump({
                "requests": requests, "failures": failures, "mismatches": tally["mismatches"],
                "increments": tally["increments"], "counter": final, "lost_increments": max(lost, 0),
                "adds_won": sum(tally["wins"].values()), "add_keys": len(tally["wins"]),
                "double_adds": double_adds, "seconds": elapsed, "rps": requests / elapsed if elapsed else 0.0,
                "failure_examples": [f"{error.name}: {error.error}" for error in
                                     list(environment.stats.errors.values())[:3]],
            }, out)
