"""The file store under faults, each in a process of its own
(support/file_fault_child.py): a disk that is full, the cache directory
deleted again and again during load, and the cache made read-only during
load. Clear errors, never a torn or foreign value, nothing lost that was
acknowledged, and full recovery afterwards."""

import json
import os
import subprocess
import sys

import pytest

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support", "file_fault_child.py")
# Root ignores permission bits; without these capabilities it obeys them.
AS_UNPRIVILEGED_ROOT = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def run_fault(mode, directory, seconds=2.0):
    command = [sys.executable, CHILD, mode, str(directory), str(seconds)]
    if mode == "readonly" and os.geteuid() == 0:
        command = AS_UNPRIVILEGED_ROOT + command
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_disk_full_fails_large_writes_clearly_and_loses_nothing(tmp_path):
    report = run_fault("full", tmp_path / "cache")
    # Every 10th value exceeds the file-size limit: exactly those sets fail,
    # with the OS's own error, and leave the key's old value in place.
    assert report["errors"] and set(report["errors"]) == {"set: OSError"}
    assert "File too large" in report["examples"]["set: OSError"]
    assert report["garbage"] == []
    assert report["counter"] == report["increments"] > 0
    assert report["recovered"]
    assert report["temp_files_left"] == []


@pytest.mark.cross_version
def test_directory_deleted_during_load(tmp_path):
    report = run_fault("deleted", tmp_path / "cache")
    assert report["deletions"] >= 5
    assert report["ops_during_fault"] > 0  # the load ran while the tree was being deleted
    # Writes recreate the tree and succeed; the counter was deleted with
    # everything else, so increments of it then find no key (ValueError).
    assert set(report["errors"]) <= {"incr: ValueError"}, report["examples"]
    assert report["garbage"] == []
    assert report["recovered"]
    assert report["temp_files_left"] == []


def test_cache_made_read_only_during_load(tmp_path):
    report = run_fault("readonly", tmp_path / "cache")
    # Sets that must create a file (new keys) fail with PermissionError
    # while the tree is read-only; increments and sets of existing keys
    # rewrite their files in place and succeed.
    assert report["ops_during_fault"] > 0
    assert report["errors"].get("set: PermissionError", 0) > 0
    assert set(report["errors"]) <= {"set: PermissionError", "incr: PermissionError"}, report["examples"]
    assert report["garbage"] == []
    assert report["counter"] == report["increments"] > 0
    assert report["recovered"]
    # A temp file whose rename was refused could not be removed either (the
    # directory was read-only); cull and clear sweep such leftovers later.
    assert all(name.startswith(".tmp-") for name in report["temp_files_left"])
