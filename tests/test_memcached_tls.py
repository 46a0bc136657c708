"""memcached over TLS and with its login (``-Y`` authfile), against real
memcached processes started with ``-Z`` and ``-Y``: round trips, the
failures that must be fast and say their cause, client certificates,
no reconnect storm on refused credentials, faults and threads."""

import os
import socket
import ssl
import threading
import time
import warnings

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from support.load import run_threads
from support.secure_memcached import PASSWORD, USER, SecureMemcached, write_authfile
from support.servers import Memcached

from racefree.backends.memcached import MemcachedCache
from racefree.checks import check_caches
from racefree.exceptions import CacheAuthenticationError, CacheConnectionError

# Long enough that a failure which waited for one would show.
PATIENT = {"CONNECT_TIMEOUT": 3.0, "IO_TIMEOUT": 3.0}
FAST = 1.0


def racefree(location, **options):
    return MemcachedCache(location, {"OPTIONS": options})


@pytest.fixture(scope="module")
def tls_memcached():
    """TLS only, no login."""
    server = SecureMemcached(login=False)
    yield server
    server.close()


@pytest.fixture(scope="module")
def secure_memcached():
    """TLS and a login."""
    server = SecureMemcached()
    yield server
    server.close()


@pytest.fixture(scope="module")
def login_memcached(tmp_path_factory):
    """Plain text with a login."""
    authfile = write_authfile(str(tmp_path_factory.mktemp("authfile")), {USER: PASSWORD, "other": "pw"})
    server = Memcached(authfile=authfile)
    yield server
    server.close()


@pytest.fixture(scope="module")
def client_cert_memcached(authority):
    """TLS that requires a client certificate issued by ``authority``."""
    cert, key = authority.server(name="mc-server")
    server = Memcached(tls=(cert, key), ca_cert=authority.cert)
    yield server
    server.close()


def fails_fast(call, exception, *causes):
    """``call()`` raises ``exception`` well within the timeouts, with a
    message naming each of ``causes``; returns the message."""
    started = time.monotonic()
    with pytest.raises(exception) as raised:
        call()
    elapsed = time.monotonic() - started
    assert elapsed < FAST, f"took {elapsed:.3f} s: {raised.value}"
    message = str(raised.value)
    for cause in causes:
        assert cause in message, message
    return message


VALUES = {
    "str": "Iñtërnâtiônàlizætiøn",
    "bytes": b"\x00\x01binary\xff",
    "int": 42,
    "big_int": 2**70,
    "negative": -7,
    "float": 1.5,
    "none": None,
    "dict": {"a": [1, 2, (3, 4)], "b": None},
    "bool": True,
    # Many TLS records, and more than rustls buffers at once.
    "large": os.urandom(900_000),
}


@pytest.mark.parametrize("server", ["tls_memcached", "secure_memcached"])
def test_round_trip_of_every_value_kind_and_operation(server, request):
    server = request.getfixturevalue(server)
    cache = racefree(server.location, **server.options())
    for name, value in VALUES.items():
        cache.set(name, value)
        assert cache.get(name, "MISSING") == value, name
    assert cache.get_many(list(VALUES)) == VALUES
    cache.set_many({f"many{i}": i for i in range(300)})
    assert cache.get_many([f"many{i}" for i in range(300)]) == {f"many{i}": i for i in range(300)}
    cache.delete_many([f"many{i}" for i in range(150)])
    assert len(cache.get_many([f"many{i}" for i in range(300)])) == 150
    assert cache.add("added", 1) and not cache.add("added", 2)
    assert cache.incr("int", 8) == 50 and cache.decr("int", 10) == 40
    assert cache.touch("added", 60) and cache.has_key("added")
    assert cache.delete("added") and not cache.has_key("added")
    cache.clear()
    assert cache.get("str") is None


def test_tls_connections_are_pooled_not_redialed(tls_memcached):
    cache = racefree(tls_memcached.location, **tls_memcached.options())
    cache.set("k", "v")
    # Time for whatever the server sends after the handshake (TLS 1.3
    # session tickets) to arrive while the connection is idle.
    time.sleep(0.2)
    before = tls_memcached.stats()["total_connections"]
    for _ in range(100):
        assert cache.get("k") == "v"
        cache.close()
    # Only the stats() connection itself is new.
    assert tls_memcached.stats()["total_connections"] - before == 1
    assert cache.stats()["servers"][tls_memcached.location]["connects"] == 1


