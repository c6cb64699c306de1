#!/bin/sh
# Unpack Debian's kubectl (package kubernetes-client, 1.20 on Debian 12) into a cache
# directory, for operator/tests/kubectl.rs, which runs against every kubectl it finds:
# the one on PATH (which may be another vendor's, newer) and this one. Installing the
# package is not always possible: another package may own /usr/bin/kubectl.
# Idempotent; prints the path of the binary.
#
# Leaves in $KUBECTL_CACHE (default /var/cache/ab-os-test/kubernetes-client):
#   kubectl -> root/usr/bin/kubectl
# Needs: apt-get (after apt-get update) and dpkg-deb.
set -eu

cache=${KUBECTL_CACHE:-/var/cache/ab-os-test/kubernetes-client}
mkdir -p "$cache"
if [ -x "$cache/kubectl" ]; then
    echo "$cache/kubectl"
    exit 0
fi

dl="$cache/dl"
mkdir -p "$dl"
if ! ls "$dl"/kubernetes-client_*.deb >/dev/null 2>&1; then
    (cd "$dl" && apt-get download -q kubernetes-client 2>&1 |
        grep -v '^W: Download is performed unsandboxed' >&2 || true)
fi
deb=$(ls "$dl"/kubernetes-client_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { echo "fetch-kubectl: download of kubernetes-client failed" >&2; exit 1; }

rm -rf "$cache/root" "$cache/root.tmp"
dpkg-deb -x "$deb" "$cache/root.tmp"
mv "$cache/root.tmp" "$cache/root"
ln -sfn root/usr/bin/kubectl "$cache/kubectl"
echo "$cache/kubectl"
