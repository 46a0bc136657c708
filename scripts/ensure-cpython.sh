#!/usr/bin/env bash
# Print the path of a CPython interpreter of the given series (default 3.13),
# building it once from Debian's source package when it is not cached yet.
#
#   scripts/ensure-cpython.sh [SERIES]      e.g. 3.13
#
# The build lives outside the work tree, in
# ${RACEFREE_CACHE:-~/.cache/racefree}/cpython-SERIES, so later runs (and
# other clones) on the same machine reuse it. The source comes from Debian's
# registry (suite $RACEFREE_DEBIAN_SUITE, default trixie) through a private
# sources list and package index, so the system's apt configuration is left
# alone; apt checks the archive's signature and the files' hashes. Any failure
# (no network, no such source package, a failed build) ends the script with a
# message saying why and a non-zero status: the caller must not go on without
# the interpreter.
#
# Only the interpreter's path is written to stdout; progress goes to stderr.
set -euo pipefail

series=${1:-3.13}
suite=${RACEFREE_DEBIAN_SUITE:-trixie}
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

command -v apt-get >/dev/null 2>&1 || fail "apt-get is missing (the source is fetched from Debian's registry)"

# The Debian mirror this machine is configured with (deb822 or one-line form).
mirror=${RACEFREE_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' |
        grep -E '/debian/?$' | head -n 1 || true)
fi
if [[ -z $mirror ]]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' |
        grep -E '/debian/?$' | head -n 1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

# Build dependencies of the modules checked by usable().
need=()
for pkg in libssl-dev zlib1g-dev libffi-dev libsqlite3-dev libbz2-dev liblzma-dev make gcc xz-utils; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    [[ "$(id -u)" == 0 ]] || fail "missing build packages: ${need[*]} (install them, e.g. sudo apt-get install ${need[*]})"
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/racefree-cpython.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb-src $mirror $suite main" >"$work/sources.list"
apt_private=(
    -o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
    -o "APT::Sandbox::User=root" -q
)
say "fetching the python$series source package from $mirror ($suite)"
apt-get "${apt_private[@]}" --error-on=any update >"$work/apt.log" 2>&1 ||
    { cat "$work/apt.log" >&2; fail "apt-get update of $mirror $suite failed"; }
(cd "$work" && apt-get "${apt_private[@]}" source --download-only "python$series") >>"$work/apt.log" 2>&1 ||
    { cat "$work/apt.log" >&2; fail "apt-get source python$series failed"; }
orig=$(compgen -G "$work/python${series}_*.orig.tar.*" | head -n 1 || true)
[[ -n $orig ]] || fail "the source package python$series has no upstream tarball"
version=$(basename "$orig" | sed -E "s/^python${series}_([^.]+\.[^.]+\.[^.]+)\.orig.*/\1/")

say "building CPython $version into $prefix (about 2-3 minutes on 2 cores)"
started=$SECONDS
mkdir -p "$work/src"
tar -xf "$orig" -C "$work/src" --strip-components=1
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
