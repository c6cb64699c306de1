//! grub.cfg generation: the boot-time half of DESIGN.md §4.
//!
//! The script is the executable twin of [`crate::grub_model::grub_boot`]; a change
//! to one without the other breaks the QEMU tests that boot the real script and
//! compare every boot with the model.
//!
//! Notes on GRUB script that shaped it:
//! - GRUB has no arithmetic, so the trial counter is decremented by a table.
//! - `save_env` deletes a variable that is not set, which would change the block's
//!   layout; all four are always set before saving, and only copies that loaded
//!   valid are saved to (a broken block cannot be saved to anyway).
//! - A menu entry runs in a new environment context that only sees exported
//!   variables, hence the `export` lines.
//! - Slots are found by partition number on the disk GRUB itself was loaded from
//!   (`$root` is the ESP), never by filesystem UUID or label: both slots can hold
//!   byte-identical images (DESIGN.md §3).
//! - Per-slot extra kernel arguments (os-agent's `grub.cmdline.*` models) live in
//!   their own env-block files ([`args_path`]) that only Linux writes, by atomic
//!   replace, and GRUB only reads: the script stays fixed and the two A/B env
//!   copies keep their four one-byte values. A missing or unreadable file means
//!   no extra arguments.

use crate::state::Slot;
use std::fmt::Write;

/// Inputs of the generated script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubConfig {
    /// Extra kernel command line, appended after `os.slot=X [os.trial=1]`.
    pub cmdline: String,
    /// GPT partition numbers of ROOT-A and ROOT-B on the boot disk.
    pub part_a: u32,
    pub part_b: u32,
    /// Slot booted when both env copies are unusable.
    pub default: Slot,
    /// Menu timeout in seconds.
    pub timeout: u32,
    /// Paths of the two env copies on the ESP.
    pub env1: String,
    pub env2: String,
    /// Kernel and initramfs paths inside each slot's root filesystem.
    pub kernel: String,
    pub initrd: String,
    /// Paths on the ESP of the per-slot extra-argument files (A, then B).
    pub args: [String; 2],
}

/// The variable an extra-arguments file sets (GRUB env-block format).
pub const ARGS_VAR: &str = "os_args";

/// Where `slot`'s extra kernel arguments live, relative to the ESP root.
pub fn args_path(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "ab/args-A",
        Slot::B => "ab/args-B",
    }
}

impl Default for GrubConfig {
    fn default() -> Self {
        GrubConfig {
            cmdline: String::new(),
            part_a: 2,
            part_b: 3,
            default: Slot::A,
            timeout: 1,
            env1: "/ab1/env".into(),
            env2: "/ab2/env".into(),
            kernel: "/boot/vmlinuz".into(),
            initrd: "/boot/initramfs.img".into(),
            args: [Slot::A, Slot::B].map(|s| format!("/{}", args_path(s))),
        }
    }
}

/// Quotes `s` as one GRUB script word (same rules as POSIX sh single quotes).
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

const LOAD_FUNCTION: &str = r#"# ab_load FILE: load one env copy; ab_ok=1 when every value is in its domain
# and the trial slot is not the committed one (bootctl's decode_grub).
function ab_load {
  unset ab_active
  unset ab_trial
  unset ab_tries
  unset ab_fail
  ab_ok=0
  if load_env --file "$1" ab_active ab_trial ab_tries ab_fail; then
    if [ "$ab_active" = A -o "$ab_active" = B ]; then
      if [ "$ab_trial" = N -o "$ab_trial" = A -o "$ab_trial" = B ]; then
        if [ "$ab_trial" != "$ab_active" ]; then
          if [ "$ab_fail" = N -o "$ab_fail" = A -o "$ab_fail" = B ]; then
            for ab_t in 0 1 2 3 4 5 6 7 8 9; do
              if [ "$ab_tries" = "$ab_t" ]; then ab_ok=1; fi
            done
          fi
        fi
      fi
    fi
  fi
}
"#;

const DECIDE: &str = r#"ab_load "$ab_env2"
ab_ok2="$ab_ok"
ab_load "$ab_env1"
ab_ok1="$ab_ok"
if [ "$ab_ok1" != 1 -a "$ab_ok2" = 1 ]; then ab_load "$ab_env2"; fi

