#!/bin/sh
# Fetch the Debian kernel that linux-image-amd64 points at, unpack it into a cache
# directory and index its modules, for QEMU boot tests. Idempotent; prints the cache path.
#
# Leaves in $KERNEL_CACHE (default /var/cache/ab-os-test/kernel):
#   vmlinuz               -> the kernel image (symlink into root/boot)
#   release               text file: the kernel release, e.g. 6.1.0-56-amd64
#   modules -> root/lib/modules/<release>   (with modules.dep)
#   root/                 the unpacked package (dpkg-deb -x)
# Needs: apt-get (after apt-get update), dpkg-deb, and depmod from kmod or busybox.
set -eu

cache=${KERNEL_CACHE:-/var/cache/ab-os-test/kernel}
mkdir -p "$cache"

if [ -e "$cache/.done" ] && [ -e "$cache/vmlinuz" ]; then
    echo "$cache"
    exit 0
fi

# The meta package names the concrete ABI package (e.g. linux-image-6.1.0-56-amd64).
pkg=${KERNEL_PACKAGE:-$(apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)}
[ -n "$pkg" ] || { echo "fetch-kernel: cannot resolve linux-image-amd64 (run apt-get update)" >&2; exit 1; }

# apt-get download writes into the current dir; the _apt sandbox user cannot write
# into a root-owned cache, so let apt fall back to root quietly.
dl="$cache/dl"
mkdir -p "$dl"
if ! ls "$dl"/"$pkg"_*.deb >/dev/null 2>&1; then
    (cd "$dl" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
fi
deb=$(ls "$dl"/"$pkg"_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { echo "fetch-kernel: download of $pkg failed" >&2; exit 1; }

# Unpack into a temp dir and move into place so an interrupted run is redone cleanly.
rm -rf "$cache/root" "$cache/root.tmp"
dpkg-deb -x "$deb" "$cache/root.tmp"
release=$(ls "$cache/root.tmp/lib/modules" | head -n 1)

# modules.dep in the text format busybox modprobe reads; kmod's depmod is preferred
# when present, busybox's (always there with busybox-static) does the job otherwise.
if command -v depmod >/dev/null 2>&1; then
    depmod -b "$cache/root.tmp" "$release"
else
    busybox depmod -b "$cache/root.tmp" "$release"
fi
mv "$cache/root.tmp" "$cache/root"

ln -sfn "root/boot/vmlinuz-$release" "$cache/vmlinuz"
ln -sfn "root/lib/modules/$release" "$cache/modules"
echo "$release" > "$cache/release"
touch "$cache/.done"
echo "$cache"
