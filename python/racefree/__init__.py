"""racefree: race-free, drop-in Django cache backends with Rust stores.

Pick a backend in ``CACHES``::

    "BACKEND": "racefree.backends.memcached.MemcachedCache"
"""

import atexit
import os

from racefree import _core
from racefree.exceptions import (
    CacheAuthenticationError,
    CacheConnectionError,
    CacheError,
    CacheProtocolError,
    CacheServerError,
    CacheTimeoutError,
    ValueTooLargeError,
)

__version__ = _core.__version__

__all__ = [
    "CacheAuthenticationError",
    "CacheConnectionError",
    "CacheError",
    "CacheProtocolError",
    "CacheServerError",
    "CacheTimeoutError",
    "ValueTooLargeError",
    "__version__",
]

# A child process must not share its parent's pooled sockets: two processes
# reading replies from one socket would read each other's values.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_core._after_fork_in_child)

# Async results are delivered from the extension's threads, which must not
# take the GIL once the interpreter starts finalizing; atexit runs before
# that, and this waits for the deliveries in progress.
atexit.register(_core._close_async_gate)