ab_boot="$ab_default"
ab_fallback=N
if [ "$ab_ok1" = 1 -o "$ab_ok2" = 1 ]; then
  ab_boot="$ab_active"
  if [ "$ab_trial" != N ]; then
    if [ "$ab_tries" = 0 ]; then
      # Trial spent without confirmation: record the failure, boot the committed slot.
      ab_fail="$ab_trial"
      ab_trial=N
    else
      if [ "$ab_tries" = 1 ]; then ab_tries=0
      elif [ "$ab_tries" = 2 ]; then ab_tries=1
      elif [ "$ab_tries" = 3 ]; then ab_tries=2
      elif [ "$ab_tries" = 4 ]; then ab_tries=3
      elif [ "$ab_tries" = 5 ]; then ab_tries=4
      elif [ "$ab_tries" = 6 ]; then ab_tries=5
      elif [ "$ab_tries" = 7 ]; then ab_tries=6
      elif [ "$ab_tries" = 8 ]; then ab_tries=7
      elif [ "$ab_tries" = 9 ]; then ab_tries=8
      fi
      ab_boot="$ab_trial"
      ab_fallback="$ab_active"
    fi
    # Count the try before booting it, copy 1 first.
    if [ "$ab_ok1" = 1 ]; then save_env --file "$ab_env1" ab_active ab_trial ab_tries ab_fail; fi
    if [ "$ab_ok2" = 1 ]; then save_env --file "$ab_env2" ab_active ab_trial ab_tries ab_fail; fi
  fi
fi

ab_flag_A=
ab_flag_B=
if [ "$ab_boot" = B ]; then set default=1; else set default=0; fi
if [ "$ab_fallback" != N ]; then
  if [ "$ab_boot" = B ]; then ab_flag_B=os.trial=1; else ab_flag_A=os.trial=1; fi
  if [ "$ab_fallback" = B ]; then set fallback=1; else set fallback=0; fi
fi
export ab_disk
export ab_flag_A
export ab_flag_B
"#;

/// Loads each slot's extra arguments into `ab_args_X`; never writes.
fn load_args(s: &mut String, cfg: &GrubConfig) {
    s.push_str("\n# Extra kernel arguments per slot: written by os-agent, only read here.\n");
    for (slot, path) in [(Slot::A, &cfg.args[0]), (Slot::B, &cfg.args[1])] {
        let _ = write!(
            s,
            "ab_args_{slot}=\nunset {ARGS_VAR}\nif [ -f {path} ]; then\n  \
             if load_env --file {path} {ARGS_VAR}; then ab_args_{slot}=\"${ARGS_VAR}\"; fi\n\
             fi\nexport ab_args_{slot}\n",
            path = quote(path),
        );
    }
    let _ = writeln!(s, "unset {ARGS_VAR}");
}

/// A word GRUB's script reads as plain text in a `linux`/`initrd` line: no
/// blank, quote, `\`, `$`, `;`, `{`, `}`, `#`, `|`, `&`, `<`, `>` or control
/// character, any of which could end the word, the command or the menu entry.
fn plain_word(w: &str) -> bool {
    !w.is_empty()
        && !w
            .contains(|c: char| c.is_whitespace() || c.is_control() || "\"'\\$;{}#|&<>".contains(c))
}

impl GrubConfig {
    /// The values written into the script unquoted are plain: the kernel and
    /// initramfs paths (absolute) and each word of the command line. A value
    /// that could add GRUB commands or menu entries is refused, naming it.
    pub fn check(&self) -> Result<(), String> {
        for (name, path) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            if !path.starts_with('/') || !plain_word(path) {
                return Err(format!(
                    "{name} path {path:?} must be absolute, without blanks, quotes or any of \\ $ ; {{ }} # | & < >"
                ));
            }
        }
        if let Some(w) = self
            .cmdline
            .split(' ')
            .find(|w| !w.is_empty() && !plain_word(w))
        {
            return Err(format!(
                "kernel command line word {w:?} has a quote, a control character or one of \\ $ ; {{ }} # | & < >"
            ));
        }
        if self.cmdline.contains(|c: char| c.is_control()) {
            return Err("the kernel command line holds a control character".into());
        }
        Ok(())
    }
}

