#!/usr/bin/env bash
# Print the path of a CPython interpreter of the given series (default 3.13),
# building it once from Debian's source package when it is not cached yet.
#
#   scripts/ensure-cpython.sh [SERIES]      e.g. 3.13
#
# The build lives outside the work tree, in
# ${RACEFREE_CACHE:-~/.cache/racefree}/cpython-SERIES, so later runs (and
# other clones) on the same machine reuse it. The source comes from Debian's
# registry (scripts/debian-source.sh: suite $RACEFREE_DEBIAN_SUITE, default
# trixie, through a private sources list, the system's apt configuration left
# alone; apt checks the archive's signature and the files' hashes). Any failure
# (no network, no such source package, a failed build) ends the script with a
# message saying why and a non-zero status: the caller must not go on without
# the interpreter.
#
# Only the interpreter's path is written to stdout; progress goes to stderr.
set -euo pipefail

series=${1:-3.13}
cache_root=${RACEFREE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/racefree}
prefix=$cache_root/cpython-$series
python=$prefix/bin/python$series
# Written last by a build that completed; a prefix without it is rebuilt.
stamp=$prefix/.racefree-build-complete

say() { echo "racefree: $*" >&2; }
fail() { say "cannot provide CPython $series: $*"; exit 1; }

# The modules Django, pip, venv and the tests rely on; a build that silently
# left one out (a missing -dev package) is not usable.
usable() {
    [[ -f $stamp && -x $python ]] &&
        "$python" -c "import ssl, sqlite3, ctypes, zlib, bz2, lzma, venv, ensurepip, hashlib" >/dev/null 2>&1
}

if usable; then
    echo "$python"
    exit 0
fi

mkdir -p "$cache_root"
# Two `make test` runs on one machine must not build into one prefix at once.
exec 9>"$cache_root/cpython-$series.lock"
flock 9
if usable; then
    echo "$python"
    exit 0
fi

# Build dependencies of the modules checked by usable().
"$(dirname "$0")/debian-packages.sh" libssl-dev zlib1g-dev libffi-dev libsqlite3-dev libbz2-dev liblzma-dev \
    make gcc xz-utils || fail "its build packages are missing (above)"

work=$(mktemp -d "${TMPDIR:-/tmp}/racefree-cpython.XXXXXX")
trap 'rm -rf "$work"' EXIT
version=$("$(dirname "$0")/debian-source.sh" "python$series" "$work") || fail "its source could not be fetched (above)"

say "building CPython $version into $prefix (about 2-3 minutes on 2 cores)"
started=$SECONDS
rm -rf "$prefix"
(
    cd "$work/src"
    # No test suite (CPython's own): nothing here imports it, and it is 160 MB.
    ./configure --prefix="$prefix" --with-ensurepip=install --disable-test-modules >"$work/build.log" 2>&1
    make -j"$(nproc)" >>"$work/build.log" 2>&1
    make install >>"$work/build.log" 2>&1
) || { tail -n 40 "$work/build.log" >&2; fail "building CPython $version failed (log above)"; }
echo "$version" >"$stamp"
usable || { rm -f "$stamp"; fail "CPython $version built, but lacks one of ssl, sqlite3, ctypes, zlib, bz2, lzma"; }
say "CPython $version built in $((SECONDS - started)) s"
echo "$python"
