"""The demo's machinery (gunicorn with processes and threads, locust, the
table), run briefly on the racefree file pair so `make demo` cannot rot."""

import json
import os
import subprocess
import sys

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
