#!/usr/bin/env bash
# Print a directory whose redis-server and redis-cli are Valkey's
# valkey-server and valkey-cli, building Valkey once from Debian's source
# package when it is not cached yet.
#
#   PATH=$(scripts/ensure-valkey.sh):$PATH pytest -k redis
#
# Debian 12 ships no Valkey; Debian 13 (trixie, $RACEFREE_DEBIAN_SUITE) does,
# and its source comes through scripts/debian-source.sh. The build (with TLS,
# as Debian's package has it) lives in
# ${RACEFREE_CACHE:-~/.cache/racefree}/valkey, so later runs reuse it. The
# test harness starts `redis-server` and calls `redis-cli` by name, which
# Valkey answers to (its own names are aliases of the same programs). Any
# failure ends the script with a message saying why and a non-zero status.
#
# Only the directory is written to stdout; progress goes to stderr.
set -euo pipefail

cache_root=${RACEFREE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/racefree}
prefix=$cache_root/valkey
bin=$prefix/bin
# Written last by a build that completed; a prefix without it is rebuilt.
stamp=$prefix/.racefree-build-complete

say() { echo "racefree: $*" >&2; }
fail() { say "cannot provide Valkey: $*"; exit 1; }

usable() {
    [[ -f $stamp && -x $bin/redis-server && -x $bin/redis-cli ]] &&
        "$bin/redis-server" --version 2>/dev/null | grep -q '^Valkey server'
}

if usable; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/valkey.lock"
flock 9
if usable; then
    echo "$bin"
    exit 0
fi

"$(dirname "$0")/debian-packages.sh" libssl-dev make gcc xz-utils || fail "its build packages are missing (above)"

work=$(mktemp -d "${TMPDIR:-/tmp}/racefree-valkey.XXXXXX")
trap 'rm -rf "$work"' EXIT
version=$("$(dirname "$0")/debian-source.sh" valkey "$work") || fail "its source could not be fetched (above)"

say "building Valkey $version into $prefix (about 2 minutes on 2 cores)"
started=$SECONDS
rm -rf "$prefix"
mkdir -p "$bin"
(
    cd "$work/src"
    # libc's malloc: the bundled jemalloc adds a minute and nothing the tests see.
    make -j"$(nproc)" MALLOC=libc BUILD_TLS=yes >"$work/build.log" 2>&1
    install -m 755 src/valkey-server src/valkey-cli "$bin/"
) || { tail -n 40 "$work/build.log" >&2; fail "building Valkey $version failed (log above)"; }
ln -sf valkey-server "$bin/redis-server"
ln -sf valkey-cli "$bin/redis-cli"
echo "$version" >"$stamp"
usable || { rm -f "$stamp"; fail "Valkey $version built, but its redis-server does not run"; }
say "Valkey $version built in $((SECONDS - started)) s"
echo "$bin"
