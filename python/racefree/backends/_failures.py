"""IGNORE_EXCEPTIONS, shared by the backends that talk to a server."""

import contextlib
import contextvars
import logging
from collections.abc import Iterator

from racefree.exceptions import CacheError

logger = logging.getLogger("racefree")

# Set while a cache lock is taken or given back: a lock must know that the
# server failed, not read a swallowed error as "someone else holds it".
_failures_raise = contextvars.ContextVar("racefree_failures_raise", default=False)


@contextlib.contextmanager
def failures_raised() -> Iterator[None]:
    """Within the block, server failures raise even with IGNORE_EXCEPTIONS."""
    token = _failures_raise.set(True)
    try:
        yield
    finally:
        _failures_raise.reset(token)


class FailurePolicy:
    """Mixin: ``_server_failed(operation, error)`` is called inside an
    ``except CacheError`` block. It re-raises, or with IGNORE_EXCEPTIONS
    logs on the ``racefree`` logger and returns, so the caller falls back
    to a miss (reads) or drops the write."""

    _ignore_exceptions = False
    server_kind = "cache"

    def _server_failed(self, operation: str, error: CacheError) -> None:
        if not self._ignore_exceptions or _failures_raise.get():
            raise error
        logger.warning("%s %s failed, ignored (IGNORE_EXCEPTIONS): %s", self.server_kind, operation, error)