def test_a_restarted_tls_server_costs_no_failed_call(tls_memcached):
    cache = racefree(tls_memcached.location, **tls_memcached.options())
    cache.set("k", "v")
    tls_memcached.server.restart()
    cache.set("k", "again")
    assert cache.get("k") == "again"


def test_idle_tls_connections_the_server_closed_are_not_reused(authority):
    cert, key = authority.server(name="idle-server")
    # memcached closes connections idle for a second (with a TLS
    # close_notify), within a few seconds.
    server = Memcached(tls=(cert, key), extra_args=["-o", "idle_timeout=1"])
    try:
        cache = racefree(server.location, TLS={"CA_FILE": authority.cert})
        cache.set("k", "v")
        deadline = time.monotonic() + 10
        while server.stats()["idle_kicks"] == 0:
            assert time.monotonic() < deadline, "memcached kept the idle connection"
            time.sleep(0.2)
        assert cache.get("k") == "v"
        assert cache.stats()["servers"][server.location]["connects"] == 2
    finally:
        server.close()


# -- Failures: fast, and saying why -------------------------------------------------


def test_a_wrong_ca_fails_fast_and_says_so(tls_memcached, other_authority):
    cache = racefree(tls_memcached.location, TLS={"CA_FILE": other_authority.cert}, **PATIENT)
    fails_fast(lambda: cache.get("k"), CacheConnectionError, "certificate was rejected", "UnknownIssuer")


def test_a_wrong_server_name_fails_fast_and_says_so(tls_memcached):
    tls = {"CA_FILE": tls_memcached.authority.cert, "SERVER_NAME": "elsewhere.example"}
    cache = racefree(tls_memcached.location, TLS=tls, **PATIENT)
    fails_fast(lambda: cache.get("k"), CacheConnectionError, "not valid for name", "elsewhere.example")
    # VERIFY "ca" checks the chain, not the name; "none" checks nothing.
    assert racefree(tls_memcached.location, TLS={**tls, "VERIFY": "ca"}).get("never-set") is None
    assert racefree(tls_memcached.location, TLS={"VERIFY": "none"}).get("never-set") is None


def test_full_verification_against_the_system_roots_refuses_a_private_ca(tls_memcached):
    cache = racefree(tls_memcached.location, TLS=True, **PATIENT)
    fails_fast(lambda: cache.get("k"), CacheConnectionError, "certificate was rejected")


def test_a_plain_text_client_on_a_tls_port_fails_fast_and_says_so(tls_memcached, secure_memcached):
    cache = racefree(tls_memcached.location, **PATIENT)
    fails_fast(lambda: cache.get("k"), CacheConnectionError, "TLS")
    # With a login the first bytes are the connection's check, not a request.
    cache = racefree(secure_memcached.location, USERNAME=USER, PASSWORD=PASSWORD, **PATIENT)
    fails_fast(lambda: cache.set("k", 1), CacheConnectionError, "TLS")


def test_a_tls_client_on_a_plain_port_fails_fast_and_says_so(memcached, tls_memcached):
    cache = racefree(memcached.location, TLS={"CA_FILE": tls_memcached.authority.cert}, **PATIENT)
    fails_fast(lambda: cache.get("k"), CacheConnectionError, "TLS", "-Z")


# -- Client certificates ------------------------------------------------------------


def test_a_client_certificate_is_accepted(client_cert_memcached, authority):
    cert, key = authority.client("racefree-client")
    tls = {"CA_FILE": authority.cert, "CERT_FILE": cert, "KEY_FILE": key}
    cache = racefree(client_cert_memcached.location, TLS=tls)
    cache.set("k", "v")
    assert cache.get("k") == "v"


def test_an_encrypted_client_key_is_read_with_its_password(client_cert_memcached, authority):
    cert, key = authority.client("racefree-encrypted")
    encrypted = authority.encrypted(key, "key pass")
    tls = {"CA_FILE": authority.cert, "CERT_FILE": cert, "KEY_FILE": encrypted, "KEY_PASSWORD": "key pass"}
    racefree(client_cert_memcached.location, TLS=tls).set("k", "v")
    with pytest.raises(ImproperlyConfigured, match="wrong password") as raised:
        racefree(client_cert_memcached.location, TLS={**tls, "KEY_PASSWORD": "not it"})
    assert "not it" not in str(raised.value)


def test_a_missing_client_certificate_is_refused(client_cert_memcached, authority):
    cache = racefree(client_cert_memcached.location, TLS={"CA_FILE": authority.cert}, **PATIENT)
    fails_fast(lambda: cache.get("k"), CacheConnectionError, "client certificate")


