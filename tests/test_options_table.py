"""The README's table of OPTIONS is the code's: every option of every
backend, with its default and its other spellings, and nothing else.
Each backend's ``options_spec`` is the one definition."""

import ast
import os
import pickle
import re

import pytest

from racefree._core import MAX_SECONDS, FileStore, MemcachedClient, PgStore, RedisClient
from racefree.backends._options import store_settings
from racefree.backends.db import DatabaseCache
from racefree.backends.filebased import FileBasedCache
from racefree.backends.memcached import MemcachedCache
from racefree.backends.redis import RedisCache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = {"memcached": MemcachedCache, "redis": RedisCache, "file": FileBasedCache, "database": DatabaseCache}
ROW = re.compile(r"^\| `(?P<name>\w+)` \| (?P<backends>[a-z, ]+) \| `(?P<default>[^`]+)` \| (?P<meaning>.+) \|$")


def readme_rows():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as readme:
        lines = readme.read().splitlines()
    start = lines.index("| option | backends | default | meaning |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        match = ROW.match(line)
        assert match, f"README option row not in the expected form: {line!r}"
        rows.append(match)
    return rows


def written_default(text):
    return pickle.HIGHEST_PROTOCOL if text == "pickle.HIGHEST_PROTOCOL" else ast.literal_eval(text)


def test_the_readme_lists_every_option_with_its_default():
    documented = {}
    for row in readme_rows():
        for backend in (name.strip() for name in row["backends"].split(",")):
            assert backend in BACKENDS, row.group(0)
            key = (backend, row["name"])
            assert key not in documented, f"{key} listed twice"
            documented[key] = (written_default(row["default"]), row["meaning"])
    defined = {
        (backend, option.name): option for backend, cls in BACKENDS.items() for option in cls.options_spec
    }
    assert sorted(documented) == sorted(defined)
    for key, option in defined.items():
        default, meaning = documented[key]
        assert default == option.default and type(default) is type(option.default), (key, default, option.default)
        for alias in option.aliases:
            assert f"`{alias}`" in meaning, f"{key}: the README does not name its spelling {alias!r}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_options_a_backend_refuses_are_named_under_the_table(backend):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as readme:
        after_table = readme.read().split("| option | backends | default | meaning |", 1)[1].split("\n\n", 2)[1]
    for name in BACKENDS[backend].refused_options:
        assert f"`{name}`" in after_table, name



def build_store(backend, settings, tmp_path):
    """The backend's Rust store, built from ``settings`` as the backend would."""
    if backend == "memcached":
        return MemcachedClient(["127.0.0.1:1"], settings)
    if backend == "redis":
        return RedisClient(["127.0.0.1:1"], settings)
    if backend == "file":
        return FileStore(str(tmp_path), settings)
    return PgStore("cache", {"host": "127.0.0.1", "port": "1"}, None, settings)


def default_settings(backend):
    return store_settings({o.name: o.default for o in BACKENDS[backend].options_spec}, BACKENDS[backend].options_spec)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_takes_every_setting_from_python_and_has_no_default_of_its_own(backend, tmp_path):
    settings = default_settings(backend)
    assert settings, "the store takes none of the backend's OPTIONS"
    build_store(backend, settings, tmp_path)
    for name in settings:
        missing = {key: value for key, value in settings.items() if key != name}
        with pytest.raises(ValueError, match=f"missing field `{name}`"):
            build_store(backend, missing, tmp_path)
    with pytest.raises(ValueError, match="unknown field `surprise`"):
        build_store(backend, {**settings, "surprise": 1}, tmp_path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_refuses_a_duration_it_cannot_keep(backend, tmp_path):
    # Python's checks come first; the store still refuses what would
    # overflow a deadline, called directly.
    settings = default_settings(backend)
    name = next(key for key, value in settings.items() if isinstance(value, float))
    for bad in (-1.0, MAX_SECONDS * 2, float("nan")):
        with pytest.raises(ValueError, match=f"is not a number of seconds from 0 to {MAX_SECONDS:g}"):
            build_store(backend, {**settings, name: bad}, tmp_path)
