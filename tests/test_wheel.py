"""Packaging: the abi3 wheel installs into a fresh virtualenv with no Rust
toolchain on PATH and every backend works from it against the real
servers; the sdist builds from source; the extension's version is the
package's."""

import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from django.db import connection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The interpreter (of a virtualenv with maturin) the wheel is built with:
# make test-newest points it at the system CPython's, whose cargo build is
# cached, and installs the wheel on CPython 3.13 (abi3: one wheel for all).
BUILD_PYTHON = os.environ.get("RACEFREE_BUILD_PYTHON", sys.executable)
MATURIN = os.path.join(os.path.dirname(BUILD_PYTHON), "maturin")

SMOKE = textwrap.dedent(
    """
    import json, sys, tempfile
    import django
    from django.conf import settings

    spec = json.loads(sys.argv[1])
    settings.configure(CACHES={
        "memcached": {"BACKEND": "racefree.backends.memcached.MemcachedCache", "LOCATION": spec["memcached"],
                      "KEY_PREFIX": "wheel-smoke"},
        "redis": {"BACKEND": "racefree.backends.redis.RedisCache", "LOCATION": spec["redis"],
                  "KEY_PREFIX": "wheel-smoke"},
        "file": {"BACKEND": "racefree.backends.filebased.FileBasedCache", "LOCATION": tempfile.mkdtemp()},
        "database": {"BACKEND": "racefree.backends.db.DatabaseCache", "LOCATION": spec["table"],
                     "OPTIONS": {"DSN": spec["dsn"]}},
        "forwarding": {"BACKEND": "racefree.backends.forwarding.ForwardingCache", "LOCATION": "file"},
    })
    django.setup()
    import asyncio
    from importlib.metadata import version
    import racefree
    from django.core.cache import caches

    assert racefree.__version__ == version("racefree"), (racefree.__version__, version("racefree"))
    assert "site-packages" in racefree.__file__, racefree.__file__
    for alias in ("memcached", "redis", "file", "database", "forwarding"):
        cache = caches[alias]
        cache.set("k", {"alias": alias})
        assert cache.get("k") == {"alias": alias}
        cache.set("n", 1)
        assert cache.incr("n", 4) == 5
        assert cache.get_or_set(f"computed-{alias}", lambda: alias, 60) == alias
        assert asyncio.run(cache.aget("k")) == {"alias": alias}
        assert cache.delete("k")
        print(alias, "ok")
    print("python", "%d.%d" % sys.version_info[:2], "django", django.get_version())
    """
)


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, VIRTUAL_ENV=os.path.dirname(os.path.dirname(BUILD_PYTHON)))
    run([MATURIN, "build", "--release", "--quiet", "--interpreter", BUILD_PYTHON, "--out", str(out)], cwd=ROOT, env=env)
    run([MATURIN, "sdist", "--out", str(out)], cwd=ROOT, env=env)
    return out


@pytest.mark.cross_version
def test_one_abi3_wheel_for_every_supported_python(dist):
    (wheel,) = glob.glob(str(dist / "*.whl"))
    name = os.path.basename(wheel)
    assert "-cp310-abi3-" in name, name
    assert name.startswith("racefree-"), name


@pytest.mark.cross_version
def test_the_wheel_works_without_rust(dist, tmp_path, memcached, redis_server, table):
    (wheel,) = glob.glob(str(dist / "*.whl"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", wheel])
    # No cargo or rustc anywhere the smoke test could find them.
    path = os.pathsep.join([str(venv / "bin"), "/usr/bin", "/bin"])
    assert shutil.which("cargo", path=path) is None and shutil.which("rustc", path=path) is None
    db = connection.settings_dict
    spec = {
        "memcached": memcached.location,
        "redis": redis_server.location,
        "table": table,
        "dsn": f"host={db['HOST']} port={db['PORT']} user={db['USER']} dbname={db['NAME']}",
    }
    env = {"PATH": path, "HOME": str(tmp_path), "TZ": os.environ.get("TZ", "UTC")}
    out = run([python, "-c", SMOKE, json.dumps(spec)], env=env, cwd=str(tmp_path))
    *backends, interpreter = out.splitlines()
    assert backends == ["memcached ok", "redis ok", "file ok", "database ok", "forwarding ok"], out
    # The fresh virtualenv runs this interpreter's CPython, with the Django pip chose for it.
    assert interpreter.split()[:2] == ["python", "%d.%d" % sys.version_info[:2]], interpreter
    print(f"\nthe wheel in a fresh virtualenv: {interpreter}")


def test_the_sdist_builds_from_source(dist, tmp_path):
    (sdist,) = glob.glob(str(dist / "*.tar.gz"))
    # The compiled crates of this checkout are reused, so this is a relink.
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target"))
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), sdist], env=env)
    (built,) = glob.glob(str(tmp_path / "racefree-*.whl"))
    assert "-abi3-" in os.path.basename(built)