def test_a_client_certificate_of_another_ca_is_refused(client_cert_memcached, authority, other_authority):
    cert, key = other_authority.client("stranger")
    tls = {"CA_FILE": authority.cert, "CERT_FILE": cert, "KEY_FILE": key}
    cache = racefree(client_cert_memcached.location, TLS=tls, **PATIENT)
    fails_fast(lambda: cache.get("k"), CacheConnectionError, "refused the TLS handshake")


# -- Login ---------------------------------------------------------------------


def test_the_right_credentials_work(login_memcached):
    cache = racefree(login_memcached.location, USERNAME=USER, PASSWORD=PASSWORD)
    cache.set("k", {"v": 1})
    assert cache.get("k") == {"v": 1}
    other = racefree(login_memcached.location, USERNAME="other", PASSWORD="pw")
    assert other.get("k") == {"v": 1}


def test_wrong_credentials_fail_once_per_call_without_a_reconnect_storm(login_memcached):
    cache = racefree(login_memcached.location, USERNAME=USER, PASSWORD="wrong-password", **PATIENT)
    before = login_memcached.stats()["total_connections"]
    started = time.monotonic()
    for _ in range(20):
        message = fails_fast(lambda: cache.get("k"), CacheAuthenticationError, "rejected the credentials", USER)
        assert "wrong-password" not in message
    errors = run_threads(8, lambda _: [fails_fast(lambda: cache.set("k", 1), CacheAuthenticationError)
                                       for _ in range(50)])
    assert errors == []
    # 420 refused calls: one dial a second at most (the refusal is
    # remembered for a second), and the stats() connection.
    dials = login_memcached.stats()["total_connections"] - before - 1
    assert 1 <= dials <= 1 + int(time.monotonic() - started), dials
    time.sleep(1.1)
    fails_fast(lambda: cache.get("k"), CacheAuthenticationError)
    assert login_memcached.stats()["total_connections"] - before - 2 == dials + 1


def test_a_client_without_credentials_is_told_to_set_them(login_memcached):
    cache = racefree(login_memcached.location, **PATIENT)
    before = login_memcached.stats()["total_connections"]
    started = time.monotonic()
    for _ in range(20):
        fails_fast(lambda: cache.get("k"), CacheAuthenticationError, "requires authentication", "USERNAME")
    # One connection was refused its request; the refusal is remembered.
    dials = login_memcached.stats()["total_connections"] - before - 1
    assert 1 <= dials <= 1 + int(time.monotonic() - started), dials


def test_credentials_are_not_sent_to_a_server_without_a_login(fresh_memcached):
    cache = racefree(fresh_memcached.location, USERNAME=USER, PASSWORD=PASSWORD)
    assert cache.get("k") is None
    # memcached without -Y would have stored the login as an item.
    assert fresh_memcached.stats()["curr_items"] == 0


def test_tls_and_login_together(secure_memcached):
    cache = racefree(secure_memcached.location, **secure_memcached.options())
    cache.set("k", "v")
    assert cache.get("k") == "v"
    wrong = racefree(secure_memcached.location, **secure_memcached.options(PASSWORD="nope"), **PATIENT)
    fails_fast(lambda: wrong.get("k"), CacheAuthenticationError, "rejected the credentials")
    anonymous = racefree(secure_memcached.location, TLS={"CA_FILE": secure_memcached.authority.cert}, **PATIENT)
    fails_fast(lambda: anonymous.get("k"), CacheAuthenticationError, "requires authentication")


def test_ignore_exceptions_reads_refused_credentials_as_a_miss(login_memcached):
    cache = racefree(login_memcached.location, USERNAME=USER, PASSWORD="wrong", IGNORE_EXCEPTIONS=True)
    assert cache.get("k", "default") == "default"


# -- Faults and threads over TLS ----------------------------------------------------


@pytest.mark.cross_version
def test_eight_threads_share_one_tls_client_exactly(secure_memcached):
    cache = racefree(secure_memcached.location, **secure_memcached.options())
    cache.set("hits", 0)
    mismatches = []

    def work(index):
        for n in range(500):
            cache.incr("hits")
            key = f"t{index}-{n % 20}"
            value = f"{key}:{n}" * (1 + n % 50)
            cache.set(key, value)
            got = cache.get(key)
            if got != value:
                mismatches.append((key, got))

    assert run_threads(8, work) == []
    assert mismatches == []
    assert cache.get("hits") == 8 * 500


