//! `grub.cmdline.current` / `grub.cmdline.next`: the extra kernel arguments
//! of one slot, kept in that slot's own file on the ESP
//! ([`bootctl::grubcfg::args_path`]), a GRUB env block holding one variable
//! ([`bootctl::grubcfg::ARGS_VAR`]) that the generated grub.cfg loads and
//! appends to the slot's `linux` line. Only Linux writes the file, by atomic
//! replace; GRUB only reads it. grub.cfg and the A/B env copies are never
//! touched.
//!
//! A key is an argument name; an empty value makes a bare flag (`debug`),
//! any other `name=value`. The built-in arguments of grub.cfg cannot be
//! removed from here, only overridden (the kernel takes the last occurrence),
//! and the boot protocol's own (`os.*`) and the initramfs's cannot be set.

use super::request::Operation;
use bootctl::envblk;
use bootctl::grubcfg::ARGS_VAR;
use log::warn;

/// Arguments this agent's boot depends on: `os.slot`, `os.trial` (GRUB sets
/// them; a later copy would win), `os.init`, `os.confirm` (os-init's), and
/// what would replace the initramfs or its init.
fn reserved(key: &str) -> bool {
    let key = folded(key);
    key.starts_with("os.") || ["rdinit", "initrd", "boot_image"].contains(&key.as_str())
}

/// Characters GRUB's script or the kernel's parser would read differently.
fn plain(s: &str) -> bool {
    !s.contains(|c: char| c.is_whitespace() || c.is_control() || "\"'\\$;{}#".contains(c))
}

/// Arguments denied unless the node's `cmdline-allow` names them: whoever
/// may edit an `OS` resource must not get a root shell on the console, a
/// different init, or a kernel with its protections switched off. Families,
/// compared after the kernel's own folding (`-` and `_` are the same in a
/// parameter name) and case-insensitively:
/// - init and what replaces it: `init`, and words the kernel hands to init
///   as arguments (runlevels `0`-`6`, `s`, `single`, `emergency`, `rescue`,
///   every option word `-*`, among them `--`, after which the kernel hands
///   init every word as it is: `-- --unit=rescue.target`) or as environment
///   (`LD_*`, `SYSTEMD_*`);
/// - `systemd.*` (units, debug shell, `run=`, masks), `rd.*` and dracut's
///   `break`, which stop in a shell or change the initramfs's job;
/// - the root the boot protocol chooses: `root`, `rootfstype`, `rootflags`,
///   `ro`, `rw`, and device-mapper tables made at boot (`dm_mod.*`,
///   `dm_verity.*`);
/// - debuggers that take the kernel: `kgdb*`, `ekgdboc`;
/// - security switches: `selinux`, `enforcing`, `apparmor`, `security`, `lsm`,
///   `lockdown`, `module.sig_enforce`, `ima*`, `sysrq_always_enabled`, `audit`,
///   any sysctl set at boot (`sysctl.*`, e.g. `sysctl.kernel.sysrq`), and the
///   CPU vulnerability mitigations and address-space randomisation
///   (`mitigations`, `nokaslr`, `nopti`, `pti`, `nospec*`, `spectre*`,
///   `spec_*`, `retbleed`, `mds`, `l1tf`, `tsx*`, `srbds`, `mmio_stale_data`,
///   `gather_data_sampling`, `reg_file_data_sampling`, `norandmaps`).
const DENIED: &[&str] = &[
    "init",
    "single",
    "s",
    "-*",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "emergency",
    "rescue",
    "ld_*",
    "systemd_*",
    "systemd.*",
    "rd.*",
    "break",
    "root",
    "rootfstype",
    "rootflags",
    "ro",
    "rw",
    "dm_mod.*",
    "dm_verity.*",
    "kgdb*",
    "ekgdboc",
    "selinux",
    "enforcing",
    "apparmor",
    "security",
    "lsm",
    "lockdown",
    "module.sig_enforce",
    "ima*",
    "sysrq_always_enabled",
    "audit",
    "sysctl.*",
    "mitigations",
    "nokaslr",
    "nopti",
    "pti",
    "nospec*",
    "spectre*",
    "spec_*",
    "retbleed",
    "mds",
    "l1tf",
    "tsx*",
    "srbds",
    "mmio_stale_data",
    "gather_data_sampling",
    "reg_file_data_sampling",
    "norandmaps",
];

