"""The backends the demo compares: for each store, racefree and the stock
backend(s) a Django project would otherwise use, and the bug each pair is
about. ``caches_for`` builds ``CACHES`` for one of them; the server
locations come from the environment (see ``project/settings.py``)."""

import os

RACEFREE = "racefree"
FILE = "racefree.backends.filebased.FileBasedCache"

# store -> (bug, [(member, BACKEND), ...]), racefree first.
PAIRS = {
    "file": (
        "seeds 2, 4: file store shared by processes",
        [(RACEFREE, FILE), ("FileBasedCache", "django.core.cache.backends.filebased.FileBasedCache")],
    ),
    "memcached": (
        "seed 1: client shared by threads",
        [
            (RACEFREE, "racefree.backends.memcached.MemcachedCache"),
            ("PyLibMCCache", "django.core.cache.backends.memcached.PyLibMCCache"),
            ("PyMemcacheCache", "django.core.cache.backends.memcached.PyMemcacheCache"),
        ],
    ),
    "database": (
        "seed 5: PostgreSQL cache table",
        [
            (RACEFREE, "racefree.backends.db.DatabaseCache"),
            ("DatabaseCache", "django.core.cache.backends.db.DatabaseCache"),
        ],
    ),
    "redis": (
        "Redis: client shared by threads and processes",
        [
            (RACEFREE, "racefree.backends.redis.RedisCache"),
            ("RedisCache", "django.core.cache.backends.redis.RedisCache"),
        ],
    ),
    # The same Redis pair served by uvicorn (ASGI): async views await
    # aincr/aadd, which Django's BaseCache (before 6.1) makes of aget then
    # aset, so concurrent requests on one event loop overwrite each other.
    "redis-asgi": (
        "Redis: aincr from async views (ASGI)",
        [
            (RACEFREE, "racefree.backends.redis.RedisCache"),
            ("RedisCache", "django.core.cache.backends.redis.RedisCache"),
        ],
    ),
    "forwarding": (
        "seed 3: forwarding backend reset in traffic",
        [
            (RACEFREE, "racefree.backends.forwarding.ForwardingCache"),
            ("reset-to-None (djblets 0.8)", "races.unsafe_forwarding.UnsafeForwardingCache"),
            ("djblets ForwardingCacheBackend", "djblets.cache.forwarding_backend.ForwardingCacheBackend"),
        ],
    ),
}

# What each store needs from the machine.
NEEDS = {"memcached": "memcached", "database": "postgres", "redis": "redis", "redis-asgi": "redis"}

# Stores served by uvicorn (ASGI, async views) instead of gunicorn (WSGI).
ASGI = {"redis-asgi"}


def members():
    """Every ``store/member`` name, in table order."""
    return [f"{store}/{member}" for store, (_, pair) in PAIRS.items() for member, _ in pair]


def slug(name):
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def caches_for(name, workdir):
    """CACHES for the demo member ``name`` (``store/member``)."""
    store, member = name.split("/", 1)
    backends = dict(PAIRS[store][1])
    if member not in backends:
        raise ValueError(f"unknown demo backend {name!r}; choose one of: {', '.join(members())}")
    backend = backends[member]
    # Room for every key of a run: an entry culled mid-run (the counter,
    # a key being added) would look like the bugs being shown.
    room = {"OPTIONS": {"MAX_ENTRIES": 1_000_000}}
    if store == "file":
        return {"default": {"BACKEND": backend, "LOCATION": os.path.join(workdir, "file-" + slug(member)), **room}}
    if store == "memcached":
        return {"default": {"BACKEND": backend, "LOCATION": os.environ["RACEFREE_DEMO_MEMCACHED"],
                            "KEY_PREFIX": slug(member)}}
    if store in ("redis", "redis-asgi"):
        return {"default": {"BACKEND": backend, "LOCATION": os.environ["RACEFREE_DEMO_REDIS"],
                            "KEY_PREFIX": slug(member)}}
    if store == "database":
        return {"default": {"BACKEND": backend, "LOCATION": "demo_" + slug(member), **room}}
    # forwarding: each forwarder in front of the same racefree file store.
    return {
        "default": {"BACKEND": backend, "LOCATION": "forwarded_backend"},
        "forwarded_backend": {"BACKEND": FILE, "LOCATION": os.path.join(workdir, "forwarded-" + slug(member)), **room},
    }
