"""Views that report a cache bug when they meet one.

``shared`` is one backend object for the whole worker process, as a
module-level reference, the cache middleware of older Django versions and
any forwarding backend hold it: every thread of the worker uses it at once
(seed 1). Several worker processes share the store behind it (seeds 2-5).

The ``async_*`` views are for the ASGI run (uvicorn): many requests share
one event loop and ``await`` the same backend object.
"""

import uuid

from django.core.cache import caches
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

shared = caches["default"]


@never_cache
def health(request):
    return JsonResponse({"ok": True})


@require_POST
def start(request):
    """Empty the cache and set the shared counter to 0 before a run."""
    shared.clear()
    shared.set("counter", 0, None)
    return JsonResponse({"ok": True})


@require_GET
def echo(request, key):
    """Seed 1: a key is cached under itself; anything else read back is
    another request's value."""
    value = shared.get(key)
    if value is None:
        shared.set(key, key, 30)
    elif value != key:
        return JsonResponse(
            {"error": f"*** Keys mismatch detected - key: {key}, value: {value!r:.200} ***"}, status=409
        )
    return JsonResponse({"key": key})


@require_POST
def incr(request):
    """Seeds 2 and 5: a shared counter; the client counts every success."""
    return JsonResponse({"value": shared.incr("counter")})


@never_cache
@require_GET
def counter(request):
    return JsonResponse({"value": shared.get("counter")})


@require_POST
def add(request, key):
    """``add`` of a key many requests race for: exactly one may win."""
    return JsonResponse({"won": bool(shared.add(key, uuid.uuid4().hex, 300))})


@require_POST
def reset_forwarding(request):
    """Seed 3: point the forwarding backend at its (re-read) target while
    other threads use it."""
    shared.reset_backend()
    return JsonResponse({"ok": True})


@require_POST
async def async_incr(request):
    """The shared counter from an async view: ``await aincr``. Django's
    BaseCache.aincr (before 6.1) is ``aget`` then ``aset``, so requests
    awaiting it at once on one event loop overwrite each other's count."""
    return JsonResponse({"value": await shared.aincr("counter")})


@require_POST
async def async_add(request, key):
    """``aadd`` of a key many requests race for: exactly one may win."""
    return JsonResponse({"won": bool(await shared.aadd(key, uuid.uuid4().hex, 300))})
