#!/bin/sh
# Build a tiny test initramfs (busybox-static, cpio newc, gzip) for QEMU boot tests.
# Usage: mk-test-initramfs.sh OUT.cpio.gz [EXTRA_FILE...]   (extra files land in /bin)
#
# The /init it contains:
#   - mounts proc, sysfs, devtmpfs; prints "CMDLINE: <cmdline>" on the console (ttyS0);
#   - loads the modules for a virtio disk and for vfat + ext4 (none are built into
#     Debian's 6.1 kernel: CONFIG_VIRTIO*, VIRTIO_BLK, FAT/VFAT, NLS_*, EXT4 are =m);
#   - reads a command from the first 4096 bytes of /dev/vdb (NUL padded; empty = none),
#     runs it with sh -c between "CMD-OUTPUT-BEGIN" and "CMD-RC: <rc>";
#   - powers off.
# Rootless: no device nodes are created (the kernel's built-in initramfs already holds
# /dev/console) and cpio records every file as owned by 0:0.
set -eu

[ $# -ge 1 ] || { echo "usage: $0 OUT.cpio.gz [EXTRA_FILE...]" >&2; exit 2; }
out=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
cache=$("$here/fetch-kernel.sh")
release=$(cat "$cache/release")
moddir="$cache/modules"

# Load order; modprobe also pulls in dependencies from modules.dep. The nls modules are
# what vfat asks for by default (codepage=437, iocharset=ascii); crc32c is a soft
# dependency of ext4 that modules.dep does not record.
MODULES="virtio_pci virtio_blk nls_cp437 nls_ascii vfat crc32c_generic ext4"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/mnt" "$root/tmp" \
    "$root/lib/modules/$release"

cp "$(command -v busybox)" "$root/bin/busybox"
for applet in $(busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
ln -s bin "$root/sbin"   # the kernel calls /sbin/modprobe for on-demand module loads

# Copy each wanted module plus everything it depends on, then index the subset.
for m in $MODULES; do
    line=$(grep -E "(^|/)$(echo "$m" | sed 's/[-_]/[-_]/g')\.ko:" "$moddir/modules.dep") ||
        { echo "mk-test-initramfs: module $m not found" >&2; exit 1; }
    for f in $(echo "$line" | tr -d ':'); do
        mkdir -p "$root/lib/modules/$release/$(dirname "$f")"
        cp "$moddir/$f" "$root/lib/modules/$release/$f"
    done
done
busybox depmod -b "$root" "$release"

for f in "$@"; do
    # Drop a same-named busybox applet link first: cp would write through it into busybox.
    rm -f "$root/bin/$(basename "$f")"
    cp "$f" "$root/bin/"
    chmod 0755 "$root/bin/$(basename "$f")"
done

# Quoted here-doc: nothing is expanded at build time except @MODULES@ (sed below).
cat > "$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo "CMDLINE: $(cat /proc/cmdline)"
modprobe -a @MODULES@ || echo "INIT: modprobe failed"
# virtio_blk registers its disks asynchronously; wait up to 5 s for /dev/vdb.
n=0
while [ ! -b /dev/vdb ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
cmd=
if [ -b /dev/vdb ]; then
    # The command is the text before the first NUL (may span several lines).
    rs=$(printf '\036')
    cmd=$(dd if=/dev/vdb bs=4096 count=1 2>/dev/null | tr '\000' '\036')
    cmd=${cmd%%"$rs"*}
fi
if [ -n "$cmd" ]; then
    echo "CMD-OUTPUT-BEGIN"
    rc=0
    sh -c "$cmd" || rc=$?
    echo "CMD-RC: $rc"
else
    echo "INIT: no command"
fi
sync
poweroff -f
INIT
sed -i "s/@MODULES@/$MODULES/" "$root/init"
chmod 0755 "$root/init"

(cd "$root" && find . | sort | busybox cpio -o -H newc -R 0:0) | gzip -9n > "$out.tmp"
mv "$out.tmp" "$out"
