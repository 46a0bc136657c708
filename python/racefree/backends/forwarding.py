"""Generation-safe forwarding backend.

Forwards every cache call to the backend configured under another alias of
``CACHES`` (LOCATION; ``"forwarded_backend"`` by default, as djblets'
``ForwardingCacheBackend``), and can switch to a new configuration at run
time with ``reset()`` while other threads keep serving requests.

The target is one backend object per configuration, built by the forwarder
from ``settings.CACHES`` and shared by every thread and every per-thread
instance of the alias (the generation state lives in the Rust
``ForwardingCore``, one per forwarded alias and process). A call that began
on the old target finishes on it; the old target is closed once, after its
last call returned; a failed build leaves the old target serving.
"""

import copy
import functools
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.core.cache.backends.base import BaseCache, InvalidCacheBackendError
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from racefree._core import ForwardingCore
from racefree.backends._stampede import Lockable, Stampede
from racefree.backends.base import ProcessRegistry
from racefree.checks import error

if TYPE_CHECKING:
    from django.core.checks import CheckMessage

logger = logging.getLogger("racefree.forwarding")

DEFAULT_ALIAS = "forwarded_backend"

# Settings that belong on the forwarded alias; on the forwarder they would
# be silently ignored.
TARGET_SETTINGS = ("TIMEOUT", "KEY_PREFIX", "VERSION", "KEY_FUNCTION")

# One forwarding state per forwarded alias and process.
_cores: ProcessRegistry[str, ForwardingCore] = ProcessRegistry()


def forwarded_settings(alias: str) -> dict[str, Any]:
    """A copy of ``settings.CACHES[alias]``, read now (run-time changes to
    ``settings.CACHES`` count, unlike Django's cached ``caches.settings``)."""
    try:
        params = settings.CACHES[alias]
    except KeyError:
        raise InvalidCacheBackendError(f"ForwardingCache: the forwarded alias {alias!r} is not in CACHES") from None
    params = dict(params)
    if isinstance(params.get("OPTIONS"), dict):
        params["OPTIONS"] = dict(params["OPTIONS"])
    return params


def _forwarding_chain_error(alias: str) -> str | None:
    """Why forwarding to ``alias`` never reaches a real backend, or None."""
    seen: list[str] = []
    while True:
        if alias in seen:
            return "forwarding loops: " + " -> ".join([*seen, alias])
        seen.append(alias)
        params = settings.CACHES.get(alias, {})
        backend = params.get("BACKEND")
        if backend != f"{__name__}.ForwardingCache":
            return None
        alias = params.get("LOCATION") or DEFAULT_ALIAS


def build_target(alias: str) -> tuple[BaseCache, dict[str, Any]]:
    """A new backend object from ``CACHES[alias]``, and the settings used."""
    params = forwarded_settings(alias)
    source = copy.copy(params)
    backend = params.pop("BACKEND", None)
    if not backend:
        raise ImproperlyConfigured(f"ForwardingCache: CACHES[{alias!r}] has no BACKEND")
    location = params.pop("LOCATION", "")
    try:
        backend_class = import_string(backend)
    except ImportError as exc:
        raise InvalidCacheBackendError(f"Could not find backend '{backend}': {exc}") from exc
    if issubclass(backend_class, ForwardingCache):
        loop = _forwarding_chain_error(alias)
        if loop:
            raise ImproperlyConfigured(f"ForwardingCache: {loop}")
    return backend_class(location, params), source


def close_target(target: Any) -> None:
    # Runs on whichever thread ends the old target's last call: log, never raise.
    try:
        target.close()
    except Exception:
        logger.exception("racefree: closing a replaced cache backend %r failed", target)


def new_core(alias: str) -> ForwardingCore:
    """The forwarding state of ``alias``: builds, leases and closes its targets."""

    def report_failure(error: BaseException) -> None:
        logger.error(
            "racefree: rebuilding the cache backend of %r failed; the previous one keeps serving",
            alias,
            exc_info=(type(error), error, error.__traceback__),
        )

    return ForwardingCore(functools.partial(build_target, alias), close_target, report_failure)


