#!/usr/bin/env bash
# Download the upstream source of a Debian source package, unpack it into
# DIRECTORY/src and print its upstream version (e.g. 3.13.5, 8.1.1).
#
#   scripts/debian-source.sh PACKAGE DIRECTORY
#
# The package comes from Debian's registry (suite $RACEFREE_DEBIAN_SUITE,
# default trixie, from the mirror this machine is configured with, or
# $RACEFREE_DEBIAN_MIRROR) through a private sources list and package index
# in DIRECTORY, so the system's apt configuration is left alone. apt checks
# the index's signature and each file's hash before it keeps the file. Only
# the upstream tarball is needed: when the mirror lacks Debian's own files of
# a newer revision (a security update published elsewhere), the tarball apt
# fetched and verified is used all the same. Any failure ends the script with
# a message saying why and a non-zero status.
#
# Only the version is written to stdout; progress goes to stderr.
set -euo pipefail

package=${1:?usage: debian-source.sh PACKAGE DIRECTORY}
work=${2:?usage: debian-source.sh PACKAGE DIRECTORY}
suite=${RACEFREE_DEBIAN_SUITE:-trixie}

say() { echo "racefree: $*" >&2; }
fail() { say "cannot fetch the source of $package: $*"; exit 1; }

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

mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb-src $mirror $suite main" >"$work/sources.list"
apt_private=(
    -o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
    -o "APT::Sandbox::User=root" -q
)
say "fetching the $package source package from $mirror ($suite)"
apt-get "${apt_private[@]}" --error-on=any update >"$work/apt.log" 2>&1 ||
    { cat "$work/apt.log" >&2; fail "apt-get update of $mirror $suite failed"; }
fetched=true
(cd "$work" && apt-get "${apt_private[@]}" source --download-only "$package") >>"$work/apt.log" 2>&1 || fetched=false
orig=$(compgen -G "$work/${package}_*.orig.tar.*" | head -n 1 || true)
if [[ -z $orig ]]; then
    cat "$work/apt.log" >&2
    fail "no upstream tarball (apt-get source $package $([[ $fetched == true ]] && echo succeeded || echo failed))"
fi
[[ $fetched == true ]] || say "apt-get source $package fetched the upstream tarball but not Debian's own files; using the tarball"
mkdir -p "$work/src"
tar -xf "$orig" -C "$work/src" --strip-components=1 || fail "cannot unpack $orig"
# PACKAGE_VERSION[+dfsgN].orig.tar.*: the upstream version without Debian's repack suffix.
basename "$orig" | sed -E 's/^[^_]+_([^+~]+).*[.]orig[.].*/\1/'
