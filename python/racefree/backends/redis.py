"""Pooled, thread-safe Redis (and Valkey) backend.

A drop-in for Django's ``RedisCache``: the same LOCATION forms (one URL or
several, the first the primary and the others read replicas; or with
``CLUSTER``, seed nodes of a Redis Cluster), key format
and value encoding (integers as digits, everything else pickled), so both
can share a server and switching keeps the cache warm. Unlike the stock
backend, ``incr``/``decr`` and their async twins are one atomic script
(no lost update, no key re-created from 0 after it expired), ``add`` with
a timeout of 0 writes nothing, every async method is native, and a
connection is reused only after a complete exchange. Valkey speaks the
same protocol and works unchanged.
"""

import datetime
import math
import pickle
import re
import ssl
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from racefree._core import RedisClient
from racefree.backends._failures import failures_raised
from racefree.backends._ops import store_operation, with_async_twins
from racefree.backends._options import (
    Option,
    boolean,
    non_negative_int,
    non_negative_number,
    optional,
    positive_int,
    positive_number,
    store_settings,
)
from racefree.backends._redis_raw import RawClient
from racefree.backends._redis_structures import DIGIT_START, RedisDataStructures
from racefree.backends._stampede import stampede_options
from racefree.backends._tls import tls_settings
from racefree.backends.base import ProcessRegistry, RacefreeCache, ServerPools, backend_path, is_forever
from racefree.exceptions import CacheError
from racefree.serialization import log_unloadable, serializer_options

#: Longest TTL sent; beyond it (Redis keeps expiry in milliseconds since
#: the epoch, in 64 bits) a value is kept until evicted, as "forever".
MAX_TTL = 2**40
DEFAULT_PORT = 6379

# Django's RedisSerializer, the one serializer option of Django's accepted
# (it is racefree's default encoding).
DJANGO_SERIALIZERS = {"django.core.cache.backends.redis.RedisSerializer", None}
# django-redis's SERIALIZER paths racefree's SERIALIZER matches.
DJANGO_REDIS_SERIALIZERS = {
    "django_redis.serializers.pickle.PickleSerializer": "pickle",
    "django_redis.serializers.json.JSONSerializer": "json",
}


def client_name(value: object) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("a non-empty str without spaces or control characters")
    return value


def text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty str")
    return value


def database(value: object) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return non_negative_int(value)


def _path_of(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}"


def django_serializer(value: object) -> None:
    # Django's RedisCache takes a serializer class, instance or path.
    if _path_of(value if value is None or isinstance(value, (str, type)) else type(value)) not in DJANGO_SERIALIZERS:
        raise ValueError("Django's RedisSerializer (racefree's encoding; for JSON set SERIALIZER: 'json')")


def stock_class_only(value: object) -> None:
    if value is not None:
        raise ValueError("None: racefree has its own pool and parser, in Rust")


def default_reverse_key(key: str) -> str:
    """The key as the application gave it, from a key Django's default
    key function made (``prefix:version:key``), as django-redis's is."""
    return key.split(":", 2)[2]


def reverse_key_function(value: object) -> Callable[[str], str]:
    # django-redis's REVERSE_KEY_FUNCTION: a callable or its dotted path.
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError:
            raise ValueError("the dotted path of a function that can be imported") from None
    if not callable(value):
        raise ValueError("a function (or its dotted path) from a stored key to the key as given")
    return value


#: How many keys one SCAN asks a server to look at (django-redis's
#: default itersize is 10; more means fewer round trips, each still short).
SCAN_COUNT = 100
_GLOB_SPECIALS = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return _GLOB_SPECIALS.sub(r"\\\1", text)


def scan_count(itersize: object) -> int:
    """How many keys each SCAN looks at: ``itersize``, by default SCAN_COUNT."""
    if itersize is None:
        return SCAN_COUNT
    if isinstance(itersize, bool) or not isinstance(itersize, int):
        raise TypeError(f"itersize is a number of keys (an int) or None, not {itersize!r}")
    if itersize < 1:
        raise ValueError(f"itersize must be at least 1, not {itersize}")
    return itersize