def _settings_changed(setting: str, **kwargs: Any) -> None:
    # override_settings(CACHES=...) in tests: every forwarder rebuilds its
    # target from the new settings at its next call.
    if setting == "CACHES":
        for core in _cores.values():
            core.invalidate()


setting_changed.connect(_settings_changed, dispatch_uid="racefree.backends.forwarding")


class ForwardingCache(Lockable, BaseCache):
    """Forward every call to the backend configured under LOCATION."""

    _alias: str
    _core: ForwardingCore
    _call: Callable[[str, tuple[object, ...], dict[str, object] | None], object]

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        # BaseCache.__init__ is not called on purpose: default_timeout,
        # key_prefix, version, key_func, _max_entries... are the target's,
        # read through __getattr__.
        misplaced = [name for name in TARGET_SETTINGS if name in params]
        if misplaced:
            raise ImproperlyConfigured(
                f"ForwardingCache: {', '.join(misplaced)} belong on the forwarded alias's settings, "
                "not on the forwarding cache's"
            )
        options = params.get("OPTIONS") or {}
        if options:
            raise ImproperlyConfigured(f"ForwardingCache: unknown OPTIONS {sorted(options)}; it takes none")
        if location and not isinstance(location, str):
            raise ImproperlyConfigured("ForwardingCache: LOCATION must be the name of an alias in CACHES")
        alias = location or DEFAULT_ALIAS
        object.__setattr__(self, "_alias", alias)
        object.__setattr__(self, "_core", _cores.get(alias, lambda: new_core(alias)))
        # Bound once: every forwarded call goes through it.
        object.__setattr__(self, "_call", self._core.call)

    @property
    def forwarded_alias(self) -> str:
        return self._alias

    @property
    def backend(self) -> object:
        """The current target (djblets' attribute name)."""
        return self._core.target()

    @property
    def generation(self) -> int:
        """Increases by one with every target built."""
        return self._core.generation

    def reset(self) -> None:
        """Switch every thread to a target built from the current settings.

        Calls in flight finish on the old target, which is closed after the
        last of them. Concurrent resets of one generation build once. If the
        build fails, the error is logged and raised here, and the old
        target keeps serving.
        """
        core = self._core
        try:
            if core.reset(core.generation):
                logger.info("racefree: cache %r reloaded (generation %d)", self._alias, core.generation)
                return
            # Another thread's reset of this generation built instead; it
            # may have read the settings before this caller changed them.
            if core.source() != forwarded_settings(self._alias) and core.reset(core.generation):
                logger.info("racefree: cache %r reloaded (generation %d)", self._alias, core.generation)
        except Exception:
            logger.exception("racefree: building the cache backend of %r failed; the previous one keeps serving",
                             self._alias)
            raise

    #: djblets' name.
    reset_backend = reset

    def _lock_settings(self) -> Stampede:
        """A lock's lease defaults to the target's LOCK_LEASE."""
        return getattr(self._core.target(), "_stampede", None) or Stampede()

    def _delete_if(self, key: Any, value: Any, version: int | None = None) -> bool:
        """A lock's release: the target's atomic compare-and-delete where it
        has one (racefree's backends), else a read then a delete (all that
        Django's own backends offer)."""
        with self._core.lease() as leased:
            target = cast(BaseCache, leased)
            if hasattr(target, "_delete_if"):
                return bool(target._delete_if(key, value, version))
            return target.get(key, None, version) == value and bool(target.delete(key, version))

    async def a_delete_if(self, key: Any, value: Any, version: int | None = None) -> bool:
        """See _delete_if."""
        with self._core.lease() as leased:
            target = cast(BaseCache, leased)
            if hasattr(target, "a_delete_if"):
                return bool(await target.a_delete_if(key, value, version))
            return await target.aget(key, None, version) == value and bool(await target.adelete(key, version))

    def _touch_if(self, key: Any, value: Any, timeout: float, version: int | None = None) -> bool:
        """A lock's extension: the target's atomic compare-and-touch where
        it has one, else a read then a touch (as for ``_delete_if``)."""
        with self._core.lease() as leased:
            target = cast(BaseCache, leased)
            if hasattr(target, "_touch_if"):
                return bool(target._touch_if(key, value, timeout, version))
            return target.get(key, None, version) == value and bool(target.touch(key, timeout, version))

    async def a_touch_if(self, key: Any, value: Any, timeout: float, version: int | None = None) -> bool:
        """See _touch_if."""
        with self._core.lease() as leased:
            target = cast(BaseCache, leased)
            if hasattr(target, "a_touch_if"):
                return bool(await target.a_touch_if(key, value, timeout, version))
            return await target.aget(key, None, version) == value and bool(await target.atouch(key, timeout, version))

    def invalidate(self, key: Any, version: int | None = None) -> bool:
        """The target's invalidate (racefree's backends), else a delete."""
        with self._core.lease() as leased:
            target = cast(BaseCache, leased)
            if hasattr(target, "invalidate"):
                return bool(target.invalidate(key, version))
            return bool(target.delete(key, version))

    async def ainvalidate(self, key: Any, version: int | None = None) -> bool:
        """See invalidate."""
        with self._core.lease() as leased:
            target = cast(BaseCache, leased)
            if hasattr(target, "ainvalidate"):
                return bool(await target.ainvalidate(key, version))
            return bool(await target.adelete(key, version))

    def system_checks(self, alias: str) -> "list[CheckMessage]":
        """racefree.E005 if the forwarded alias is missing from CACHES."""
        if self._alias in getattr(settings, "CACHES", {}):
            return []
        hint = "Add that alias to CACHES, or set LOCATION to an alias that is there."
        return [error(alias, f" forwards to {self._alias!r}, which is not in CACHES", "racefree.E005", hint)]

    def stats(self) -> dict[str, Any]:
        """The forwarding counters (generation, builds, build_failures,
        closes, in_flight, retiring), and the target's own stats() where it
        has one, under ``"target"``."""
        stats: dict[str, Any] = self._core.stats()
        target_stats = getattr(self._core.target(), "stats", None)
        if callable(target_stats):
            stats["target"] = target_stats()
        return stats

    def close(self, **kwargs: Any) -> None:
        """Django calls this after every request, on each thread's instance;
        the target is shared by every thread, so it is not closed here. A
        target is closed when a reset replaces it."""

    async def aclose(self, **kwargs: Any) -> None:
        """See close()."""

    def __getattr__(self, name: str) -> Any:
        # Only for names the forwarder itself lacks: the target's attributes
        # (default_timeout, key_prefix, _cache, ...).
        core = self.__dict__.get("_core")
        if core is None:
            raise AttributeError(name)
        return getattr(core.target(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Attributes set on the forwarder are the target's (Django's tests
        # and user code set e.g. _max_entries on a cache object).
        setattr(self._core.target(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._core.target(), name)

    def __repr__(self) -> str:
        return f"<ForwardingCache to {self._alias!r}, generation {self._core.generation}>"


def _forward(name: str) -> Callable[..., Any]:
    @functools.wraps(getattr(BaseCache, name))
    def forward(self: ForwardingCache, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    forward.__qualname__ = f"ForwardingCache.{name}"
    return forward


def _forward_async(name: str) -> Callable[..., Any]:
    @functools.wraps(getattr(BaseCache, name))
    async def forward(self: ForwardingCache, *args: Any, **kwargs: Any) -> Any:
        # The lease keeps the target open across the await.
        with self._core.lease() as target:
            return await getattr(target, name)(*args, **kwargs)

    forward.__qualname__ = f"ForwardingCache.{name}"
    return forward


def _forwarded_methods() -> list[str]:
    """Every public method of BaseCache but close/aclose, so methods a
    newer Django adds are forwarded too."""
    return [
        name
        for name, value in vars(BaseCache).items()
        if callable(value) and not name.startswith("_") and name not in ("close", "aclose")
    ]


for _name in _forwarded_methods():
    _forwarder = _forward_async if inspect.iscoroutinefunction(getattr(BaseCache, _name)) else _forward
    setattr(ForwardingCache, _name, _forwarder(_name))
del _name, _forwarder
