//! What the generated grub.cfg does at boot, as a pure function over the two env
//! copies. Cluster simulations call this instead of rebooting a machine, so it
//! must agree with the real script (`grubcfg.rs`); the QEMU tests check both
//! against each other on every boot they make.
//!
//! The script, and so this model:
//! 1. loads copy 1 and copy 2, each valid only if all four variables are set to
//!    values in their domain and the trial slot is not the committed one;
//! 2. uses copy 1 if valid, else copy 2, else boots the build-time default slot
//!    and writes nothing;
//! 3. with a trial armed and tries left: decrements the tries, saves, and boots the
//!    trial slot (with `os.trial=1`), falling back to the committed slot's entry if
//!    the trial's kernel cannot be loaded;
//! 4. with a trial armed and no tries left: records `ab_fail`, clears the trial,
//!    saves, and boots the committed slot;
//! 5. saves only into copies that loaded valid (GRUB's `save_env` cannot repair a
//!    broken block; the next Linux-side write does), copy 1 first.
//!
//! What the model does not cover: a kernel that GRUB cannot load. GRUB then runs
//! the fallback entry (the committed slot), which the model cannot know.

use crate::envblk::EnvError;
use crate::state::{AbState, Slot};

/// Largest block the model can stage a save in. Blocks written by this project
/// are 1024 bytes.
pub const MAX_BLOCK: usize = 4096;

/// Where GRUB took the state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Copy1,
    Copy2,
    /// Both copies were unusable: the build-time default slot, nothing written.
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Copy1 => "1",
            Source::Copy2 => "2",
            Source::Default => "default",
        }
    }
}

/// One boot as GRUB performs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrubBoot {
    /// Slot whose kernel is booted (`os.slot=` on the command line).
    pub slot: Slot,
    /// Whether this is a trial boot (`os.trial=1` on the command line).
    pub trial: bool,
    /// Entry GRUB falls back to if the chosen kernel fails to load.
    pub fallback: Option<Slot>,
    pub source: Source,
    /// The state after the boot's writes (the loaded state when nothing was written).
    pub state: Option<AbState>,
    /// Which copies GRUB rewrote: `[copy1, copy2]`.
    pub wrote: [bool; 2],
}

/// Performs GRUB's boot decision on `copy1` and `copy2`, rewriting them in place
/// exactly as the script's `save_env` calls would.
pub fn grub_boot(copy1: &mut [u8], copy2: &mut [u8], default: Slot) -> GrubBoot {
    let loaded = [
        AbState::decode_grub(copy1).ok(),
        AbState::decode_grub(copy2).ok(),
    ];
    let (state, source) = match loaded {
        [Some(s), _] => (s, Source::Copy1),
        [None, Some(s)] => (s, Source::Copy2),
        [None, None] => {
            return GrubBoot {
                slot: default,
                trial: false,
                fallback: None,
                source: Source::Default,
                state: None,
                wrote: [false, false],
            }
        }
    };

    let Some(trial) = state.trial else {
        return GrubBoot {
            slot: state.active,
            trial: false,
            fallback: None,
            source,
            state: Some(state),
            wrote: [false, false],
        };
    };

    let mut next = state;
    let boot = if state.tries > 0 {
        next.tries -= 1;
        GrubBoot {
            slot: trial,
            trial: true,
            fallback: Some(state.active),
            source,
            state: Some(next),
            wrote: [false, false],
        }
    } else {
        next.fail = Some(trial);
        next.trial = None;
        GrubBoot {
            slot: state.active,
            trial: false,
            fallback: None,
            source,
            state: Some(next),
            wrote: [false, false],
        }
    };
    let wrote = [
        loaded[0].is_some() && save_env(copy1, &next).is_ok(),
        loaded[1].is_some() && save_env(copy2, &next).is_ok(),
    ];
    GrubBoot { wrote, ..boot }
}

