"""OPTIONS["TLS"] of the network backends (memcached, Redis): what the
Rust stores' rustls configuration takes, from a dict or from an
``ssl.SSLContext`` (pymemcache's ``tls_context``)."""

import os
import ssl
from typing import Any

# OPTIONS["TLS"] as a dict: these keys, each optional.
TLS_KEYS = ("VERIFY", "CA_FILE", "CERT_FILE", "KEY_FILE", "KEY_PASSWORD", "SERVER_NAME")
# How much of the server's certificate is checked: its chain and name,
# its chain only, or nothing (encryption only).
VERIFY_LEVELS = ("full", "ca", "none")
TLS_SHAPE = f"True, an ssl.SSLContext, or a dict of {', '.join(TLS_KEYS)}"


def tls_settings(value: object) -> dict[str, Any] | None:
    """OPTIONS["TLS"] (or pymemcache's ``tls_context``) as the store takes
    it: every key present, ``None`` where not set."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if isinstance(value, ssl.SSLContext):
        return _from_ssl_context(value)
    if not isinstance(value, dict):
        raise ValueError(TLS_SHAPE)
    for key in value:
        if key not in TLS_KEYS:
            raise ValueError(f"{TLS_SHAPE} (unknown key {key!r})")
    verify = value.get("VERIFY", "full")
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"{TLS_SHAPE}, with VERIFY one of {', '.join(map(repr, VERIFY_LEVELS))} (not {verify!r})")
    settings = {"verify": verify, "ca_certs": None}
    for key in TLS_KEYS[1:]:
        given = value.get(key)
        if key.endswith("_FILE") and isinstance(given, os.PathLike):
            given = os.fspath(given)
        if given is not None and (not isinstance(given, str) or not given):
            # KEY_PASSWORD's value is never shown.
            shown = "" if key == "KEY_PASSWORD" else f", not {given!r}"
            raise ValueError(f"{TLS_SHAPE}, with {key} a non-empty str{shown}")
        settings[key.lower()] = given
    if verify == "none" and settings["ca_file"] is not None:
        raise ValueError(f"{TLS_SHAPE}, with CA_FILE only when VERIFY is 'full' or 'ca' ('none' checks nothing)")
    if (settings["cert_file"] is None) != (settings["key_file"] is None):
        raise ValueError(f"{TLS_SHAPE}, with CERT_FILE and KEY_FILE together (a client certificate and its key)")
    if settings["key_password"] is not None and settings["key_file"] is None:
        raise ValueError(f"{TLS_SHAPE}, with KEY_PASSWORD only for a KEY_FILE")
    return settings


def _from_ssl_context(context: ssl.SSLContext) -> dict[str, Any]:
    """What an ``ssl.SSLContext`` (pymemcache's ``tls_context``) says that
    rustls can do: the check level and the CA certificates loaded into it
    (none loaded: the system's). A client certificate loaded into it
    cannot be read back: give CERT_FILE and KEY_FILE in a TLS dict instead."""
    if context.protocol == ssl.PROTOCOL_TLS_SERVER:
        raise ValueError(f"{TLS_SHAPE}; this ssl.SSLContext is a server's (PROTOCOL_TLS_SERVER)")
    too_old = (ssl.TLSVersion.SSLv3, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    if context.maximum_version in too_old:
        raise ValueError(f"{TLS_SHAPE}; this ssl.SSLContext allows nothing newer than "
                         f"{context.maximum_version.name}, and racefree speaks TLS 1.2 and 1.3 only")
    if context.verify_mode == ssl.CERT_NONE:
        verify = "none"
    else:
        verify = "full" if context.check_hostname else "ca"
    roots = context.get_ca_certs(binary_form=True) if verify != "none" else []
    return {"verify": verify, "ca_file": None, "ca_certs": roots or None, "cert_file": None, "key_file": None,
            "key_password": None, "server_name": None}
