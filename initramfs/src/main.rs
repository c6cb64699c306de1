//! `os-init`: the initramfs's `/init`. See the library for what it does.

use initramfs::boot::{self, Config};
use std::ffi::OsString;

fn main() {
    let pid = std::process::id();
    if pid != 1 {
        eprintln!(
            "os-init: this is the initramfs init (PID 1): it mounts the A/B slot GRUB chose, \
             judges trial boots and switches root, and reboots the machine on errors; \
             refusing to run as PID {pid}"
        );
        std::process::exit(2);
    }
    initramfs::log::init();
    let cfg = Config::default();
    boot::install_panic_hook(cfg.give_up_pause);
    // What the kernel passes on to init (e.g. `single`) goes on to the real init.
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    boot::run(&cfg, &args)
}
