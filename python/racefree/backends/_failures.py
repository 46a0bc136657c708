"""IGNORE_EXCEPTIONS, shared by the backends that talk to a server."""

import logging

logger = logging.getLogger("racefree")


class FailurePolicy:
    """Mixin: ``_server_failed(operation, error)`` is called inside an
    ``except CacheError`` block. It re-raises, or with IGNORE_EXCEPTIONS
    logs on the ``racefree`` logger and returns, so the caller falls back
    to a miss (reads) or drops the write."""

    _ignore_exceptions = False
    server_kind = "cache"

    def _server_failed(self, operation, error):
        if not self._ignore_exceptions:
            raise error
        logger.warning("%s %s failed, ignored (IGNORE_EXCEPTIONS): %s", self.server_kind, operation, error)