/// Renders the grub.cfg for `cfg`, refusing values that are not plain ([`GrubConfig::check`]).
pub fn render(cfg: &GrubConfig) -> Result<String, String> {
    cfg.check()?;
    let mut s = String::new();
    s.push_str("# Generated by `bootctl grub-cfg`: A/B boot with boot counting.\n");
    s.push_str("# Do not edit; bootctl's model of this script must stay in step with it.\n");
    for module in [
        "part_gpt", "fat", "ext2", "loadenv", "regexp", "test", "linux",
    ] {
        let _ = writeln!(s, "insmod {module}");
    }
    let _ = writeln!(s, "set timeout={}", cfg.timeout);
    let _ = writeln!(s, "set ab_default={}", cfg.default);
    let _ = writeln!(s, "set ab_env1={}", quote(&cfg.env1));
    let _ = writeln!(s, "set ab_env2={}", quote(&cfg.env2));
    s.push_str("# The slots live on the disk GRUB was loaded from; $root is its ESP.\n");
    s.push_str("regexp --set=1:ab_disk '^([^,]+),' \"$root\"\n\n");
    s.push_str(LOAD_FUNCTION);
    s.push('\n');
    s.push_str(DECIDE);
    load_args(&mut s, cfg);
    for (index, slot, part) in [(0, Slot::A, cfg.part_a), (1, Slot::B, cfg.part_b)] {
        let _ = write!(
            s,
            "\n# entry {index}\nmenuentry 'Slot {slot}' --id slot-{lower} {{\n  \
             linux (${{ab_disk}},gpt{part}){kernel} os.slot={slot} $ab_flag_{slot}",
            lower = slot.as_str().to_ascii_lowercase(),
            kernel = cfg.kernel,
        );
        if !cfg.cmdline.is_empty() {
            let _ = write!(s, " {}", cfg.cmdline);
        }
        // Last, so an extra argument overrides a built-in one (the kernel
        // takes the last occurrence).
        let _ = write!(s, " $ab_args_{slot}");
        let _ = write!(s, "\n  initrd (${{ab_disk}},gpt{part}){}\n}}\n", cfg.initrd);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_point_at_the_slot_partitions() {
        let cfg = GrubConfig {
            cmdline: "console=ttyS0 quiet".into(),
            part_a: 5,
            part_b: 6,
            ..Default::default()
        };
        let out = render(&cfg).unwrap();
        assert!(out.contains(
            "linux (${ab_disk},gpt5)/boot/vmlinuz os.slot=A $ab_flag_A console=ttyS0 quiet \
             $ab_args_A\n"
        ));
        assert!(out.contains("initrd (${ab_disk},gpt6)/boot/initramfs.img\n"));
        assert!(out.contains("set ab_default=A\n"));
    }

    #[test]
    fn values_that_would_add_grub_script_are_refused() {
        let evil = [
            (
                "cmdline",
                "quiet\n}\nmenuentry evil {\n linux /x init=/bin/sh",
            ),
            ("cmdline", "quiet; set ab_flag_A=x"),
            ("cmdline", "a=${ab_active}"),
            ("cmdline", "a=\"b\""),
            ("kernel", "/boot/vmlinuz; set ab_flag_A=x"),
            ("kernel", "/boot/vmlinuz\n}"),
            ("kernel", "boot/vmlinuz"),
            ("initrd", "/boot/initrd.img}"),
        ];
        for (field, value) in evil {
            let mut cfg = GrubConfig::default();
            match field {
                "cmdline" => cfg.cmdline = value.into(),
                "kernel" => cfg.kernel = value.into(),
                _ => cfg.initrd = value.into(),
            }
            assert!(render(&cfg).is_err(), "{field} {value:?}");
        }
        let cfg = GrubConfig {
            cmdline: "console=ttyS0,115200n8 quiet  panic=5 root_hint=a/b:c".into(),
            ..Default::default()
        };
        assert!(render(&cfg).is_ok());
    }

    #[test]
    fn decrement_table_covers_every_digit() {
        let out = render(&GrubConfig::default()).unwrap();
        for n in 1..=9 {
            assert!(out.contains(&format!("[ \"$ab_tries\" = {n} ]; then ab_tries={}", n - 1)));
        }
    }

    #[test]
    fn extra_args_are_read_only_when_their_file_exists() {
        let out = render(&GrubConfig::default()).unwrap();
        for slot in ["A", "B"] {
            let load = format!(
                "if [ -f '/ab/args-{slot}' ]; then\n  if load_env --file '/ab/args-{slot}' \
                 os_args; then ab_args_{slot}=\"$os_args\"; fi\nfi\nexport ab_args_{slot}\n"
            );
            assert!(out.contains(&load), "{out}");
            assert!(out.contains(&format!("os.slot={slot} $ab_flag_{slot} $ab_args_{slot}\n")));
        }
        assert!(
            !out.contains("save_env --file '/ab/args"),
            "GRUB never writes them"
        );
        assert_eq!(out.matches("save_env").count(), 2);
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }
}
