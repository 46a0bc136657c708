"""Settings for Django's own ``tests/runtests.py`` with racefree as the cache.

tests/test_django_apps.py runs Django's test apps that use the cache with
``--settings=racefree_runtests_settings``; the environment variable
``RACEFREE_RUNTESTS`` (JSON) names the backend and the servers the pytest
harness started. Django's tables live on that PostgreSQL for every backend,
LocMemCache included, so the runs differ only in the cache.
"""

import json
import os

from racefree_runtests_runner import cache_settings

_spec = json.loads(os.environ["RACEFREE_RUNTESTS"])


def _database(name):
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": str(_spec["postgres_port"]),
    }


DATABASES = {"default": _database("racefree_apps"), "other": _database("racefree_apps_other")}
CACHES = cache_settings({"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}})
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
USE_TZ = False
TEST_RUNNER = "racefree_runtests_runner.RacefreeCacheRunner"
