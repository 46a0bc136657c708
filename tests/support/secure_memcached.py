"""A memcached with TLS and a login, under a throwaway CA of its own: the
server the TLS tests and Django's suite over TLS run against.

``options()`` are the backend OPTIONS that reach it: TLS checked against
the CA (full check: chain and name), and the authfile's user.
"""

import os

from support.certs import Authority
from support.servers import Memcached

USER, PASSWORD = "racefree", "s3cret:pass!"


def write_authfile(directory, users):
    """An authfile (``user:password`` lines) for ``users`` in ``directory``."""
    path = os.path.join(directory, "authfile")
    with open(path, "w") as authfile:
        authfile.write("".join(f"{user}:{password}\n" for user, password in users.items()))
    return path


class SecureMemcached:
    def __init__(self, login=True, **server_options):
        self.authority = Authority()
        try:
            cert, key = self.authority.server()
            authfile = write_authfile(self.authority.dir, {USER: PASSWORD}) if login else None
            self.server = Memcached(tls=(cert, key), authfile=authfile, **server_options)
        except BaseException:
            self.authority.close()
            raise
        self.login = login

    @property
    def location(self):
        return self.server.location

    def options(self, **more):
        options = {"TLS": {"CA_FILE": self.authority.cert}}
        if self.login:
            options.update(USERNAME=USER, PASSWORD=PASSWORD)
        return {**options, **more}

    def stats(self):
        return self.server.stats()

    def close(self):
        self.server.close()
        self.authority.close()