def seconds_to_ms(name: str, value: object) -> int:
    """A lifetime in seconds (a number or a timedelta) as whole milliseconds."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} takes a number of seconds or a timedelta, not {value!r}")
    return round(value * 1000)


def ms_count(name: str, value: object) -> int:
    """A lifetime in milliseconds (an int or a timedelta)."""
    if isinstance(value, datetime.timedelta):
        return round(value.total_seconds() * 1000)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} takes an int of milliseconds or a timedelta, not {value!r}")
    return value


def unix_ms(name: str, when: object, unit_ms: int) -> int:
    """A point in time (a datetime, naive ones in local time as in
    redis-py, or a Unix time in ``unit_ms`` milliseconds) as Unix ms."""
    if isinstance(when, datetime.datetime):
        return round(when.timestamp() * 1000)
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
        raise TypeError(f"{name} takes a datetime or a Unix time, not {when!r}")
    return round(when * unit_ms)


#: django-redis's client classes racefree stands in for (with SENTINELS,
#: the Sentinel one).
DJANGO_REDIS_CLIENTS = ("django_redis.client.DefaultClient", "django_redis.client.SentinelClient")
#: django-redis's connection factory for Sentinel (with SENTINELS).
SENTINEL_FACTORY = "django_redis.pool.SentinelConnectionFactory"


def django_redis_client(value: object) -> str:
    if value not in DJANGO_REDIS_CLIENTS:
        raise ValueError(f"{' or '.join(map(repr, DJANGO_REDIS_CLIENTS))} (sharded and herd clients are not "
                         "supported)")
    return str(value)


def connection_factory(value: object) -> str | None:
    # django-redis's Sentinel setup names its factory; racefree's pool is its own.
    if value is not None and value != SENTINEL_FACTORY:
        raise ValueError(f"None or {SENTINEL_FACTORY!r} (racefree has its own pool, in Rust)")
    return value


def sentinel_list(value: object) -> list[str]:
    """django-redis's SENTINELS, ``[(host, port), ...]`` (or
    ``"host:port"`` strings), as the store takes servers."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError("a non-empty list of (host, port) pairs")
    servers = []
    for entry in value:
        host: object
        given_port: object
        if isinstance(entry, str):
            host, _, given_port = entry.rpartition(":")
            host = host.strip("[]")
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            host, given_port = entry
        else:
            raise ValueError("a non-empty list of (host, port) pairs")
        try:
            port = int(given_port)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ValueError("a non-empty list of (host, port) pairs with a number for each port") from None
        if not isinstance(host, str) or not host or not 0 < port < 65536:
            raise ValueError("a non-empty list of (host, port) pairs with a host and a port (1-65535)")
        servers.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if len(set(servers)) != len(servers):
        raise ValueError("a list of (host, port) pairs that names each Sentinel once")
    return servers


#: What SENTINEL_KWARGS may set: the Sentinels' own login (redis-py's names).
SENTINEL_LOGIN = ("username", "password")


def sentinel_kwargs(value: object) -> dict[str, str | None]:
    if not isinstance(value, dict) or set(value) - set(SENTINEL_LOGIN):
        raise ValueError(f"a dict of the Sentinels' {' and '.join(SENTINEL_LOGIN)}")
    login = {name: value.get(name) for name in SENTINEL_LOGIN}
    if not all(item is None or (isinstance(item, str) and item) for item in login.values()):
        raise ValueError(f"a dict whose {' and '.join(SENTINEL_LOGIN)} are non-empty strs")
    if login["username"] is not None and login["password"] is None:
        raise ValueError("a dict with a password for its username")
    return login


OPTIONS = [
    Option("CONNECT_TIMEOUT", 1.0, positive_number,
           aliases=("socket_connect_timeout", "SOCKET_CONNECT_TIMEOUT"), store=True),
    Option("IO_TIMEOUT", 1.0, positive_number, aliases=("socket_timeout", "SOCKET_TIMEOUT"), store=True),
    Option("POOL_SIZE", 32, non_negative_int, store=True),
    Option("MAX_CONNECTIONS", None, optional(positive_int), aliases=("max_connections",), store=True),
    Option("IDLE_TIMEOUT", 60.0, positive_number, store=True),
    Option("SPIN_WAIT", 0.00005, non_negative_number, store=True),
    Option("TLS", None, tls_settings, store=True, secret=True),
    Option("USERNAME", None, optional(text), aliases=("username",), store=True),
    Option("PASSWORD", None, optional(text), aliases=("password",), store=True, secret=True),
    Option("DB", 0, database, aliases=("db",), store=True),
    Option("CLIENT_NAME", None, optional(client_name), aliases=("client_name",), store=True),
    Option("READ_FROM_REPLICAS", True, boolean, store=True),
    Option("COMBINE_CALLS", True, boolean, store=True),
    # LOCATION names seed nodes of a Redis Cluster (also said by a
    # redis+cluster:// or rediss+cluster:// URL).
    Option("CLUSTER", False, boolean, store=True),
    # LOCATION names a service (redis://service/db) whose primary these
    # Redis Sentinels name, as in django-redis.
    Option("SENTINELS", None, optional(sentinel_list)),
    Option("SENTINEL_KWARGS", None, optional(sentinel_kwargs)),
    Option("SENTINEL_CHECK_INTERVAL", 1.0, positive_number),
    Option("IGNORE_EXCEPTIONS", False, boolean),
    *serializer_options(),
    *stampede_options(),
    # Django's RedisCache spellings of what racefree does anyway.
    Option("serializer", None, django_serializer),
    Option("pool_class", None, stock_class_only),
    Option("parser_class", None, stock_class_only),
    # django-redis's.
    Option("CLIENT_CLASS", "django_redis.client.DefaultClient", django_redis_client),
    Option("REVERSE_KEY_FUNCTION", None, optional(reverse_key_function)),
    Option("CONNECTION_FACTORY", None, connection_factory),
]