# -- Settings ------------------------------------------------------------------------


def test_tls_settings_are_checked_at_startup(tls_memcached, tmp_path):
    location = tls_memcached.location
    ca = tls_memcached.authority.cert
    for bad, says in [
        ("yes", "True, an ssl.SSLContext, or a dict"),
        ({"CA": ca}, "unknown key 'CA'"),
        ({"VERIFY": "strict"}, "VERIFY one of"),
        ({"VERIFY": "none", "CA_FILE": ca}, "CA_FILE only when VERIFY"),
        ({"CERT_FILE": ca}, "CERT_FILE and KEY_FILE together"),
        ({"CA_FILE": 7}, "CA_FILE a non-empty str"),
    ]:
        with pytest.raises(ImproperlyConfigured, match=says):
            racefree(location, TLS=bad)
    # Files are read when the backend is built, not at the first request.
    with pytest.raises(ImproperlyConfigured, match="/nonexistent/ca.pem"):
        racefree(location, TLS={"CA_FILE": "/nonexistent/ca.pem"})
    unreadable = tmp_path / "not-a-cert.pem"
    unreadable.write_text("garbage\n")
    with pytest.raises(ImproperlyConfigured, match="no PEM certificate"):
        racefree(location, TLS={"CA_FILE": str(unreadable)})
    with pytest.raises(ImproperlyConfigured, match="cannot read the key"):
        racefree(location, TLS={"CA_FILE": ca, "CERT_FILE": ca, "KEY_FILE": str(tmp_path / "missing.key")})
    with pytest.raises(ImproperlyConfigured, match="Unix socket"):
        racefree("unix:/tmp/memcached.sock", TLS=True)
    with pytest.raises(ImproperlyConfigured, match="set the same option"):
        racefree(location, TLS=True, tls_context=ssl.create_default_context())


def test_a_key_password_is_never_shown(tls_memcached):
    with pytest.raises(ImproperlyConfigured) as raised:
        racefree(tls_memcached.location, TLS={"KEY_PASSWORD": "hunter2"})
    assert "hunter2" not in str(raised.value)
    with pytest.raises(ImproperlyConfigured) as raised:
        racefree(tls_memcached.location, TLS={"CERT_FILE": "c", "KEY_FILE": "k", "KEY_PASSWORD": 12345})
    assert "12345" not in str(raised.value)


def test_login_settings_are_checked_at_startup(login_memcached):
    location = login_memcached.location
    with pytest.raises(ImproperlyConfigured, match="go together"):
        racefree(location, USERNAME=USER)
    with pytest.raises(ImproperlyConfigured, match="go together"):
        racefree(location, PASSWORD=PASSWORD)
    with pytest.raises(ImproperlyConfigured, match="USERNAME.*without spaces"):
        racefree(location, USERNAME="two words", PASSWORD=PASSWORD)
    for bad in ("line\nbreak", "two words"):
        with pytest.raises(ImproperlyConfigured, match="PASSWORD.*without spaces") as raised:
            racefree(location, USERNAME=USER, PASSWORD=bad)
        assert bad not in str(raised.value) and "words" not in str(raised.value)


def test_pymemcache_tls_context_is_taken_where_it_maps(tls_memcached):
    location, ca = tls_memcached.location, tls_memcached.authority.cert
    context = ssl.create_default_context(cafile=ca)
    cache = racefree(location, tls_context=context)
    assert cache._options["TLS"]["verify"] == "full" and cache._options["TLS"]["ca_certs"]
    cache.set("k", "v")
    assert cache.get("k") == "v"
    context.check_hostname = False
    assert racefree(location, tls_context=context)._options["TLS"]["verify"] == "ca"
    context.verify_mode = ssl.CERT_NONE
    assert racefree(location, tls_context=context)._options["TLS"]["verify"] == "none"
    # No CA loaded: the system's roots, which do not know this CA.
    system = racefree(location, tls_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), **PATIENT)
    assert system._options["TLS"]["ca_certs"] is None
    fails_fast(lambda: system.get("k"), CacheConnectionError, "certificate was rejected")
    with pytest.raises(ImproperlyConfigured, match="server's"):
        racefree(location, tls_context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    old = ssl.create_default_context(cafile=ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 itself is
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ImproperlyConfigured, match="TLS 1.2 and 1.3 only"):
        racefree(location, tls_context=old)


# -- What an idle TLS connection received -------------------------------------------


def miss(tls, opaque):
    tls.sendall(b"EN %s\r\n" % opaque)


class FakeTlsServer:
    """A TLS listener answering ``version``, and ``mg`` with
    ``answer(tls_socket, opaque)`` (default: a miss), then doing
    ``after_reply(tls_socket)`` once per connection after its first
    ``mg``: a real memcached cannot misbehave on cue."""

    def __init__(self, authority, after_reply=lambda tls: None, answer=miss):
        cert, key = authority.server(name="fake-server")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.location = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.after_reply = after_reply
        self.answer = answer
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection):
        try:
            with self.context.wrap_socket(connection, server_side=True) as tls:
                buffered, misbehaved = b"", False
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    buffered += chunk
                    while b"\r\n" in buffered:
                        line, buffered = buffered.split(b"\r\n", 1)
                        if line == b"version":
                            tls.sendall(b"VERSION 1.6.18\r\n")
                            continue
                        opaque = next((token for token in line.split() if token.startswith(b"O")), b"")
                        self.answer(tls, opaque)
                        if not misbehaved:
                            misbehaved = True
                            time.sleep(0.05)
                            self.after_reply(tls)
        except (OSError, ValueError):
            pass

    def close(self):
        self.listener.close()


