"""Settings of the racefree demo project.

The cache under test is named by ``RACEFREE_DEMO_CACHE`` (``store/member``,
see ``races.pairs``; default ``file/racefree``, which needs no server).
``RACEFREE_DEMO_DIR`` holds the file stores and SQLite;
``RACEFREE_DEMO_MEMCACHED`` (``host:port``), ``RACEFREE_DEMO_POSTGRES``
(``host:port``) and ``RACEFREE_DEMO_REDIS`` (``redis://host:port``) locate
the servers for the memcached, database and Redis pairs.
"""

import os
import sys
import tempfile

from races.pairs import caches_for

WORKDIR = os.environ.get("RACEFREE_DEMO_DIR") or os.path.join(tempfile.gettempdir(), "racefree-demo")

# Threads switch every 100 us instead of 5 ms, for every backend alike: a
# 2-core machine then interleaves requests as a many-core server would,
# so races the GIL would hide for hours show within seconds.
sys.setswitchinterval(float(os.environ.get("RACEFREE_DEMO_SWITCH_INTERVAL", "0.0001")))

SECRET_KEY = "racefree-demo-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["races"]
ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"
USE_TZ = True

# Seed 1's setup: every GET response goes through the cache too.
MIDDLEWARE = [
    "django.middleware.cache.UpdateCacheMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.cache.FetchFromCacheMiddleware",
    "races.middleware.ErrorsAsJson",
]
CACHE_MIDDLEWARE_SECONDS = 2

# SQLite for Django's own tables; PostgreSQL only for the cache table.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(WORKDIR, "demo.sqlite3")}}
if os.environ.get("RACEFREE_DEMO_POSTGRES"):
    host, port = os.environ["RACEFREE_DEMO_POSTGRES"].rsplit(":", 1)
    DATABASES["cache"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": host,
        "PORT": port,
        "NAME": os.environ.get("RACEFREE_DEMO_POSTGRES_NAME", "postgres"),
        "USER": os.environ.get("RACEFREE_DEMO_POSTGRES_USER", "postgres"),
    }
    DATABASE_ROUTERS = ["races.routers.CacheTableRouter"]

CACHES = caches_for(os.environ.get("RACEFREE_DEMO_CACHE", "file/racefree"), WORKDIR)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {name: {"handlers": ["console"], "level": "ERROR"} for name in ("django.request", "races")},
}
