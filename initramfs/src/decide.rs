//! What this boot is and what to do about it, as pure functions (STYLE §9).
//!
//! [`classify`] compares what GRUB did (the kernel command line) with the A/B
//! state on the ESP, before anything is mounted: it names the slot to mount and
//! whether this boot is a trial to judge. [`decide`] then takes the result of the
//! sanity checks on the mounted slot and gives the [`Plan`]: which state change
//! to write, and whether to switch root or reboot.
//!
//! The one rule behind every case: `os-init` writes only when GRUB's choice and
//! the env agree on what happened. Anything it cannot explain (no usable env, a
//! slot chosen by hand at the menu, a kernel not booted by the A/B script) boots
//! the slot GRUB chose and writes nothing; GRUB's boot counting still bounds any
//! trial left armed.

use crate::checks::CheckFailure;
use crate::cmdline::BootParams;
use bootctl::record::{ConfirmPolicy, SlotRecord, SlotState};
use bootctl::{AbState, Slot};

/// What kind of boot GRUB made, given the env it booted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// The committed slot, nothing on trial.
    Normal { slot: Slot },
    /// A trial of `slot` armed in the env and booted with `os.trial=1`: judge it.
    Trial { slot: Slot, tries_left: u8 },
    /// The committed `slot` booted without `os.trial` while a trial of `failed`
    /// is armed: GRUB fell back because `failed`'s kernel could not be loaded.
    Fallback { slot: Slot, failed: Slot },
    /// Boot `slot` as GRUB chose and write nothing, because of `why`.
    Unmanaged { slot: Slot, why: Unmanaged },
}

impl Boot {
    /// The slot to mount as the new root.
    pub fn slot(&self) -> Slot {
        match *self {
            Boot::Normal { slot }
            | Boot::Trial { slot, .. }
            | Boot::Fallback { slot, .. }
            | Boot::Unmanaged { slot, .. } => slot,
        }
    }
}

/// Why a boot is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmanaged {
    /// Neither env copy is usable (or the ESP did not mount); GRUB booted its
    /// build-time default and so do we.
    NoState,
    /// No `os.slot=` while a trial is armed: this kernel was not started by the
    /// A/B script, so this boot says nothing about the trial.
    NoSlotParam { trial: Slot },
    /// `os.trial=1` on a slot the env does not have on trial.
    TrialFlagMismatch { trial: Option<Slot> },
    /// No `os.trial` on a slot that is not the committed one (picked by hand).
    NotCommitted { committed: Slot },
}

impl std::fmt::Display for Unmanaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmanaged::NoState => f.write_str("no usable A/B state on the ESP"),
            Unmanaged::NoSlotParam { trial } => write!(
                f,
                "no os.slot= on the kernel command line (not booted by the A/B GRUB script) \
                 while slot {trial} is on trial; the trial is left as it is"
            ),
            Unmanaged::TrialFlagMismatch { trial: None } => {
                f.write_str("os.trial=1 but the A/B state has no trial armed")
            }
            Unmanaged::TrialFlagMismatch { trial: Some(t) } => {
                write!(f, "os.trial=1 but the A/B state has slot {t} on trial")
            }
            Unmanaged::NotCommitted { committed } => write!(
                f,
                "booted without os.trial although slot {committed} is the committed slot \
                 (chosen by hand at the GRUB menu?)"
            ),
        }
    }
}

/// Neither the command line nor the env names a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSlot;

impl std::fmt::Display for NoSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "cannot tell which slot to boot: no os.slot= on the kernel command line and no \
             usable A/B state on the ESP",
        )
    }
}

