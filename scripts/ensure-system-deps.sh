#!/usr/bin/env bash
# Install the system packages racefree's tests (and, with "bench", its
# benchmarks) need, when they are missing. As root on Debian/Ubuntu this
# uses apt-get; otherwise it says what to install and fails.
set -euo pipefail

need=()
command -v memcached >/dev/null 2>&1 || need+=(memcached)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
command -v cc >/dev/null 2>&1 || need+=(gcc)
# Throwaway certificate authorities for the TLS tests (tests/support/certs.py).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The Redis servers of the Redis backend's tests (single, replica, cluster).
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# The PostgreSQL server may be installed without being on PATH (Debian keeps
# it in /usr/lib/postgresql/<version>/bin; pg_config --bindir finds it).
have_initdb() {
    command -v initdb >/dev/null 2>&1 && return 0
    if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then
        return 0
    fi
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
have_initdb || need+=(postgresql)
if [[ "${1:-}" == "bench" ]]; then
    # pylibmc (Django's PyLibMCCache) builds against libmemcached.
    pkg-config --exists libmemcached 2>/dev/null || need+=(libmemcached-dev pkg-config zlib1g-dev)
fi

if ((${#need[@]})); then
    "$(dirname "$0")/debian-packages.sh" "${need[@]}" || { echo "racefree: then run make again" >&2; exit 1; }
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "racefree: Rust is missing: install it from https://rustup.rs" >&2
    exit 1
fi