/// GRUB's `save_env`: every variable is set in a private copy of the block, and
/// the block is written back only if all of them succeeded.
fn save_env(block: &mut [u8], state: &AbState) -> Result<(), EnvError> {
    if block.len() > MAX_BLOCK {
        return Err(EnvError::TooSmall);
    }
    let mut staged = [0u8; MAX_BLOCK];
    let staged = &mut staged[..block.len()];
    staged.copy_from_slice(block);
    state.encode_into(staged)?;
    block.copy_from_slice(staged);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envblk;

    fn armed(tries: u8) -> AbState {
        let mut s = AbState::new(Slot::A);
        s.arm_trial(Slot::B, tries).unwrap();
        s
    }

    #[test]
    fn no_trial_boots_active_without_writing() {
        let mut c1 = AbState::new(Slot::B).to_block();
        let mut c2 = c1;
        let b = grub_boot(&mut c1, &mut c2, Slot::A);
        assert_eq!(
            (b.slot, b.trial, b.source, b.wrote),
            (Slot::B, false, Source::Copy1, [false, false])
        );
    }

    #[test]
    fn trial_counts_down_then_falls_back() {
        let mut c1 = armed(3).to_block();
        let mut c2 = c1;
        for left in [2, 1, 0] {
            let b = grub_boot(&mut c1, &mut c2, Slot::A);
            assert_eq!(
                (b.slot, b.trial, b.fallback),
                (Slot::B, true, Some(Slot::A))
            );
            assert_eq!(b.wrote, [true, true]);
            assert_eq!(AbState::decode_strict(&c1).unwrap().tries, left);
            assert_eq!(c1, c2);
        }
        let b = grub_boot(&mut c1, &mut c2, Slot::A);
        assert_eq!((b.slot, b.trial), (Slot::A, false));
        let after = AbState::decode_strict(&c1).unwrap();
        assert_eq!(
            after,
            AbState {
                active: Slot::A,
                trial: None,
                tries: 0,
                fail: Some(Slot::B)
            }
        );
        let b = grub_boot(&mut c1, &mut c2, Slot::A);
        assert_eq!((b.slot, b.wrote), (Slot::A, [false, false]));
    }

    #[test]
    fn broken_copy1_uses_copy2_and_leaves_copy1_alone() {
        let mut c1 = [0u8; 1024];
        let mut c2 = armed(3).to_block();
        let b = grub_boot(&mut c1, &mut c2, Slot::A);
        assert_eq!(
            (b.slot, b.source, b.wrote),
            (Slot::B, Source::Copy2, [false, true])
        );
        assert_eq!(c1, [0u8; 1024]);
    }

    #[test]
    fn both_broken_boots_default_and_writes_nothing() {
        let mut c1 = [0u8; 1024];
        let mut c2 = envblk::create();
        let before = c2;
        let b = grub_boot(&mut c1, &mut c2, Slot::B);
        assert_eq!(
            (b.slot, b.source, b.wrote),
            (Slot::B, Source::Default, [false, false])
        );
        assert_eq!(c2, before);
    }

    #[test]
    fn copy1_preferred_over_stale_copy2_and_both_resynced() {
        let mut c1 = armed(2).to_block();
        let mut c2 = AbState::new(Slot::A).to_block();
        let b = grub_boot(&mut c1, &mut c2, Slot::A);
        assert_eq!((b.slot, b.source), (Slot::B, Source::Copy1));
        assert_eq!(c1, c2);
    }

    #[test]
    fn unsavable_copy_is_left_untouched() {
        // Valid for load_env, but the last byte ends no line: GRUB's set refuses.
        let mut c1 = armed(2).to_block();
        let n = c1.len();
        c1[n - 1] = b'x';
        let before = c1;
        let mut c2 = armed(2).to_block();
        let b = grub_boot(&mut c1, &mut c2, Slot::A);
        assert_eq!((b.source, b.wrote), (Source::Copy1, [false, true]));
        assert_eq!(c1, before);
    }
}
