"""scripts/ensure-cpython.sh, which provides make test's second interpreter,
and scripts/ensure-valkey.sh, which provides make test-valkey's server (both
build from Debian's source packages, fetched by scripts/debian-source.sh): a
finished build is reused without the network, an unfinished one is not, and
a source that cannot be fetched fails loudly with the reason (the run must
never go on without what it asked for)."""

import os
import platform
import subprocess
import sys
import sysconfig

from support.servers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "ensure-cpython.sh")
VALKEY_SCRIPT = os.path.join(ROOT, "scripts", "ensure-valkey.sh")
SERIES = "%d.%d" % sys.version_info[:2]


def ensure(cache, series=SERIES, unreachable=True, script=SCRIPT):
    env = dict(os.environ, RACEFREE_CACHE=str(cache))
    env.pop("RACEFREE_DEBIAN_MIRROR", None)
    if unreachable:
        # Nothing listens there: any attempt to fetch fails at once.
        env["RACEFREE_DEBIAN_MIRROR"] = f"http://127.0.0.1:{free_port()}/debian"
    arguments = [series] if script == SCRIPT else []
    return subprocess.run([script, *arguments], capture_output=True, text=True, env=env, timeout=300)


def cached_build(cache, finished):
    """A cache entry holding this test's own CPython, as a build leaves it."""
    bindir = cache / f"cpython-{SERIES}" / "bin"
    bindir.mkdir(parents=True)
    python = bindir / f"python{SERIES}"
    interpreter = os.path.join(sysconfig.get_config_var("BINDIR"), f"python{SERIES}")
    python.symlink_to(interpreter)
    if finished:
        (cache / f"cpython-{SERIES}" / ".racefree-build-complete").write_text(platform.python_version())
    return python


def test_a_finished_build_is_reused_without_the_network(tmp_path):
    python = cached_build(tmp_path, finished=True)
    result = ensure(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(python)


def test_an_unfinished_build_is_rebuilt_not_reused(tmp_path):
    cached_build(tmp_path, finished=False)
    result = ensure(tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    assert f"cannot fetch the source of python{SERIES}: apt-get update of http://127.0.0.1" in result.stderr
    assert f"cannot provide CPython {SERIES}: its source could not be fetched" in result.stderr


def test_an_unreachable_registry_fails_with_the_reason(tmp_path):
    result = ensure(tmp_path, series="3.13")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Could not connect" in result.stderr
    assert "cannot fetch the source of python3.13: apt-get update of" in result.stderr
    assert "cannot provide CPython 3.13" in result.stderr
    assert not (tmp_path / "cpython-3.13" / ".racefree-build-complete").exists()


def test_a_series_debian_does_not_have_fails_with_the_reason(tmp_path):
    # The machine's configured Debian mirror, as make test uses it.
    result = ensure(tmp_path, series="3.99", unreachable=False)
    assert result.returncode != 0
    assert result.stdout == ""
    reason = "no upstream tarball (apt-get source python3.99 failed)"
    assert f"cannot fetch the source of python3.99: {reason}" in result.stderr
    assert "cannot provide CPython 3.99" in result.stderr


def cached_valkey(cache, version_line, finished=True):
    """A cache entry for ensure-valkey.sh whose redis-server prints
    ``version_line`` for ``--version``, as a build leaves it."""
    bindir = cache / "valkey" / "bin"
    bindir.mkdir(parents=True)
    for name in ("valkey-server", "valkey-cli"):
        program = bindir / name
        program.write_text(f"#!/bin/sh\necho '{version_line}'\n")
        program.chmod(0o755)
    (bindir / "redis-server").symlink_to("valkey-server")
    (bindir / "redis-cli").symlink_to("valkey-cli")
    if finished:
        (cache / "valkey" / ".racefree-build-complete").write_text("8.1.1")
    return bindir


def test_a_finished_valkey_build_is_reused_without_the_network(tmp_path):
    bindir = cached_valkey(tmp_path, "Valkey server v=8.1.1 sha=00000000:1 malloc=libc bits=64")
    result = ensure(tmp_path, script=VALKEY_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(bindir)


def test_a_cached_server_that_is_not_valkey_is_rebuilt_not_reused(tmp_path):
    cached_valkey(tmp_path, "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64")
    result = ensure(tmp_path, script=VALKEY_SCRIPT)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "cannot fetch the source of valkey: apt-get update of http://127.0.0.1" in result.stderr
    assert "cannot provide Valkey: its source could not be fetched" in result.stderr


def test_an_unfinished_valkey_build_is_not_reused(tmp_path):
    cached_valkey(tmp_path, "Valkey server v=8.1.1 sha=00000000:1 malloc=libc bits=64", finished=False)
    result = ensure(tmp_path, script=VALKEY_SCRIPT)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "cannot provide Valkey: its source could not be fetched" in result.stderr
    assert not (tmp_path / "valkey" / ".racefree-build-complete").exists()
