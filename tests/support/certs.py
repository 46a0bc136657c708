"""Throwaway certificate authorities for the TLS tests, made with Debian's
``openssl`` command (installed by ``make test`` when missing).

``Authority()`` makes a CA in a temp dir; ``server()`` and ``client()``
issue P-256 certificates under it. A second ``Authority`` is a CA the
other's certificates do not chain to ("a wrong CA").
"""

import os
import shutil
import subprocess
import tempfile

from tests.support.servers import ServerMissing


def _openssl(*args, cwd):
    binary = shutil.which("openssl")
    if binary is None:
        raise ServerMissing("openssl is not installed: run `make test` as root, or `apt-get install openssl`")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


class Authority:
    def __init__(self, name="racefree test CA"):
        self.dir = tempfile.mkdtemp(prefix="racefree-pki-")
        os.chmod(self.dir, 0o755)
        self.cert = os.path.join(self.dir, "ca.pem")
        self.key = os.path.join(self.dir, "ca.key")
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", self.key, "-out", self.cert,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=self.dir,
        )

    def _issue(self, name, common_name, extensions):
        key = os.path.join(self.dir, f"{name}.key")
        request = os.path.join(self.dir, f"{name}.csr")
        cert = os.path.join(self.dir, f"{name}.pem")
        config = os.path.join(self.dir, f"{name}.ext")
        with open(config, "w") as ext:
            ext.write("\n".join(extensions) + "\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-subj", f"/CN={common_name}", "-keyout", key, "-out", request, cwd=self.dir)
        _openssl("x509", "-req", "-in", request, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
                 "-days", "2", "-extfile", config, "-out", cert, cwd=self.dir)
        os.chmod(key, 0o600)
        return cert, key

    def server(self, name="server", hosts=("localhost", "127.0.0.1")):
        """A server certificate for ``hosts`` (names and IP addresses)."""
        names = [f"IP:{host}" if host[0].isdigit() or ":" in host else f"DNS:{host}" for host in hosts]
        return self._issue(name, hosts[0], [
            f"subjectAltName={','.join(names)}", "extendedKeyUsage=serverAuth",
            "basicConstraints=critical,CA:FALSE",
        ])

    def client(self, user):
        """A client certificate whose common name is ``user`` (PostgreSQL's
        ``clientcert=verify-full`` matches it against the user name)."""
        extensions = ["extendedKeyUsage=clientAuth", "basicConstraints=critical,CA:FALSE"]
        return self._issue(f"client-{user}", user, extensions)

    def encrypted(self, key, password):
        """``key`` as encrypted PKCS#8 under ``password`` (libpq's sslpassword)."""
        out = key[: -len(".key")] + "-encrypted.key"
        _openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", key, "-out", out, "-passout", f"pass:{password}",
                 cwd=self.dir)
        os.chmod(out, 0o600)
        return out

    def chown(self, user):
        """Let ``user`` (a pwd entry: the server's unprivileged user) read
        the files, as a server started under it must."""
        for name in os.listdir(self.dir):
            os.chown(os.path.join(self.dir, name), user.pw_uid, user.pw_gid)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)