UNSUPPORTED = {
    "MAX_ENTRIES": "Redis evicts by its own maxmemory-policy",
    "CULL_FREQUENCY": "Redis evicts by its own maxmemory-policy",
    "retry_on_timeout": "a command that timed out may have run; racefree never sends it twice",
    "COMPRESSOR": "use COMPRESS ('zlib' or 'zstd'); django-redis's compressed values are not readable by "
    "Django's RedisCache either",
    "CONNECTION_POOL_CLASS": "racefree has its own pool, in Rust",
    "REDIS_CLIENT_CLASS": "racefree has its own client, in Rust",
    "REDIS_CLIENT_KWARGS": "racefree has its own client, in Rust",
    "PARSER_CLASS": "racefree has its own parser, in Rust",
    "CLOSE_CONNECTION": "the pool is per process and kept between requests",
    "REPLICA_READ_ONLY": "replicas only ever take reads (READ_FROM_REPLICAS says whether they take any)",
}

#: django-redis's CONNECTION_POOL_KWARGS, by the option each sets.
POOL_KWARGS = {
    "max_connections": "MAX_CONNECTIONS",
    "socket_timeout": "IO_TIMEOUT",
    "socket_connect_timeout": "CONNECT_TIMEOUT",
    "client_name": "CLIENT_NAME",
    "username": "USERNAME",
    "password": "PASSWORD",
    "db": "DB",
}
#: redis-py's TLS keywords, by the key of OPTIONS TLS each sets.
SSL_KEYWORDS = {"ssl_ca_certs": "CA_FILE", "ssl_certfile": "CERT_FILE", "ssl_keyfile": "KEY_FILE",
                "ssl_password": "KEY_PASSWORD"}
SSL_CHECKS = ("ssl_cert_reqs", "ssl_check_hostname")
#: What a URL's query may set (redis-py's names), by option.
URL_QUERY = {"db": "DB", "socket_timeout": "IO_TIMEOUT", "socket_connect_timeout": "CONNECT_TIMEOUT",
             "client_name": "CLIENT_NAME", "max_connections": "MAX_CONNECTIONS"}

_clients: ProcessRegistry[tuple[object, ...], RedisClient] = ProcessRegistry()
# The shared (checked) aincr, added to RacefreeCache by with_async_twins.
_racefree_aincr = getattr(RacefreeCache, "aincr")


def split_location(location: str | Iterable[str]) -> list[str]:
    """LOCATION as a list of URLs: a list, or a ``;``/``,``-separated string."""
    if isinstance(location, str):
        return [url.strip() for url in re.split("[;,]", location)]
    return list(location)


def _query_value(option: str, value: str) -> Any:
    if option in ("IO_TIMEOUT", "CONNECT_TIMEOUT"):
        return float(value)
    if option in ("DB", "MAX_CONNECTIONS"):
        return int(value)
    return value


