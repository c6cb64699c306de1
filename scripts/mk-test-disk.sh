#!/bin/sh
# Build a bootable A/B test disk image (GPT, UEFI GRUB) without root, mounts or loop devices.
# Usage: mk-test-disk.sh OUT.img GRUB_CFG VMLINUZ INITRAMFS [ESP_PATH=HOST_FILE...]
#   e.g. mk-test-disk.sh disk.img grub.cfg vmlinuz initrd.img ab1/env=env1 ab2/env=env2
# Layout (DESIGN §3): 1 ESP (FAT32) | 2 ROOT-A (ext4) | 3 ROOT-B (ext4) | 4 PERSIST (ext4).
# Both slots get /boot/vmlinuz and /boot/initramfs.img.
# Env knobs: ESP_MB=64 ROOT_MB=64 PERSIST_MB=16 (MiB); ROOT_A_DIR / ROOT_B_DIR: extra trees
# copied into a slot; INITRAMFS_B: another initramfs for slot B; GRUB_EXTRA_MODULES.
# Prints shell assignments on stdout: ESP_OFFSET= ROOT_A_OFFSET= ROOT_B_OFFSET= PERSIST_OFFSET=
# (bytes), for `mcopy -i OUT.img@@$ESP_OFFSET` and friends.
set -eu

[ $# -ge 4 ] || { echo "usage: $0 OUT.img GRUB_CFG VMLINUZ INITRAMFS [ESP_PATH=FILE...]" >&2; exit 2; }
out=$1 cfg=$2 kernel=$3 initrd=$4
shift 4
esp_mb=${ESP_MB:-64} root_mb=${ROOT_MB:-64} persist_mb=${PERSIST_MB:-16}

# GRUB modules baked into the EFI image (no module directory on the ESP: one file, no
# version skew). part_gpt/fat/ext2 read the disk; loadenv+test+regexp run the A/B script.
modules="part_gpt part_msdos fat ext2 normal linux configfile loadenv regexp test echo
  efi_gop efi_uga all_video search search_fs_file search_label halt reboot sleep true
  minicmd ls cat gzio ${GRUB_EXTRA_MODULES:-}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Partition starts in MiB (1 MiB aligned); the last MiB holds the backup GPT.
mib=1048576
esp_at=1
a_at=$((esp_at + esp_mb))
b_at=$((a_at + root_mb))
p_at=$((b_at + root_mb))
total=$((p_at + persist_mb + 1))

# --- ESP: a FAT32 file, filled with mtools, then copied into place -----------------
esp="$work/esp.img"
truncate -s $((esp_mb * mib)) "$esp"
# -h: hidden sectors = partition start, as firmware-made ESPs have it.
mkfs.vfat -F 32 -n ESP -h $((esp_at * 2048)) "$esp" >/dev/null
grub-mkimage -O x86_64-efi -p /EFI/BOOT -o "$work/BOOTX64.EFI" $modules
mmd -i "$esp" ::EFI ::EFI/BOOT
mcopy -i "$esp" "$work/BOOTX64.EFI" ::EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$cfg" ::EFI/BOOT/grub.cfg
for spec in "$@"; do
    dest=${spec%%=*} src=${spec#*=}
    # Create the parent directories one level at a time (mmd has no -p).
    d= rest=$(dirname "$dest")
    [ "$rest" = . ] && rest=
    for part in $(echo "$rest" | tr '/' ' '); do
        d="$d/$part"
        mdir -i "$esp" "::$d" >/dev/null 2>&1 || mmd -i "$esp" "::$d"
    done
    mcopy -o -i "$esp" "$src" "::$dest"
done

# --- root slots: ext4 built from a staging tree (mkfs.ext4 -d needs no root) -----------
mkroot() { # slot extra_dir initramfs image
    stage="$work/stage-$1"
    mkdir -p "$stage/boot"
    [ -z "$2" ] || cp -a "$2/." "$stage/"
    cp "$kernel" "$stage/boot/vmlinuz"
    cp "$3" "$stage/boot/initramfs.img"
    truncate -s $((root_mb * mib)) "$4"
    mkfs.ext4 -q -F -E root_owner=0:0 -d "$stage" "$4"
}
mkroot A "${ROOT_A_DIR:-}" "$initrd" "$work/a.img"
mkroot B "${ROOT_B_DIR:-}" "${INITRAMFS_B:-$initrd}" "$work/b.img"
truncate -s $((persist_mb * mib)) "$work/p.img"
mkfs.ext4 -q -F -E root_owner=0:0 "$work/p.img"

# --- assemble: GPT first, then each filesystem at its partition offset ------------------
rm -f "$out"
truncate -s $((total * mib)) "$out"
s() { echo $(($1 * 2048)); }   # MiB -> 512-byte sector
# (no -q: sgdisk 1.0.9 -q silently skips writing the table; its chatter goes to stderr)
sgdisk -o \
    -n 1:$(s $esp_at):$(($(s $a_at) - 1)) -t 1:ef00 -c 1:ESP \
    -n 2:$(s $a_at):$(($(s $b_at) - 1))   -t 2:8304 -c 2:ROOT-A \
    -n 3:$(s $b_at):$(($(s $p_at) - 1))   -t 3:8304 -c 3:ROOT-B \
    -n 4:$(s $p_at):$(($(s $((p_at + persist_mb))) - 1)) -t 4:8300 -c 4:PERSIST \
    "$out" >&2
sgdisk -i 4 "$out" | grep -q "'PERSIST'" || { echo "mk-test-disk: GPT not written" >&2; exit 1; }
put() { dd if="$1" of="$out" bs=1M seek="$2" conv=notrunc,sparse status=none; }
put "$esp" $esp_at
put "$work/a.img" $a_at
put "$work/b.img" $b_at
put "$work/p.img" $p_at

echo "ESP_OFFSET=$((esp_at * mib))"
echo "ROOT_A_OFFSET=$((a_at * mib))"
echo "ROOT_B_OFFSET=$((b_at * mib))"
echo "PERSIST_OFFSET=$((p_at * mib))"