@pytest.mark.parametrize("after_reply", ["stray reply", "close_notify"])
def test_an_idle_tls_connection_with_data_or_a_close_notify_is_not_reused(authority, after_reply):
    def misbehave(tls):
        if after_reply == "stray reply":
            tls.sendall(b"VA 5 f0 O1\r\nstray\r\n")
        else:
            # close_notify, with the TCP connection left open.
            tls.unwrap()
            time.sleep(5)

    server = FakeTlsServer(authority, misbehave)
    try:
        cache = racefree(server.location, TLS={"CA_FILE": authority.cert})
        assert cache.get("k") is None
        time.sleep(0.2)
        assert cache.get("k") is None
        assert server.connections == 2
    finally:
        server.close()


# -- System checks -------------------------------------------------------------------


def checked(location, **options):
    caches = {"mem": {"BACKEND": "racefree.backends.memcached.MemcachedCache", "LOCATION": location,
                      "OPTIONS": options}}
    with override_settings(CACHES=caches):
        return check_caches()


def test_system_checks_pass_a_good_tls_login_configuration(secure_memcached):
    assert checked(secure_memcached.location, **secure_memcached.options()) == []


@pytest.mark.parametrize("options", [
    {"TLS": {"CA_FILE": "/nonexistent/ca.pem"}},
    {"TLS": {"VERIFY": "sometimes"}},
    {"USERNAME": USER},
    {"PASSWORD": "two words"},
], ids=["unreadable CA file", "bad VERIFY", "USERNAME alone", "bad PASSWORD"])
def test_tls_and_login_settings_that_cannot_work_are_e001(secure_memcached, options):
    (message,) = checked(secure_memcached.location, **options)
    assert message.id == "racefree.E001"


def test_refused_credentials_are_w001_with_a_login_hint(secure_memcached):
    (message,) = checked(secure_memcached.location, **secure_memcached.options(PASSWORD="wrong"))
    assert message.id == "racefree.W001"
    assert "rejected the credentials" in message.msg and "wrong" not in message.msg
    assert "authfile" in message.hint


# -- Deadlines over TLS ------------------------------------------------------------


def test_a_trickling_tls_server_cannot_stretch_a_call_past_io_timeout(authority):
    def trickle(tls, opaque):
        # One byte per TLS record, 20 ms apart: 2 s for the whole value.
        tls.sendall(b"VA 100 f0 %s\r\n" % opaque)
        for _ in range(102):
            tls.sendall(b"x")
            time.sleep(0.02)

    server = FakeTlsServer(authority, answer=trickle)
    try:
        cache = racefree(server.location, TLS={"CA_FILE": authority.cert}, IO_TIMEOUT=0.3)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            cache.get("k")
        assert time.monotonic() - started < 0.6
    finally:
        server.close()


def test_a_frozen_tls_server_times_out_and_its_connection_is_not_reused(tls_memcached):
    cache = racefree(tls_memcached.location, **tls_memcached.options(IO_TIMEOUT=0.2))
    cache.set("frozen", "v")
    tls_memcached.server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            cache.get("frozen")
        assert 0.15 < time.monotonic() - started < 1.0
    finally:
        tls_memcached.server.resume()
    assert cache.get("frozen") == "v"