#: The URL schemes of a Redis Cluster's nodes, by the scheme of one server.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def parse_url(url: object) -> tuple[str, bool, dict[str, Any]]:
    """One LOCATION URL: the server as the store takes it (``host:port``,
    ``unix:/path``), whether it is TLS, and the options it sets
    (credentials, database, query arguments; CLUSTER for a
    ``redis+cluster://`` or ``rediss+cluster://`` URL). ValueError if it
    is not one of Django's forms or a cluster one."""
    if not isinstance(url, str):
        raise ValueError(f"a Redis URL, not {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme
    options: dict[str, Any] = {}
    if scheme in CLUSTER_SCHEMES:
        scheme = CLUSTER_SCHEMES[scheme]
        options["CLUSTER"] = True
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"a redis://, rediss://, unix://, redis+cluster:// or rediss+cluster:// URL, not {url!r}")
    if parts.username:
        options["USERNAME"] = unquote(parts.username)
    if parts.password:
        options["PASSWORD"] = unquote(parts.password)
    for name, values in parse_qs(parts.query, strict_parsing=bool(parts.query)).items():
        if name not in URL_QUERY:
            raise ValueError(f"a Redis URL whose query takes {', '.join(URL_QUERY)} (not {name!r} in {url!r})")
        try:
            options[URL_QUERY[name]] = _query_value(URL_QUERY[name], values[-1])
        except ValueError:
            raise ValueError(f"a Redis URL with a number for {name} (not {values[-1]!r})") from None
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"a unix:// URL with a socket path, not {url!r}")
        return f"unix:{unquote(parts.path)}", False, options
    path = parts.path.strip("/")
    if path and "DB" not in options:
        if not path.isdigit():
            raise ValueError(f"a Redis URL whose path is a database number, not {url!r}")
        options["DB"] = int(path)
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"a Redis URL with a valid port, not {url!r}") from None
    if not host:
        raise ValueError(f"a Redis URL with a host, not {url!r}")
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}", scheme == "rediss", options


def _tls_from_keywords(given: dict[str, Any]) -> None:
    """redis-py's ssl_* keywords (Django's RedisCache passes OPTIONS to
    its pool) as OPTIONS TLS."""
    keywords = {name: given.pop(name) for name in [*SSL_KEYWORDS, *SSL_CHECKS, "ssl"] if name in given}
    if not keywords:
        return
    if given.get("TLS") is not None:
        raise ValueError("OPTIONS TLS, or redis-py's ssl_* keywords, not both")
    if keywords.pop("ssl", True) is False:
        return
    tls: dict[str, Any] = {SSL_KEYWORDS[name]: value for name, value in keywords.items() if name in SSL_KEYWORDS}
    requirement = keywords.get("ssl_cert_reqs", "required")
    if requirement in ("none", ssl.CERT_NONE, None):
        tls["VERIFY"] = "none"
    elif keywords.get("ssl_check_hostname", True) is False:
        tls["VERIFY"] = "ca"
    given["TLS"] = tls


def get_redis_connection(alias: str = "default", write: bool = True) -> Any:
    """django-redis's ``get_redis_connection``: the raw redis-py client of
    ``caches[alias]`` (see ``RedisCache.client``)."""
    from django.core.cache import caches

    get_client = getattr(getattr(caches[alias], "client", None), "get_client", None)
    if get_client is None:
        raise NotImplementedError(f"CACHES[{alias!r}] is not a Redis backend: it has no raw Redis client")
    return get_client(write)


