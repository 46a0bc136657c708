#!/usr/bin/env bash
# Install those of the given Debian packages that are not installed: as root
# with apt-get; otherwise say what to install and fail.
#
#   scripts/debian-packages.sh PACKAGE...
set -euo pipefail

need=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
((${#need[@]})) || exit 0
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "racefree: missing packages: ${need[*]} (install them, e.g. sudo apt-get install ${need[*]})" >&2
    exit 1
fi
echo "racefree: installing ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