/// Classifies the boot. `env` is the state GRUB loaded (copy 1, else copy 2),
/// or `None` when neither copy is usable or the ESP could not be read.
pub fn classify(params: &BootParams, env: Option<&AbState>) -> Result<Boot, NoSlot> {
    let Some(env) = env else {
        let slot = params.slot.ok_or(NoSlot)?;
        return Ok(Boot::Unmanaged {
            slot,
            why: Unmanaged::NoState,
        });
    };
    let Some(slot) = params.slot else {
        let slot = env.committed();
        return Ok(match env.trial {
            None => Boot::Normal { slot },
            Some(trial) => Boot::Unmanaged {
                slot,
                why: Unmanaged::NoSlotParam { trial },
            },
        });
    };
    if params.trial {
        return Ok(match env.trial {
            Some(t) if t == slot => Boot::Trial {
                slot,
                tries_left: env.tries,
            },
            trial => Boot::Unmanaged {
                slot,
                why: Unmanaged::TrialFlagMismatch { trial },
            },
        });
    }
    if slot != env.committed() {
        return Ok(Boot::Unmanaged {
            slot,
            why: Unmanaged::NotCommitted {
                committed: env.committed(),
            },
        });
    }
    Ok(match env.trial {
        None => Boot::Normal { slot },
        Some(failed) => Boot::Fallback { slot, failed },
    })
}

/// Where the confirm policy came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    Cmdline,
    Record,
    /// The default: `agent` when the slot ships os-agent, else `initramfs`.
    Default,
}

impl PolicySource {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySource::Cmdline => "os.confirm= on the kernel command line",
            PolicySource::Record => "the slot record's confirm=",
            PolicySource::Default => "default: agent if the slot ships os-agent, else initramfs",
        }
    }
}

/// Who confirms a passing trial: the command line wins, then the slot record,
/// then the agent if the slot ships one (its health gate is the better judge),
/// else `os-init` itself (nobody else would, and the trial would run out).
pub fn choose_policy(
    cmdline: Option<ConfirmPolicy>,
    record: Option<ConfirmPolicy>,
    agent_installed: bool,
) -> (ConfirmPolicy, PolicySource) {
    match (cmdline, record) {
        (Some(p), _) => (p, PolicySource::Cmdline),
        (None, Some(p)) => (p, PolicySource::Record),
        (None, None) if agent_installed => (ConfirmPolicy::Agent, PolicySource::Default),
        (None, None) => (ConfirmPolicy::Initramfs, PolicySource::Default),
    }
}

/// A change to the A/B state, and to the slot record after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `confirm(slot)` in the env, then record state `good`.
    Confirm(Slot),
    /// `mark_failed(slot)` in the env, then record state `failed`.
    MarkFailed(Slot),
}

/// What happens after the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Switch root into the booted slot.
    SwitchRoot,
    /// The trial failed: unmount, reboot at once; GRUB boots the committed slot.
    RebootToCommitted,
    /// The slot cannot boot and there is nothing else to try from here: report,
    /// pause so the console can be read, reboot.
    GiveUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub write: Option<Write>,
    pub next: Next,
}

/// The plan for `boot`, given the sanity checks of the mounted slot and the
/// confirm policy (only a trial consults either fully; other boots only stop
/// when the slot cannot boot at all).
pub fn decide(boot: &Boot, checks: &Result<(), CheckFailure>, policy: ConfirmPolicy) -> Plan {
    let bootable = match checks {
        Err(f) if f.prevents_boot() => Next::GiveUp,
        _ => Next::SwitchRoot,
    };
    match (*boot, checks, policy) {
        (Boot::Trial { slot, .. }, Err(_), _) => Plan {
            write: Some(Write::MarkFailed(slot)),
            next: Next::RebootToCommitted,
        },
        (Boot::Trial { slot, .. }, Ok(()), ConfirmPolicy::Initramfs) => Plan {
            write: Some(Write::Confirm(slot)),
            next: Next::SwitchRoot,
        },
        (Boot::Trial { .. }, Ok(()), ConfirmPolicy::Agent) => Plan {
            write: None,
            next: Next::SwitchRoot,
        },
        (Boot::Fallback { failed, .. }, _, _) => Plan {
            write: Some(Write::MarkFailed(failed)),
            next: bootable,
        },
        (Boot::Normal { .. } | Boot::Unmanaged { .. }, _, _) => Plan {
            write: None,
            next: bootable,
        },
    }
}