@with_async_twins
class RedisCache(RedisDataStructures, ServerPools, RacefreeCache, BaseCache):
    options_spec = OPTIONS
    refused_options = UNSUPPORTED
    server_kind = "Redis"
    client_class = RedisClient
    login_hint = "Set the URL's user and password, or OPTIONS USERNAME and PASSWORD."
    _store: RedisClient

    def __init__(self, server: str | Sequence[str], params: dict[str, Any]) -> None:
        path = backend_path(self)
        params = {**params, "OPTIONS": self._options_with_location(path, server, params.get("OPTIONS"))}
        options = self._configure(params)
        super().__init__(params)
        # Integers are digits INCRBY counts, unless values are JSON or
        # signed: then incr reads, adds and writes back with a
        # compare-and-set script.
        self._counts_natively = options["SERIALIZER"] == "pickle" and not self._serializer.signs
        self._items_have_flags = False
        # Without compression a value is what pickle.dumps writes, as it is.
        self._writes_plain_pickles = self._serializer.compression is None
        self._pickle_protocol = self._serializer.pickle_protocol
        # Set members are compared byte for byte: pickled as django-redis
        # pickles them (pickle's default protocol) unless a protocol is set.
        given_protocol = "PICKLE_PROTOCOL" in params["OPTIONS"]
        self._member_protocol = self._pickle_protocol if given_protocol else pickle.DEFAULT_PROTOCOL
        if self._counts_natively:
            self._encode = self._encoded_like_django
            self._decode_or = self._decoded_like_django
        else:
            self._encode = self._serializer.dumps
            self._decode_or = self._serializer.load_or
        self._write_args = self.get_backend_timeout
        self._reverse_key = options["REVERSE_KEY_FUNCTION"] or default_reverse_key
        self._options = options
        self._sentinel = self._sentinel_settings(path, options, params["OPTIONS"])
        if self._sentinel is not None:
            self._servers = options["SENTINELS"]
        config = self._store_settings()
        try:
            self._store = _clients.get(
                (tuple(self._servers), *sorted((name, repr(value)) for name, value in config.items())),
                lambda: RedisClient(self._servers, config),
            )
        except ValueError as exc:
            raise ImproperlyConfigured(f"{path}: {exc}") from None

    def _sentinel_settings(self, path: str, options: dict[str, Any], given: dict[str, Any]) -> dict[str, Any] | None:
        """The store's ``sentinel`` setting: the service and the Sentinels'
        login, or None without SENTINELS (then no Sentinel option may be set)."""
        sentinels = options["SENTINELS"]
        sentinel_only = {
            "SENTINEL_KWARGS": options["SENTINEL_KWARGS"] is not None,
            "CLIENT_CLASS": options["CLIENT_CLASS"] == DJANGO_REDIS_CLIENTS[1],
            "CONNECTION_FACTORY": options["CONNECTION_FACTORY"] is not None,
            "SENTINEL_CHECK_INTERVAL": "SENTINEL_CHECK_INTERVAL" in given,
        }
        if sentinels is None:
            if needing := [name for name, is_set in sentinel_only.items() if is_set]:
                raise ImproperlyConfigured(f"{path}: OPTIONS {', '.join(needing)} need OPTIONS['SENTINELS']")
            return None
        if options["CLUSTER"]:
            raise ImproperlyConfigured(f"{path}: SENTINELS or CLUSTER, not both (Sentinel names one primary)")
        login = options["SENTINEL_KWARGS"] or {}
        return {"service": self._sentinel_service, "username": login.get("username"),
                "password": login.get("password"), "check_interval": options["SENTINEL_CHECK_INTERVAL"]}

    def _options_with_location(self, path: str, location: str | Sequence[str], given: object) -> Any:
        """OPTIONS with what LOCATION's URLs set (they win, as in redis-py),
        django-redis's CONNECTION_POOL_KWARGS and SERIALIZER paths, and
        redis-py's ssl_* keywords, read into racefree's options."""
        if given is None:
            given = {}
        if not isinstance(given, dict):
            return given  # read_options says what is wrong
        options = dict(given)
        self._sentinel_service: str | None = None
        try:
            if options.get("SENTINELS") is not None:
                # The Sentinels are the servers (read with the options).
                self._servers = []
                from_urls = self._read_service(location)
            else:
                self._servers, from_urls = self._read_location(location)
            pool_kwargs = options.pop("CONNECTION_POOL_KWARGS", None)
            if pool_kwargs is not None:
                if not isinstance(pool_kwargs, dict):
                    raise ValueError("OPTIONS['CONNECTION_POOL_KWARGS'] must be a dict")
                for name, value in pool_kwargs.items():
                    if name in SSL_KEYWORDS or name in SSL_CHECKS or name == "ssl":
                        options[name] = value
                    elif name in POOL_KWARGS:
                        options[POOL_KWARGS[name]] = value
                    else:
                        raise ValueError(f"OPTIONS['CONNECTION_POOL_KWARGS'][{name!r}] is not supported; "
                                         f"known: {', '.join(sorted([*POOL_KWARGS, *SSL_KEYWORDS, *SSL_CHECKS]))}")
            serializer = options.get("SERIALIZER")
            if isinstance(serializer, str) and serializer in DJANGO_REDIS_SERIALIZERS:
                options["SERIALIZER"] = DJANGO_REDIS_SERIALIZERS[serializer]
            if "PICKLE_VERSION" in options:
                options["PICKLE_PROTOCOL"] = options.pop("PICKLE_VERSION")
            _tls_from_keywords(options)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{path}: {exc}") from None
        if from_urls.get("TLS") and options.get("TLS") not in (None, False):
            del from_urls["TLS"]  # rediss:// with OPTIONS TLS saying how
        self._sentinel_service = from_urls.pop("SENTINEL_SERVICE", None)
        for name, value in from_urls.items():
            # The URL's own spelling of an option replaces any spelling in OPTIONS.
            for alias in (name, *next(o.aliases for o in OPTIONS if o.name == name)):
                options.pop(alias, None)
            options[name] = value
        return options

    @staticmethod
    def _read_location(location: str | Sequence[str]) -> tuple[list[str], dict[str, Any]]:
        urls = split_location(location)
        if not urls or not all(urls):
            raise ValueError(f"LOCATION must name one or more Redis URLs, not {location!r}")
        servers, schemes, settings = [], set(), []
        for url in urls:
            server, tls, options = parse_url(url)
            servers.append(server)
            schemes.add(tls)
            settings.append(options)
        if len(schemes) > 1:
            raise ValueError("LOCATION mixes rediss:// and redis:// URLs: use TLS to every server, or to none")
        if len({"CLUSTER" in options for options in settings}) > 1:
            raise ValueError("LOCATION mixes cluster (redis+cluster://) and other URLs: list a cluster's nodes, "
                             "or a primary and its replicas")
        if any(options != settings[0] for options in settings):
            raise ValueError("the URLs in LOCATION set different credentials, databases or query arguments; "
                             "racefree uses one set for every server")
        if len(set(servers)) != len(servers):
            raise ValueError("a Redis server is listed twice in LOCATION")
        from_urls = dict(settings[0])
        if schemes == {True}:
            from_urls["TLS"] = True
        return servers, from_urls

    @staticmethod
    def _read_service(location: str | Sequence[str]) -> dict[str, Any]:
        """LOCATION with SENTINELS: django-redis's one URL naming the
        service (``redis://[user:password@]service[/db]``), read as the
        options it sets, the service's name as SENTINEL_SERVICE."""
        form = "with SENTINELS, LOCATION is one URL naming the service: redis://[user:password@]service[/db]"
        urls = split_location(location)
        if len(urls) != 1 or urlsplit(urls[0]).scheme not in ("redis", "rediss"):
            raise ValueError(f"{form} (or rediss://), not {location!r}")
        _server, tls, options = parse_url(urls[0])
        parts = urlsplit(urls[0])
        if parts.port is not None:
            raise ValueError(f"{form}, without a port (the Sentinels give the primary's), not {location!r}")
        # As written: urlsplit lowercases hostname, and service names are case-sensitive.
        options["SENTINEL_SERVICE"] = unquote(parts.netloc.rpartition("@")[2])
        if tls:
            options["TLS"] = True
        return options

    @property
    def client_servers(self) -> list[str]:
        return self._servers

    @property
    def client(self) -> RawClient:
        """django-redis's raw access: ``cache.client.get_client(write=True)``
        (what ``django_redis.get_redis_connection`` calls) is a redis-py
        client on the same servers, with the same credentials, database,
        TLS and timeouts."""
        return RawClient(self._servers, self._options, self._sentinel_service)

    def get_backend_timeout(self, timeout: float | None = DEFAULT_TIMEOUT) -> int | None:
        """Django's RedisCache's: whole seconds, 0 for a timeout below one
        second ("don't cache"), None for never; also None for inf or a TTL
        beyond what Redis can hold."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None or is_forever(timeout):
            return None
        if timeout <= 0:
            return 0
        return None if timeout > MAX_TTL else int(timeout)

    def lock_entry_timeout(self, lease: float) -> int:
        # Whole seconds, rounded up: a lock lives at least its lease.
        return max(1, math.ceil(lease))

    def _encoded_like_django(self, key: str, value: Any) -> bytes:
        """Django's RedisSerializer: an int (exactly) as its digits, which
        INCRBY counts, everything else pickled (compressed with COMPRESS).
        Used (as is ``_decoded_like_django``) only for unsigned pickles."""
        if type(value) is int:
            return b"%d" % value
        if self._writes_plain_pickles:
            return pickle.dumps(value, self._pickle_protocol)
        return self._serializer.dumps(key, value)

    def _decoded_like_django(self, default: Any, key: Any, data: bytes) -> Any:
        if data[:1] == b"\x80":
            # A pickle (protocol 2+; a compressed value starts with a mark):
            # what the serializer's loads would come to, without its steps.
            try:
                return pickle.loads(data)
            except Exception:
                log_unloadable(key)
                return default
        if data and data[0] in DIGIT_START:
            try:
                return int(data)
            except ValueError:
                pass
        return self._serializer.load_or(default, key, data)

    def incr(self, key: Any, delta: int = 1, version: int | None = None, ignore_key_check: bool = False) -> Any:
        """Django's ``incr`` (a missing key raises ValueError); with
        django-redis's ``ignore_key_check``, a missing key is created
        holding ``delta``, without expiry, as a bare ``INCRBY`` does."""
        if ignore_key_check:
            return self._incr_or_create(key, delta, version)
        return RacefreeCache.incr(self, key, delta, version)

    async def aincr(
        self, key: Any, delta: int = 1, version: int | None = None, ignore_key_check: bool = False
    ) -> Any:
        if ignore_key_check:
            return await self.a_incr_or_create(key, delta, version)
        return await _racefree_aincr(self, key, delta, version)

    def decr(self, key: Any, delta: int = 1, version: int | None = None, ignore_key_check: bool = False) -> Any:
        return self.incr(key, -delta, version, ignore_key_check)

    async def adecr(
        self, key: Any, delta: int = 1, version: int | None = None, ignore_key_check: bool = False
    ) -> Any:
        return await self.aincr(key, -delta, version, ignore_key_check)

    @store_operation
    def _incr_or_create(self, key: Any, delta: int, version: int | None) -> Generator[Any, Any, Any]:
        if self._counts_natively:
            made = self._key(key, version)
            try:
                return (yield self._store.incr_or_create, (made, delta))
            except CacheError as error:
                self._server_failed("incr", error)
                raise ValueError("Key '%s' not found" % made) from None
        # Values the server cannot count (JSON, signed): the checked incr,
        # and for a missing key an add of delta; whichever loses goes again
        # (a few times: a value that cannot be loaded reads as missing to
        # incr and as present to add).
        try:
            with failures_raised():
                for _ in range(5):
                    try:
                        return (yield RacefreeCache.incr, (self, key, delta, version))
                    except ValueError:
                        pass
                    if (yield self.add, (key, delta, None, version)):
                        return delta
        except CacheError as error:
            self._server_failed("incr", error)
        raise ValueError("Key '%s' not found" % self._key(key, version))

    if TYPE_CHECKING:
        # Added by with_async_twins.
        async def a_incr_or_create(self, key: Any, delta: int, version: int | None) -> Any: ...

    # django-redis's key-space methods, with Redis's own expiry rules
    # (not Django's timeouts), so code written against django-redis runs
    # unchanged; each has an async twin.

    @store_operation
    def _ms_left(self, operation: str, key: Any, version: int | None) -> Generator[Any, Any, Any]:
        """``PTTL`` as django-redis gives it: None if the key never expires
        (-1), 0 if it is missing (-2), else milliseconds."""
        key = self._key(key, version)
        try:
            ms = yield self._store.pttl, (key,)
        except CacheError as error:
            self._server_failed(operation, error)
            return None
        return None if ms == -1 else max(ms, 0)

    @store_operation
    def ttl(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Seconds the key has left, rounded as Redis's ``TTL``: None if it
        never expires, 0 if it is missing."""
        ms = yield self._ms_left, ("ttl", key, version)
        return None if ms is None else (ms + 500) // 1000

    @store_operation
    def pttl(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Milliseconds the key has left: None if it never expires, 0 if
        it is missing."""
        return (yield self._ms_left, ("pttl", key, version))

    @store_operation
    def _new_expiry(
        self, operation: str, key: Any, version: int | None, after_ms: int | None, at_ms: int | None
    ) -> Generator[Any, Any, Any]:
        """``PEXPIRE`` (``after_ms``), ``PEXPIREAT`` (``at_ms``) or, with
        neither, ``PERSIST``: Redis's answer, or False for a failure
        IGNORE_EXCEPTIONS ignores."""
        key = self._key(key, version)
        try:
            if after_ms is not None:
                return (yield self._store.pexpire, (key, after_ms))
            if at_ms is not None:
                return (yield self._store.pexpire_at, (key, at_ms))
            return (yield self._store.persist, (key,))
        except CacheError as error:
            self._server_failed(operation, error)
            return False

    @store_operation
    def expire(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        """Expire the key ``timeout`` seconds (or a timedelta; by default
        the backend's TIMEOUT) from now; True if it exists. 0 or less
        deletes it, as in Redis."""
        ms = seconds_to_ms("expire", self.default_timeout if timeout is DEFAULT_TIMEOUT else timeout)
        return (yield self._new_expiry, ("expire", key, version, ms, None))

    @store_operation
    def pexpire(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Generator[Any, Any, Any]:
        """``expire`` in milliseconds (an int or a timedelta; by default
        the backend's TIMEOUT)."""
        if timeout is DEFAULT_TIMEOUT:
            ms = seconds_to_ms("pexpire", self.default_timeout)
        else:
            ms = ms_count("pexpire", timeout)
        return (yield self._new_expiry, ("pexpire", key, version, ms, None))

    @store_operation
    def expire_at(self, key: Any, when: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Expire the key at ``when`` (a datetime, or Unix seconds); True
        if it exists. A past time deletes it."""
        at = unix_ms("expire_at", when, 1000)
        return (yield self._new_expiry, ("expire_at", key, version, None, at))

    @store_operation
    def pexpire_at(self, key: Any, when: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """``expire_at`` with a datetime or Unix milliseconds."""
        at = unix_ms("pexpire_at", when, 1)
        return (yield self._new_expiry, ("pexpire_at", key, version, None, at))

    @store_operation
    def persist(self, key: Any, version: int | None = None) -> Generator[Any, Any, Any]:
        """Remove the key's expiry: True if it had one (Redis's
        ``PERSIST``; ``touch(key, None)`` says True for any existing key)."""
        return (yield self._new_expiry, ("persist", key, version, None, None))

    def _key_pattern(self, pattern: str, version: int | None, prefix: str | None = None) -> str:
        """A glob over stored keys: KEY_PREFIX (or ``prefix``) and the
        version literally, ``pattern`` as a glob (django-redis's rule)."""
        prefix = glob_escape(self.key_prefix if prefix is None else prefix)
        made: str = self.key_func(pattern, prefix, glob_escape(str(self.version if version is None else version)))
        return made

    def iter_keys(self, search: str, itersize: int | None = None, version: int | None = None) -> Iterator[str]:
        """The keys (as the application gave them) that match the glob
        ``search``, ``SCAN``ned ``itersize`` at a time from every primary.
        As with ``SCAN``, a key may come twice if the server resizes its
        table meanwhile."""
        pattern = self._key_pattern(search, version)
        count = scan_count(itersize)
        try:
            for node in range(self._store.primaries()):
                cursor = 0
                while True:
                    cursor, found = self._store.scan(node, cursor, pattern, count)
                    yield from map(self._reverse_key, found)
                    if not cursor:
                        break
        except CacheError as error:
            self._server_failed("iter_keys", error)

    async def aiter_keys(
        self, search: str, itersize: int | None = None, version: int | None = None
    ) -> AsyncIterator[str]:
        """``iter_keys``, natively async."""
        pattern = self._key_pattern(search, version)
        count = scan_count(itersize)
        try:
            for node in range(await self._store.aprimaries()):
                cursor = 0
                while True:
                    cursor, found = await self._store.ascan(node, cursor, pattern, count)
                    for key in found:
                        yield self._reverse_key(key)
                    if not cursor:
                        break
        except CacheError as error:
            self._server_failed("iter_keys", error)

    def keys(self, search: str, version: int | None = None) -> list[str]:
        """Every key (as given) matching the glob ``search``, each once
        (found with ``SCAN``, never the blocking ``KEYS``)."""
        return list(dict.fromkeys(self.iter_keys(search, version=version)))

    async def akeys(self, search: str, version: int | None = None) -> list[str]:
        return list(dict.fromkeys([key async for key in self.aiter_keys(search, version=version)]))

    @store_operation
    def delete_pattern(
        self, pattern: str, version: int | None = None, prefix: str | None = None, itersize: int | None = None
    ) -> Generator[Any, Any, Any]:
        """Delete every key matching the glob ``pattern`` (KEY_PREFIX, or
        ``prefix``, and the version taken literally), ``SCAN``ning
        ``itersize`` keys at a time on every primary; how many it deleted.
        Concurrent calls count each key once."""
        made = self._key_pattern(pattern, version, prefix)
        try:
            return (yield self._store.delete_matching, (made, scan_count(itersize)))
        except CacheError as error:
            self._server_failed("delete_pattern", error)
            return 0

    def _store_settings(self) -> dict[str, Any]:
        return {**store_settings(self._options, OPTIONS), "sentinel": self._sentinel}

    def _probe(self, client: Any) -> object:
        # A cluster's seed is asked for its slot map (a key's command would
        # go to whichever node serves the key); a Sentinel for the primary,
        # which is then asked whether it is one.
        if self._options["CLUSTER"] or self._sentinel is not None:
            return client.nodes()
        return client.has_key("racefree:check")
