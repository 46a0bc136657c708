"""The demo's machinery (gunicorn with processes and threads, uvicorn with
async views, locust, the table), run briefly on the file and Redis pairs so
`make demo` cannot rot."""

import json
import os
import subprocess
import sys

import django

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_demo(tmp_path, *names, seconds=3):
    report = tmp_path / "demo.json"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "django_example", "run_demo.py"), "--seconds", str(seconds),
         "--json", str(report), "--only", *names],
        capture_output=True, text=True, timeout=180,
    )
    return result, json.loads(report.read_text())


def test_demo_row_for_racefree_file_store_is_exact(tmp_path):
    result, rows = run_demo(tmp_path, "file/racefree")
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = rows
    assert row["backend"] == "racefree"
    assert row["locust_exit"] == 0
    assert row["requests"] > 100
    assert (row["failures"], row["mismatches"], row["lost_increments"], row["double_adds"]) == (0, 0, 0, 0)
    # Exact counts: every successful increment is in the counter, and
    # every raced-for key has exactly one add winner.
    assert row["increments"] > 0 and row["counter"] == row["increments"]
    assert row["add_keys"] > 0 and row["adds_won"] == row["add_keys"]
    assert "| seeds 2, 4: file store shared by processes | racefree |" in result.stdout


def test_demo_shows_the_stock_file_store_losing_increments(tmp_path):
    # The same machinery sees the bug where it exists: Django's
    # FileBasedCache increments by get + set across processes.
    result, rows = run_demo(tmp_path, "file/FileBasedCache")
    [row] = rows
    assert row["increments"] > 0
    assert row["lost_increments"] > 0, row
    assert row["locust_exit"] != 0  # locust reports the loss as a failure


def test_demo_rows_for_racefree_redis_are_exact(tmp_path):
    # The Redis pair's racefree rows, on a redis-server run_demo starts:
    # gunicorn (processes x threads, sync views) and uvicorn (ASGI, async
    # views awaiting aincr and aadd).
    result, rows = run_demo(tmp_path, "redis/racefree", "redis-asgi/racefree")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [row["name"] for row in rows] == ["redis/racefree", "redis-asgi/racefree"]
    for row in rows:
        assert "skipped" not in row, row
        assert row["backend"] == "racefree"
        assert row["locust_exit"] == 0, row
        assert row["requests"] > 20, row
        assert (row["failures"], row["mismatches"], row["lost_increments"], row["double_adds"]) == (0, 0, 0, 0)
        assert row["increments"] > 0 and row["counter"] == row["increments"], row
        assert row["add_keys"] > 0 and row["adds_won"] == row["add_keys"], row
    assert "| Redis: client shared by threads and processes | racefree |" in result.stdout
    assert "| Redis: aincr from async views (ASGI) | racefree |" in result.stdout


def test_demo_asgi_row_for_stock_redis(tmp_path):
    # Django's RedisCache under uvicorn: before Django 6.1, BaseCache.aincr
    # is aget then aset, so requests awaiting it at once lose increments.
    # Django 6.1 runs RedisCache.incr in a thread instead; the row then
    # only has to have run.
    result, rows = run_demo(tmp_path, "redis-asgi/RedisCache")
    [row] = rows
    assert "skipped" not in row, row
    assert row["backend"] == "RedisCache (stock)"
    assert row["increments"] > 0, row
    if django.VERSION < (6, 1):
        assert row["lost_increments"] > 0, row
        assert row["counter"] < row["increments"]
        assert row["locust_exit"] != 0  # locust reports the loss as a failure
