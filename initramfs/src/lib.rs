//! `os-init`, the initramfs PID 1 of an A/B node (DESIGN.md §2–§4): finds the
//! A/B partitions, mounts the slot GRUB chose read-only with PERSIST, /var and
//! /etc layered on it, judges a trial boot (confirm it, leave it to the agent,
//! or mark it failed and reboot), and switches root.
//!
//! Pure parts, tested beside the code: [`cmdline`] (kernel parameters),
//! [`decide`] (what this boot is and what to do), [`checks`] (sanity checks
//! against a directory standing in for /sysroot), [`modules`] (the load-order
//! list). I/O parts, thin and taking their root paths as parameters: [`disk`],
//! [`mounts`], [`switch_root`], [`verity`] (dm-verity set-up and the
//! whole-device read), [`boot`] (the sequence). All `unsafe` is in
//! `sys`.

pub mod boot;
pub mod checks;
pub mod cmdline;
pub mod decide;
pub mod disk;
pub mod gpt;
pub mod log;
pub mod modules;
pub mod mounts;
pub mod seed;
pub mod switch_root;
mod sys;
pub mod verity;

#[cfg(test)]
mod testutil;
