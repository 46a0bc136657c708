"""scripts/ensure-cpython.sh, which provides make test's second interpreter:
a finished build is reused without the network, an unfinished one is not,
and a source that cannot be fetched fails loudly with the reason (the run
must never go on without the interpreter)."""

import os
import platform
import subprocess
import sys
import sysconfig

from support.servers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "ensure-cpython.sh")
SERIES = "%d.%d" % sys.version_info[:2]


def ensure(cache, series=SERIES, unreachable=True):
    env = dict(os.environ, RACEFREE_CACHE=str(cache))
    env.pop("RACEFREE_DEBIAN_MIRROR", None)
    if unreachable:
        # Nothing listens there: any attempt to fetch fails at once.
        env["RACEFREE_DEBIAN_MIRROR"] = f"http://127.0.0.1:{free_port()}/debian"
    return subprocess.run([SCRIPT, series], capture_output=True, text=True, env=env, timeout=300)


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
    assert f"cannot provide CPython {SERIES}: apt-get update of http://127.0.0.1" in result.stderr


def test_an_unreachable_registry_fails_with_the_reason(tmp_path):
    result = ensure(tmp_path, series="3.13")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Could not connect" in result.stderr
    assert "cannot provide CPython 3.13: apt-get update of" in result.stderr
    assert not (tmp_path / "cpython-3.13" / ".racefree-build-complete").exists()


def test_a_series_debian_does_not_have_fails_with_the_reason(tmp_path):
    # The machine's configured Debian mirror, as make test uses it.
    result = ensure(tmp_path, series="3.99", unreachable=False)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "cannot provide CPython 3.99: apt-get source python3.99 failed" in result.stderr
