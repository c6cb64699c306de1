//! `os-image`: builds update bundles (DESIGN.md §5) and bootable A/B disk images
//! (DESIGN.md §3) from a root filesystem, without root privileges, loop devices
//! or mounts. External tools (mkfs.ext4, mtools, sgdisk, grub-mkimage, qemu-img)
//! are run as subprocesses; [`tools`] names the Debian package when one is missing.

pub mod bundle;
pub mod chunked;
pub mod cli;
pub mod container;
pub mod cpio;
pub mod debian;
pub mod demo;
pub mod disk;
pub mod elf;
pub mod esp;
pub mod ext4;
pub mod ext4base;
pub mod ext4tree;
pub mod hashing;
pub mod initramfs;
pub mod kmod;
pub mod layout;
pub mod manifest;
pub mod node;
pub mod oci;
pub mod progress;
pub mod recipe;
pub mod rootfs;
pub mod rootwrite;
pub mod sign;
pub mod tools;
pub mod units;
pub mod unpack;
pub mod verity;
