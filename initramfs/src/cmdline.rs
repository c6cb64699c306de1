//! The `os.*` parameters on the kernel command line.
//!
//! GRUB (the script `bootctl grub-cfg` generates) passes `os.slot=A|B` and, on a
//! trial boot, `os.trial=1`. An operator may add `os.confirm=initramfs|agent` to
//! override who confirms a trial, and `os.init=PATH` to run another init.

use bootctl::record::ConfirmPolicy;
use bootctl::Slot;
use std::path::PathBuf;

/// What the kernel command line asks of `os-init`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `os.slot=`: the slot GRUB booted.
    pub slot: Option<Slot>,
    /// `os.trial=1`: GRUB booted `slot` as a trial.
    pub trial: bool,
    /// `os.confirm=`: who confirms a passing trial; wins over the slot record.
    pub confirm: Option<ConfirmPolicy>,
    /// `os.init=`: absolute path of the program to exec instead of `/sbin/init`.
    pub init: Option<PathBuf>,
    /// Parameters that were present but unusable, one sentence each.
    pub warnings: Vec<String>,
}

/// Splits the command line into parameters the way the kernel does: on
/// whitespace, except inside double quotes, which are removed.
fn split(cmdline: &str) -> Vec<String> {
    let mut words = vec![];
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Parses `/proc/cmdline`. The last occurrence of a parameter wins, as for the
/// kernel's own parameters; everything after `--` belongs to init and is ignored.
pub fn parse_cmdline(cmdline: &str) -> BootParams {
    let mut p = BootParams::default();
    for word in split(cmdline) {
        if word == "--" {
            break;
        }
        let (key, value) = word.split_once('=').unwrap_or((&word, ""));
        let mut bad = |what: &str| {
            p.warnings.push(format!(
                "ignoring {word:?} on the kernel command line: {what}"
            ))
        };
        match key {
            "os.slot" => match Slot::parse(value) {
                Some(s) => p.slot = Some(s),
                None => {
                    bad("the slot must be A or B");
                    p.slot = None;
                }
            },
            "os.trial" => match value {
                "1" => p.trial = true,
                "0" => p.trial = false,
                _ => bad("expected os.trial=1 or os.trial=0"),
            },
            "os.confirm" => match ConfirmPolicy::parse(value) {
                Some(c) => p.confirm = Some(c),
                None => bad("expected os.confirm=initramfs or os.confirm=agent"),
            },
            "os.init" if value.starts_with('/') => p.init = Some(PathBuf::from(value)),
            "os.init" => bad("the init path must be absolute"),
            _ => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_trial_line() {
        let p = parse_cmdline(
            "BOOT_IMAGE=(hd0,gpt3)/boot/vmlinuz os.slot=B os.trial=1 console=ttyS0 panic=10\n",
        );
        assert_eq!(
            p,
            BootParams {
                slot: Some(Slot::B),
                trial: true,
                ..BootParams::default()
            }
        );
    }

    #[test]
    fn committed_line_has_no_trial() {
        let p = parse_cmdline("os.slot=A  quiet");
        assert_eq!((p.slot, p.trial), (Some(Slot::A), false));
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn missing_slot() {
        let p = parse_cmdline("console=ttyS0 root=/dev/vda2");
        assert_eq!(p, BootParams::default());
    }

    #[test]
    fn confirm_and_init() {
        let p = parse_cmdline("os.slot=a os.confirm=agent os.init=\"/usr/lib/my init\"");
        assert_eq!(p.slot, Some(Slot::A));
        assert_eq!(p.confirm, Some(ConfirmPolicy::Agent));
        assert_eq!(p.init, Some(PathBuf::from("/usr/lib/my init")));
        let p = parse_cmdline("os.confirm=initramfs");
        assert_eq!(p.confirm, Some(ConfirmPolicy::Initramfs));
    }

    #[test]
    fn last_occurrence_wins() {
        let p = parse_cmdline("os.slot=A os.trial=1 os.slot=B os.trial=0");
        assert_eq!((p.slot, p.trial), (Some(Slot::B), false));
    }

    #[test]
    fn bad_values_warn_and_are_ignored() {
        let p = parse_cmdline("os.slot=C os.trial=yes os.confirm=maybe os.init=sbin/init");
        assert_eq!(p.slot, None);
        assert!(!p.trial);
        assert_eq!(p.confirm, None);
        assert_eq!(p.init, None);
        assert_eq!(p.warnings.len(), 4, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("\"os.slot=C\""), "{}", p.warnings[0]);
        // A bad later value does not keep an earlier good one alive.
        assert_eq!(parse_cmdline("os.slot=A os.slot=").slot, None);
        assert!(!parse_cmdline("os.trial").trial);
    }

    #[test]
    fn parameters_after_double_dash_belong_to_init() {
        let p = parse_cmdline("os.slot=A -- os.slot=B single");
        assert_eq!(p.slot, Some(Slot::A));
    }

    #[test]
    fn splitting_respects_quotes() {
        assert_eq!(split(" a=\"b c\"  d \"\" e\t"), vec!["a=b c", "d", "", "e"]);
    }
}