/// What is left when the slot GRUB booted cannot be used ([`Next::GiveUp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastResort {
    /// The other slot's record says it booted good: arm a trial of it with
    /// one try and reboot. GRUB counts that try, so if it fails too the
    /// committed (broken) slot comes back once, finds the other slot's
    /// record `failed`, and stops: the attempt is made once, never looped.
    TryOther { slot: Slot },
    /// Nothing else is known to boot: stop at a console message. Rebooting
    /// would only repeat the same failure for ever.
    Halt,
}

/// The last resort after a committed slot failed to mount or cannot run its
/// init. Only a normal boot of the committed slot with nothing on trial
/// qualifies (a trial has its own fallback; a boot this agent cannot explain
/// must not change the env), and only towards a slot recorded `good`.
pub fn last_resort(boot: &Boot, env: Option<&AbState>, other: Option<&SlotRecord>) -> LastResort {
    let (Boot::Normal { slot }, Some(env), Some(other)) = (*boot, env, other) else {
        return LastResort::Halt;
    };
    if env.active != slot || env.trial.is_some() {
        return LastResort::Halt;
    }
    if other.slot == slot.other() && other.state == SlotState::Good {
        LastResort::TryOther { slot: other.slot }
    } else {
        LastResort::Halt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::parse_cmdline;
    use ConfirmPolicy::{Agent, Initramfs};
    use Slot::{A, B};

    fn committed(active: Slot) -> AbState {
        AbState::new(active)
    }

    /// `active` committed, `trial` armed with `tries` left (after GRUB's decrement).
    fn armed(active: Slot, trial: Slot, tries: u8) -> AbState {
        AbState {
            active,
            trial: Some(trial),
            tries,
            fail: None,
        }
    }

    fn classify_line(cmdline: &str, env: Option<AbState>) -> Result<Boot, NoSlot> {
        classify(&parse_cmdline(cmdline), env.as_ref())
    }

    fn ok() -> Result<(), CheckFailure> {
        Ok(())
    }

    fn mount_failed() -> Result<(), CheckFailure> {
        Err(CheckFailure::Mount {
            what: "/dev/vda3 (slot B) at /sysroot".into(),
            error: "Invalid argument".into(),
        })
    }

    fn every_failure() -> Vec<CheckFailure> {
        vec![
            mount_failed().unwrap_err(),
            CheckFailure::Init {
                path: "/sbin/init".into(),
                problem: "does not exist in the slot".into(),
            },
            CheckFailure::OsRelease {
                problem: "no os-release".into(),
            },
            CheckFailure::Record {
                problem: "corrupt".into(),
            },
            CheckFailure::VersionMismatch {
                image: "1".into(),
                record: "2".into(),
            },
            CheckFailure::Verity {
                problem: "1 corrupt block".into(),
            },
        ]
    }

    const SWITCH: Plan = Plan {
        write: None,
        next: Next::SwitchRoot,
    };

    #[test]
    fn normal_boot_writes_nothing() {
        let boot = classify_line("os.slot=A", Some(committed(A))).unwrap();
        assert_eq!(boot, Boot::Normal { slot: A });
        assert_eq!(decide(&boot, &ok(), Initramfs), SWITCH);
        assert_eq!(decide(&boot, &ok(), Agent), SWITCH);
    }

    #[test]
    fn normal_boot_with_a_stale_record_still_boots() {
        // e.g. the record is `written` or names another version: warn, boot.
        let boot = Boot::Normal { slot: A };
        for f in every_failure().into_iter().filter(|f| !f.prevents_boot()) {
            assert_eq!(decide(&boot, &Err(f), Initramfs), SWITCH);
        }
    }

    #[test]
    fn normal_boot_that_cannot_mount_gives_up() {
        let boot = Boot::Normal { slot: B };
        let plan = decide(&boot, &mount_failed(), Initramfs);
        assert_eq!(
            plan,
            Plan {
                write: None,
                next: Next::GiveUp
            }
        );
    }

    #[test]
    fn trial_pass_initramfs_policy_confirms() {
        let boot = classify_line("os.slot=B os.trial=1", Some(armed(A, B, 2))).unwrap();
        assert_eq!(
            boot,
            Boot::Trial {
                slot: B,
                tries_left: 2
            }
        );
        assert_eq!(
            decide(&boot, &ok(), Initramfs),
            Plan {
                write: Some(Write::Confirm(B)),
                next: Next::SwitchRoot
            }
        );
    }

    #[test]
    fn trial_pass_agent_policy_leaves_the_trial_open() {
        let boot = classify_line("os.slot=B os.trial=1", Some(armed(A, B, 0))).unwrap();
        assert_eq!(
            boot,
            Boot::Trial {
                slot: B,
                tries_left: 0
            }
        );
        assert_eq!(decide(&boot, &ok(), Agent), SWITCH);
    }

    #[test]
    fn trial_fails_for_every_reason() {
        let boot = classify_line("os.slot=A os.trial=1", Some(armed(B, A, 1))).unwrap();
        for f in every_failure() {
            for policy in [Initramfs, Agent] {
                assert_eq!(
                    decide(&boot, &Err(f.clone()), policy),
                    Plan {
                        write: Some(Write::MarkFailed(A)),
                        next: Next::RebootToCommitted
                    },
                    "{f}"
                );
            }
        }
    }

    #[test]
    fn fallback_detected_marks_the_trial_failed_and_boots() {
        let boot = classify_line("os.slot=A", Some(armed(A, B, 2))).unwrap();
        assert_eq!(boot, Boot::Fallback { slot: A, failed: B });
        let plan = Plan {
            write: Some(Write::MarkFailed(B)),
            next: Next::SwitchRoot,
        };
        assert_eq!(decide(&boot, &ok(), Initramfs), plan);
        assert_eq!(decide(&boot, &ok(), Agent), plan);
        // A stale record on the committed slot does not stop it either.
        let stale = Err(every_failure().pop().unwrap());
        assert_eq!(decide(&boot, &stale, Agent), plan);
    }

    #[test]
    fn fallback_to_an_unbootable_committed_slot_still_records_the_failure() {
        let boot = Boot::Fallback { slot: A, failed: B };
        assert_eq!(
            decide(&boot, &mount_failed(), Initramfs),
            Plan {
                write: Some(Write::MarkFailed(B)),
                next: Next::GiveUp
            }
        );
    }

    #[test]
    fn missing_os_slot_boots_the_committed_slot() {
        let boot = classify_line("quiet", Some(committed(B))).unwrap();
        assert_eq!(boot, Boot::Normal { slot: B });
        assert_eq!(decide(&boot, &ok(), Initramfs), SWITCH);
        // With a trial armed the boot says nothing about the trial: no writes.
        let boot = classify_line("os.trial=1", Some(armed(B, A, 3))).unwrap();
        assert_eq!(
            boot,
            Boot::Unmanaged {
                slot: B,
                why: Unmanaged::NoSlotParam { trial: A }
            }
        );
        assert_eq!(decide(&boot, &ok(), Initramfs), SWITCH);
    }

    #[test]
    fn env_unusable_boots_what_grub_chose_without_writes() {
        for line in ["os.slot=B", "os.slot=B os.trial=1"] {
            let boot = classify_line(line, None).unwrap();
            assert_eq!(
                boot,
                Boot::Unmanaged {
                    slot: B,
                    why: Unmanaged::NoState
                }
            );
            assert_eq!(decide(&boot, &ok(), Initramfs), SWITCH);
            let stale = Err(every_failure().pop().unwrap());
            assert_eq!(decide(&boot, &stale, Initramfs), SWITCH);
            assert_eq!(decide(&boot, &mount_failed(), Initramfs).next, Next::GiveUp);
        }
        assert_eq!(classify_line("quiet", None), Err(NoSlot));
    }

    #[test]
    fn boots_grub_did_not_arm_write_nothing() {
        let cases = [
            // os.trial=1, nothing on trial.
            (
                "os.slot=B os.trial=1",
                committed(A),
                Unmanaged::TrialFlagMismatch { trial: None },
            ),
            // os.trial=1 on the slot that is not on trial.
            (
                "os.slot=B os.trial=1",
                armed(B, A, 1),
                Unmanaged::TrialFlagMismatch { trial: Some(A) },
            ),
            // The other slot picked at the menu, nothing on trial.
            (
                "os.slot=B",
                committed(A),
                Unmanaged::NotCommitted { committed: A },
            ),
            // The trial slot booted without the flag.
            (
                "os.slot=B",
                armed(A, B, 2),
                Unmanaged::NotCommitted { committed: A },
            ),
        ];
        for (line, env, why) in cases {
            let boot = classify_line(line, Some(env)).unwrap();
            assert_eq!(boot, Boot::Unmanaged { slot: B, why }, "{line} {env:?}");
            assert_eq!(decide(&boot, &ok(), Initramfs), SWITCH);
            assert_eq!(decide(&boot, &mount_failed(), Agent).write, None);
        }
    }

    #[test]
    fn boot_slot_is_the_one_to_mount() {
        assert_eq!(Boot::Fallback { slot: A, failed: B }.slot(), A);
        assert_eq!(
            Boot::Trial {
                slot: B,
                tries_left: 1
            }
            .slot(),
            B
        );
    }

    #[test]
    fn policy_precedence() {
        use PolicySource::*;
        for agent in [false, true] {
            assert_eq!(
                choose_policy(Some(Initramfs), Some(Agent), agent),
                (Initramfs, Cmdline)
            );
            assert_eq!(
                choose_policy(Some(Agent), Some(Initramfs), agent),
                (Agent, Cmdline)
            );
            assert_eq!(choose_policy(None, Some(Agent), agent), (Agent, Record));
            assert_eq!(
                choose_policy(None, Some(Initramfs), agent),
                (Initramfs, Record)
            );
        }
        assert_eq!(choose_policy(None, None, true), (Agent, Default));
        assert_eq!(choose_policy(None, None, false), (Initramfs, Default));
    }

    fn rec(slot: Slot, state: SlotState) -> SlotRecord {
        SlotRecord {
            state,
            version: "1".into(),
            ..SlotRecord::empty(slot)
        }
    }

    #[test]
    fn a_broken_committed_slot_tries_a_good_other_slot_once_else_halts() {
        use LastResort::{Halt, TryOther};
        let env = AbState::new(Slot::A);
        let normal = Boot::Normal { slot: Slot::A };
        let good_b = rec(Slot::B, SlotState::Good);
        assert_eq!(
            last_resort(&normal, Some(&env), Some(&good_b)),
            TryOther { slot: Slot::B }
        );
        for state in [SlotState::Empty, SlotState::Written, SlotState::Failed] {
            let b = rec(Slot::B, state);
            assert_eq!(
                last_resort(&normal, Some(&env), Some(&b)),
                Halt,
                "{state:?}"
            );
        }
        // No records (PERSIST did not mount or the record is corrupt), no env.
        assert_eq!(last_resort(&normal, Some(&env), None), Halt);
        assert_eq!(last_resort(&normal, None, Some(&good_b)), Halt);
        // A trial armed (the once is being spent), or not a normal boot.
        let mut armed = env;
        armed.arm_trial(Slot::B, 1).unwrap();
        assert_eq!(last_resort(&normal, Some(&armed), Some(&good_b)), Halt);
        let fallback = Boot::Fallback {
            slot: Slot::A,
            failed: Slot::B,
        };
        assert_eq!(last_resort(&fallback, Some(&armed), Some(&good_b)), Halt);
        let picked = Boot::Unmanaged {
            slot: Slot::A,
            why: Unmanaged::NoState,
        };
        assert_eq!(last_resort(&picked, Some(&env), Some(&good_b)), Halt);
        // A record that names the wrong slot is not trusted.
        assert_eq!(
            last_resort(&normal, Some(&env), Some(&rec(Slot::A, SlotState::Good))),
            Halt
        );
    }
}