/// A parameter name as the kernel compares it (`-` = `_`), lower case; a
/// leading `-` (init's `-s`, `-b`) is kept.
fn folded(key: &str) -> String {
    let (dash, rest) = match key.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", key),
    };
    format!("{dash}{}", rest.to_ascii_lowercase().replace('-', "_"))
}

/// Whether `pattern` (`NAME` or `PREFIX*`, folded) covers folded `name`.
fn covers(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Checks one `cmdline-allow` entry: a name or `PREFIX*` (`*` alone allows
/// every denied family); the boot protocol's own can never be allowed.
pub fn check_allow(entry: &str) -> Result<(), String> {
    let name = entry.strip_suffix('*').unwrap_or(entry);
    if !plain(entry) || entry.contains('=') || name.contains('*') {
        return Err("is not a kernel argument name or PREFIX*".into());
    }
    if !name.is_empty() && reserved(name) {
        return Err("is reserved for the A/B boot and cannot be allowed".into());
    }
    Ok(())
}

pub fn check(key: &str, value: &str, allow: &[String]) -> Result<(), String> {
    if key.is_empty() || !plain(key) || key.contains('=') {
        return Err("is not a kernel argument name (no blanks, quotes, = \\ $ ; { } #)".into());
    }
    if reserved(key) {
        return Err("is reserved for the A/B boot (os.*, rdinit, initrd, BOOT_IMAGE)".into());
    }
    let name = folded(key);
    if let Some(family) = DENIED.iter().find(|d| covers(d, &name)) {
        if !allow.iter().any(|a| covers(&folded(a), &name)) {
            return Err(format!(
                "is denied by default ({family}: it can change init, open a shell, bypass the \
                 A/B boot or weaken the kernel's protections); a node may allow it with \
                 cmdline-allow"
            ));
        }
    }
    if !plain(value) {
        return Err(format!(
            "value {value:?} has blanks, quotes or one of \\ $ ; {{ }} #"
        ));
    }
    Ok(())
}

fn name(word: &str) -> &str {
    word.split_once('=').map_or(word, |(k, _)| k)
}

fn value(word: &str) -> &str {
    word.split_once('=').map_or("", |(_, v)| v)
}

/// Sets or deletes `key` in a space-separated argument list. Set replaces
/// the first occurrence and drops later ones, or appends. Delete drops the
/// key's occurrences, only those with `want` when a value is given.
pub fn edit(args: &str, key: &str, op: Operation, want: &str) -> String {
    let word = if want.is_empty() {
        key.to_owned()
    } else {
        format!("{key}={want}")
    };
    let mut out: Vec<String> = vec![];
    let mut placed = false;
    for w in args.split_whitespace() {
        if name(w) != key {
            out.push(w.to_owned());
            continue;
        }
        match op {
            Operation::Set if !placed => {
                out.push(word.clone());
                placed = true;
            }
            Operation::Set => {}
            Operation::Delete if want.is_empty() || value(w) == want => {}
            Operation::Delete => {
                warn!("kernel argument {w:?}: not deleted, the request names value {want:?}");
                out.push(w.to_owned());
            }
        }
    }
    if op == Operation::Set && !placed {
        out.push(word);
    }
    out.join(" ")
}

/// The arguments held by an args file (empty when the variable is unset).
pub fn decode(block: &[u8]) -> Result<String, String> {
    let value = envblk::get(block, ARGS_VAR.as_bytes())
        .map_err(|e| format!("not a GRUB environment block ({e})"))?;
    let bytes: Vec<u8> = value.map(|v| v.bytes().collect()).unwrap_or_default();
    String::from_utf8(bytes).map_err(|_| "the arguments are not UTF-8".into())
}

/// A fresh 1024-byte env block holding `args` (GRUB's own size; a kernel
/// command line is at most 2048 bytes on x86, the extra part far less).
pub fn encode(args: &str) -> Result<Vec<u8>, String> {
    // GRUB's format would escape a newline, but a kernel command line has no
    // use for control characters: refuse them here too, not only in `check`.
    if let Some(c) = args.chars().find(|c| c.is_control()) {
        return Err(format!("the arguments hold a control character ({c:?})"));
    }
    let mut block = envblk::create();
    envblk::set(&mut block, ARGS_VAR.as_bytes(), args.as_bytes()).map_err(|_| {
        format!(
            "{} bytes of extra arguments do not fit in a {}-byte block",
            args.len(),
            envblk::DEFAULT_SIZE
        )
    })?;
    Ok(block.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation::{Delete, Set};

    #[test]
    fn the_args_writer_refuses_control_characters() {
        assert!(encode("quiet panic=5").is_ok());
        for bad in ["quiet\nos.slot=B", "a\rb", "x\u{0}"] {
            assert!(encode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn set_and_delete_words() {
        let a = edit("", "panic", Set, "5");
        assert_eq!(a, "panic=5");
        let a = edit(&a, "debug", Set, "");
        assert_eq!(a, "panic=5 debug");
        assert_eq!(edit(&a, "panic", Set, "5"), a);
        assert_eq!(edit("panic=1 x panic=2", "panic", Set, "3"), "panic=3 x");
        assert_eq!(edit(&a, "panic", Delete, ""), "debug");
        assert_eq!(edit(&a, "panic", Delete, "7"), a);
        assert_eq!(edit(&a, "nope", Delete, ""), a);
    }

    #[test]
    fn reserved_and_unsafe_arguments_are_refused() {
        let none: &[String] = &[];
        assert!(check("os.slot", "B", none).is_err());
        assert!(check("OS.slot", "B", none).is_err());
        assert!(check("rdinit", "/bin/sh", none).is_err());
        assert!(check("a b", "", none).is_err());
        assert!(check("x", "$(reboot)", none).is_err());
        assert!(check("x", "a;b", none).is_err());
        assert!(check("console", "ttyS0,115200n8", none).is_ok());
        assert!(check("dyndbg", "", none).is_ok());
    }

    #[test]
    fn denied_families_fold_like_the_kernel_and_the_allow_list_opens_them() {
        let none: &[String] = &[];
        for key in [
            "module.sig-enforce",
            "Systemd.Unit",
            "LD_PRELOAD",
            "kgdboc",
            "rd.break",
        ] {
            assert!(check(key, "0", none).is_err(), "{key}");
        }
        // What the kernel hands to init or applies before it, spelled so that no
        // family above matched it before: `-- --unit=rescue.target` boots the slot
        // into rescue (everything after `--` is init's argv), `--crash-shell` is an
        // option word init gets as it is, `sysctl.*` sets sysctls before init runs.
        for (key, value) in [
            ("--", ""),
            ("--unit", "rescue.target"),
            ("--crash-shell", ""),
            ("-z", ""),
            ("sysctl.kernel.sysrq", "1"),
            ("sysctl.kernel.core_pattern", "|/var/lib/x"),
            ("Sysctl.kernel.kptr-restrict", "0"),
            ("mitigations", "off"),
            ("nokaslr", ""),
            ("nospectre_v2", ""),
            ("spectre-v2", "off"),
            ("audit", "0"),
        ] {
            assert!(check(key, value, none).is_err(), "{key}={value}");
        }
        assert!(check("sysctl.kernel.sysrq", "1", &["sysctl.*".to_owned()]).is_ok());
        assert!(check("--", "", &["-*".to_owned()]).is_ok());
        // Neighbours that share no family stay allowed.
        for key in ["hugepages", "isolcpus", "crashkernel", "panic", "auditd_x"] {
            assert!(check(key, "1", none).is_ok(), "{key}");
        }
        let allow = ["systemd.unit".to_owned(), "rd.*".to_owned()];
        assert!(check("systemd.unit", "multi-user.target", &allow).is_ok());
        assert!(check("rd.luks", "0", &allow).is_ok());
        assert!(check("systemd.debug_shell", "", &allow).is_err());
        assert!(check("init", "/bin/sh", &["*".to_owned()]).is_ok());
        assert!(check("os.slot", "A", &["*".to_owned()]).is_err());
        assert!(check_allow("os.slot").is_err());
        assert!(check_allow("os.*").is_err());
        assert!(check_allow("a*b").is_err());
        assert!(check_allow("rd.*").is_ok());
    }

    #[test]
    fn env_block_round_trip() {
        let block = encode("panic=5 debug").unwrap();
        assert_eq!(block.len(), 1024);
        assert_eq!(decode(&block).unwrap(), "panic=5 debug");
        assert_eq!(decode(&envblk::create()).unwrap(), "");
        assert!(decode(b"garbage").is_err());
        assert!(encode(&"x".repeat(2000)).is_err());
    }
}
